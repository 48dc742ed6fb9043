"""
### serviceloop_ingest

Pulls service records from the source systems declared in `sources.yml` into the warehouse's
`raw` schema: a task group per source, a task per source and entity (`<source>__<entity>`).
ServiceNow CSV exports (`kind: servicenow_csv`) have no task: `serviceloop import
servicenow-csv PATH` loads them.
A source with a schedule other than the default one is ingested by a DAG of its own,
`serviceloop_ingest__<source>`.

Each task extracts the records whose watermark falls in its window (from where the last
batch ended, minus an overlap for late updates, to the end of the data interval), stages
them as text in the warehouse (`landing`), validates them there with the entity's Great
Expectations suite (`expectations/`), and moves the valid rows into
`raw.<source>__<entity>` and the rejected ones into `quarantine.<source>__<entity>` with the
rules they broke, all in one transaction; orphans wait there, held, for their ticket. The
task log links the batch's Data Docs. Rerunning an interval replaces its batch.

Emits one Asset per raw table; `serviceloop_transform` runs when they have been updated.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, TaskGroup, dag, task

from serviceloop.assets import raw_asset
from serviceloop.failure_alerts import DataEngineersNotifier
from serviceloop.sources import DEFAULT_SCHEDULE, SCHEDULED, raw_table


def ingest_dag(dag_id: str, schedule: str, sources: list) -> None:
    """One DAG: a task group per source, a task per entity (``<source>__<entity>``)."""

    @dag(
        dag_id=dag_id,
        schedule=CronDataIntervalTimetable(schedule, timezone="UTC"),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["serviceloop", "ingest"],
        default_args={
            "owner": "serviceloop",
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=1),
            # The task, the error and the log link go to the data engineers once the last try fails.
            "on_failure_callback": DataEngineersNotifier(),
        },
        doc_md=__doc__ if dag_id == "serviceloop_ingest" else f"### {dag_id}\n\n{__doc__}",
    )
    def ingest():
        for source in sources:
            # Task ids stay `<source>__<entity>`: the group only draws the source in the UI.
            with TaskGroup(group_id=source.name, prefix_group_id=False, tooltip=f"{source.kind} source"):
                for entity in source.entities:

                    @task(task_id=raw_table(source.name, entity.name), outlets=[raw_asset(source.name, entity.name)])
                    def load(source_name: str, entity_name: str, data_interval_start=None, data_interval_end=None):
                        from serviceloop.tasks import ingest_entity

                        return ingest_entity(source_name, entity_name, data_interval_start, data_interval_end)

                    load(source.name, entity.name)

    ingest()


# Sources on the default schedule share serviceloop_ingest; any other gets a DAG of its own.
ingest_dag("serviceloop_ingest", DEFAULT_SCHEDULE, [s for s in SCHEDULED.values() if s.schedule == DEFAULT_SCHEDULE])
for _source in SCHEDULED.values():
    if _source.schedule != DEFAULT_SCHEDULE:
        ingest_dag(f"serviceloop_ingest__{_source.name}", _source.schedule, [_source])
