"""The embedded warehouse: starts, tolerates a second start, recovers from a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psycopg2
import pytest

from serviceloop import warehouse
from serviceloop.settings import AIRFLOW_DB, HELPDESK_DB, WAREHOUSE_DB


def _select_one(url: str) -> int:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("select 1")
        return cur.fetchone()[0]


def test_start_twice_is_harmless_and_creates_the_three_databases(warehouse_url):
    first = warehouse.start()
    second = warehouse.start()
    assert first.running and second.running
    assert first.pid == second.pid
    for db in (WAREHOUSE_DB, AIRFLOW_DB, HELPDESK_DB):
        assert _select_one(warehouse.url(db)) == 1


def test_status_and_url_do_not_leak_the_password(warehouse_url):
    info = warehouse.status()
    assert info.embedded and info.running
    assert warehouse.embedded_password() not in warehouse.display_url()
    assert str(info.pgdata).startswith(os.environ["SERVICELOOP_HOME"])


def test_a_crashed_server_is_restarted_over_its_stale_pid_file(warehouse_url):
    pid = warehouse.status().pid
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    assert (warehouse.status().pgdata / "postmaster.pid").exists(), "a crash leaves its pid file behind"
    assert not warehouse.status().running
    info = warehouse.start()
    assert info.running and info.pid != pid
    assert _select_one(warehouse.url()) == 1


def test_external_server_by_one_environment_variable(monkeypatch, warehouse_url):
    """SERVICELOOP_WAREHOUSE_URL points everything at another PostgreSQL (this machine's, if it runs one)."""
    external = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        _select_one(external)
    except psycopg2.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 to act as the external warehouse")
    monkeypatch.setenv(warehouse.EXTERNAL_URL_ENV, external)
    info = warehouse.start()
    assert not info.embedded and info.running
    assert warehouse.url() == external
    assert warehouse.url(HELPDESK_DB).endswith(f"/{HELPDESK_DB}")
    assert _select_one(warehouse.url(AIRFLOW_DB)) == 1


def test_unreachable_external_server_is_reported_not_running(monkeypatch):
    monkeypatch.setenv(warehouse.EXTERNAL_URL_ENV, "postgresql://nobody@127.0.0.1:1/none")
    assert warehouse.status().running is False
