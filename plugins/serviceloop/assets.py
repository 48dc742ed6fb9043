"""The Airflow Assets the DAGs hand over to each other, named in one place.

The ingest emits one per raw table; the transform waits for all of them and emits the KPI
asset; the drift monitor waits for that.
"""

from __future__ import annotations

from airflow.sdk import Asset

from serviceloop.sources import SCHEDULED, raw_table


def raw_asset(source: str, entity: str) -> Asset:
    return Asset(f"serviceloop.raw.{raw_table(source, entity)}")


# The raw tables the ingest DAGs load on their schedule (an import's tables are loaded on demand).
RAW_ASSETS = [raw_asset(s.name, e.name) for s in SCHEDULED.values() for e in s.entities]
KPI_DAILY = Asset("serviceloop.marts.kpi_daily")
