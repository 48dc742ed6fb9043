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
