"""
### serviceloop_transform

Builds the KPI models with dbt when the ingest has updated the raw tables, and publishes the
`serviceloop.marts.kpi_daily` Asset that `serviceloop_drift` waits for.

dbt runs through Astronomer Cosmos in watcher mode: the task `dbt.dbt_producer_watcher` runs
one `dbt build` of the whole project (each model is tested before anything downstream builds
on it); every model, seed and model's tests then has a task that reports what the build did
to it, with dbt's log lines and the compiled SQL. A failed model fails its task; retrying that
task builds the model alone. Logs of the build as a whole are in the producer task.

The dbt profile comes from the Airflow connection `serviceloop_warehouse`. The DAG is laid
out from the dbt manifest that `serviceloop prepare` writes (`dbt parse`), so parsing this
file runs no dbt command.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

from serviceloop.assets import KPI_DAILY, RAW_ASSETS
from serviceloop.failure_alerts import DataEngineersNotifier
from serviceloop.transform import dbt_task_group


@dag(
    schedule=RAW_ASSETS,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["serviceloop", "dbt"],
    default_args={
        "owner": "serviceloop",
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=1),
        # The task, the error and the log link go to the data engineers once the last try fails.
        "on_failure_callback": DataEngineersNotifier(),
    },
    doc_md=__doc__,
)
def serviceloop_transform():
    @task(outlets=[KPI_DAILY])
    def publish_kpis() -> str:
        return "marts.kpi_daily"

    dbt_task_group() >> publish_kpis()


serviceloop_transform()
