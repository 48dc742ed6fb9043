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


# SQLAlchemy drivers for the Airflow connection types a SQL source may use.
SQL_DRIVERS = {
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}


def source_connection(source) -> str | None:
    """The URL a source's reader connects to, from its Airflow connection or environment variable.

    A SQL source gets an SQLAlchemy URL, a REST API source its base URL with the credentials
    in the user-info part (the reader moves them into a header); a file drop needs none.
    """
    import os

    from serviceloop.sources import SourcesConfigError

    ref = source.connection
    if ref is None:
        return None
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise SourcesConfigError(f"source {source.name}: environment variable {ref.env} is not set")
        return value
    from airflow.sdk import Connection

    conn = Connection.get(ref.conn_id)
    if source.kind == "sql":
        return _sqlalchemy_url(source.name, conn)
    return _api_url(conn)


def _sqlalchemy_url(source_name: str, conn) -> str:
    from sqlalchemy.engine import URL

    from serviceloop.sources import SourcesConfigError

    extra = conn.extra_dejson or {}
    driver = extra.get("sqlalchemy_driver") or SQL_DRIVERS.get(conn.conn_type or "")
    if driver is None:
        raise SourcesConfigError(
            f"source {source_name}: connection {conn.conn_id} is of type {conn.conn_type!r}; set its extra"
            ' "sqlalchemy_driver" (e.g. "mssql+pymssql") or use one of ' + ", ".join(SQL_DRIVERS)
        )
    host, query = conn.host, {}
    if host and host.startswith("/"):
        # A unix socket directory (the embedded PostgreSQL): libpq takes it as a parameter.
        host, query = None, {"host": conn.host, "port": str(conn.port or 5432)}
    url = URL.create(
        driver, username=conn.login or None, password=conn.password or None, host=host,
        port=None if query else conn.port, database=conn.schema or None, query=query,
    )  # fmt: skip
    return url.render_as_string(hide_password=False)


def _api_url(conn) -> str:
    """``scheme://login:password@host:port/path`` of an HTTP connection (host may carry the scheme)."""
    from urllib.parse import quote, urlsplit

    host = conn.host or ""
    scheme = conn.schema or "https"
    if "://" in host:
        parts = urlsplit(host)
        scheme, host, path = parts.scheme, parts.netloc, parts.path
    else:
        host, _, path = host.partition("/")
        path = "/" + path if path else ""
    userinfo = ""
    if conn.login or conn.password:
        userinfo = f"{quote(conn.login or '', safe='')}:{quote(conn.password or '', safe='')}@"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{userinfo}{host}{port}{path}"


def ingest_entity(source: str, entity: str, interval_start: dt.datetime, interval_end: dt.datetime) -> dict:
    from serviceloop import warehouse
    from serviceloop.ingest import ingest_batch
    from serviceloop.sources import SOURCES

    source_dsn = source_connection(SOURCES[source])
    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        result = ingest_batch(
            conn, source, entity, interval_start, interval_end, source_dsn=source_dsn, drop_root=paths().drops
        )
    return result.as_dict()


def detect_drift() -> dict:
    from serviceloop import drift, warehouse

    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        return drift.run(conn, reports_dir=paths().reports, workspace=paths().evidently_workspace).as_dict()


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


def send_weekly_reports(logical_date: dt.datetime, send: bool = True) -> dict:
    """The weekly reports of the last whole week before ``logical_date``, each sent once."""
    from serviceloop import report, warehouse

    with warehouse.connect(dsn=connection_dsn(WAREHOUSE_CONN_ID)) as conn:
        return report.weekly_reports(
            conn, report.report_week(logical_date.date()), reports_root=paths().reports, outbox=paths().outbox,
            send=send, connections=connection_fields,
        ).as_dict()  # fmt: skip
