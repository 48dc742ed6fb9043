"""
### serviceloop_transform

Builds the KPI models with dbt (run by Astronomer Cosmos: one task per dbt node, each a
`dbt build` of that node, so its tests run right after it) when the ingest has updated the
raw tables. Publishes the `serviceloop.marts.kpi_daily` Asset that `serviceloop_drift`
waits for.

The dbt profile comes from the Airflow connection `serviceloop_warehouse`. The DAG is laid
out from the dbt manifest that `serviceloop prepare` writes (`dbt parse`), so parsing this
file runs no dbt command.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from serviceloop.assets import KPI_DAILY, RAW_ASSETS
from serviceloop.failure_alerts import DataEngineersNotifier
from serviceloop.settings import WAREHOUSE_CONN_ID, paths


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
    project = paths()
    dbt = DbtTaskGroup(
        group_id="dbt",
        project_config=ProjectConfig(
            dbt_project_path=project.dbt_project,
            manifest_path=project.dbt_manifest,
            install_dbt_deps=False,
        ),
        profile_config=ProfileConfig(
            profile_name="serviceloop",
            target_name="warehouse",
            profile_mapping=PostgresUserPasswordProfileMapping(
                conn_id=WAREHOUSE_CONN_ID, profile_args={"schema": "public"}
            ),
        ),
        execution_config=ExecutionConfig(execution_mode=ExecutionMode.LOCAL, invocation_mode=InvocationMode.DBT_RUNNER),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            test_behavior=TestBehavior.BUILD,
            # A relationships test has two parents; it runs in its own task once both exist.
            should_detach_multiple_parents_tests=True,
            # Asset URIs built from a unix-socket host are not valid; the DAG publishes its own.
            emit_datasets=False,
        ),
    )

    @task(outlets=[KPI_DAILY])
    def publish_kpis() -> str:
        return "marts.kpi_daily"

    dbt >> publish_kpis()


serviceloop_transform()
