"""
### serviceloop_ingest

Pulls service records from the source systems into the warehouse's `raw` schema, one task
per source and entity (`<source>__<entity>`).

Each task extracts the records whose watermark falls in its window (from where the last
batch ended, minus an overlap for late updates, to the end of the data interval), validates
them with the entity's Great Expectations suite (`expectations/`), `COPY`s the valid rows
into `raw.<source>__<entity>` and the rejected ones into `quarantine.<source>__<entity>` with
the rules they broke, all in one transaction. Rerunning an interval replaces its batch.

Emits one Asset per raw table; `serviceloop_transform` runs when they have been updated.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, dag, task

from serviceloop.assets import raw_asset
from serviceloop.failure_alerts import DataEngineersNotifier
from serviceloop.sources import SOURCES, raw_table


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
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
    doc_md=__doc__,
)
def serviceloop_ingest():
    for source in SOURCES.values():
        for entity in source.entities:
            table = raw_table(source.name, entity.name)

            @task(task_id=table, outlets=[raw_asset(source.name, entity.name)])
            def load(source_name: str, entity_name: str, data_interval_start=None, data_interval_end=None) -> dict:
                from serviceloop.tasks import ingest_entity

                return ingest_entity(source_name, entity_name, data_interval_start, data_interval_end)

            load(source.name, entity.name)


serviceloop_ingest()
