"""Test fixtures: a real embedded PostgreSQL in a throwaway state folder.

The state folder is set before anything imports Airflow or ServiceLoop's settings, so no
test touches the developer's own `.serviceloop/`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="serviceloop-test-"))
os.environ["SERVICELOOP_HOME"] = str(_STATE)
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
os.environ["AIRFLOW_HOME"] = str(_STATE / "airflow")
os.environ.pop("SERVICELOOP_WAREHOUSE_URL", None)


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def warehouse_url(state_dir):
    """The embedded warehouse of the test session, with ServiceLoop's schemas."""
    from serviceloop import schema, warehouse

    warehouse.start()
    with warehouse.connect() as conn:
        schema.ensure(conn)
    yield warehouse.url()
    warehouse.stop()


@pytest.fixture
def fresh_db(warehouse_url):
    """A database of its own for one test, dropped afterwards."""
    import uuid

    import psycopg2
    from sqlalchemy.engine import make_url

    from serviceloop import warehouse

    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = make_url(warehouse_url).set(database="postgres").render_as_string(hide_password=False)
    with contextlib.closing(psycopg2.connect(admin)) as conn:
        conn.autocommit = True
        conn.cursor().execute(f'create database "{name}"')
    url = make_url(warehouse_url).set(database=name).render_as_string(hide_password=False)
    yield url
    # A connection of its own: the test may have restarted the server.
    with contextlib.closing(psycopg2.connect(admin)) as conn:
        conn.autocommit = True
        conn.cursor().execute(f'drop database "{name}" with (force)')
    assert warehouse  # the module stays imported for the session's teardown


MARIADB = "mysql+pymysql://root@127.0.0.1:3306"


@pytest.fixture
def mariadb_url():
    """A throwaway utf8mb4 database on the MariaDB server of this machine (skipped if there is none)."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(MARIADB, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        conn = admin.connect()
    except sa.exc.OperationalError as exc:
        pytest.skip(f"MariaDB on 127.0.0.1:3306 (user root, no password) is not reachable: {exc.orig}")
    name = f"sl_test_{uuid.uuid4().hex[:10]}"
    conn.execute(sa.text(f"create database {name} character set utf8mb4"))
    try:
        yield f"{MARIADB}/{name}?charset=utf8mb4"
    finally:
        conn.execute(sa.text("set session lock_wait_timeout = 30"))
        conn.execute(sa.text(f"drop database {name}"))
        conn.close()
