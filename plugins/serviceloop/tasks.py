"""The steps the DAGs call, one function each, taking plain arguments.

Each resolves its connections through Airflow at task time (so a deployment's secrets
backend applies) and hands plain DSNs to the modules that do the work, which know nothing
of Airflow and are tested without it. Return values are small dicts of counts and ids: the
data itself stays in the warehouse.
"""

from __future__ import annotations

import datetime as dt

from serviceloop.settings import WAREHOUSE_CONN_ID, paths


def connection_dsn(conn_id: str) -> str:
    """A libpq DSN for an Airflow connection (host may be a unix socket directory)."""
    from airflow.sdk import Connection
    from psycopg2.extensions import make_dsn

    conn = Connection.get(conn_id)
    return make_dsn(
        host=conn.host, port=conn.port or 5432, user=conn.login, password=conn.password or None, dbname=conn.schema
    )


def ingest_entity(source: str, entity: str, interval_start: dt.datetime, interval_end: dt.datetime) -> dict:
    from serviceloop import warehouse
    from serviceloop.ingest import ingest_batch
    from serviceloop.sources import SOURCES, SqlSource

    src = SOURCES[source]
    source_dsn = connection_dsn(src.conn_id) if isinstance(src, SqlSource) else None
    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        result = ingest_batch(
            conn, source, entity, interval_start, interval_end, source_dsn=source_dsn, drop_root=paths().drops
        )
    return result.as_dict()


def detect_drift() -> dict:
    from serviceloop import drift, warehouse

    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        return drift.run(conn, reports_dir=paths().reports).as_dict()


def open_reviews(drift_result: dict) -> dict:
    from serviceloop import reviews, warehouse

    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        return reviews.open_from_findings(conn, drift_result["finding_ids"]).as_dict()


def connection_fields(conn_id: str) -> dict | None:
    """An Airflow connection's fields as a plain dict, or None when it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return {
        "conn_type": conn.conn_type,
        "host": conn.host,
        "port": conn.port,
        "login": conn.login,
        "password": conn.password,
        "schema": conn.schema,
        "extra": conn.extra_dejson,
    }


def measure_effects(review_result: dict) -> dict:
    from serviceloop import verification, warehouse

    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        return {**review_result, **verification.measure(conn).as_dict()}


def send_alerts(review_result: dict) -> dict:
    from serviceloop import alerts, warehouse

    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        return alerts.send_review_alerts(
            conn, review_result.get("opened"), outbox=paths().outbox, connections=connection_fields
        ).as_dict()
