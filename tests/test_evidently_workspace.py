"""A drift run adds each segment's snapshots to the Evidently workspace, and its UI lists them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from serviceloop import drift, schema

FIRST = dt.date(2026, 8, 3)
DAYS = 40
TEAMS = ("accounts", "billing")


def _tickets(conn) -> dt.date:
    """Two teams' tickets, billing's resolution times four times as long in the last 3 days."""
    rng = np.random.default_rng(4)
    with conn.cursor() as cur:
        cur.execute("create schema if not exists marts")
        cur.execute(
            """create table marts.fct_tickets (ticket_id text, team_id text, created_at timestamptz,
               resolved_at timestamptz, resolved_date date, resolution_hours numeric,
               resolution_due_at timestamptz, resolution_breached boolean, csat integer, last_survey_date date)"""
        )
        rows = []
        for team in TEAMS:
            for d in range(DAYS):
                day = FIRST + dt.timedelta(days=d)
                slow = 4.0 if team == "billing" and d >= DAYS - 3 else 1.0
                for k in range(40):
                    created = dt.datetime.combine(day, dt.time(8), dt.UTC) + dt.timedelta(minutes=12 * k)
                    hours = float(2.0 * slow * np.exp(rng.normal(0, 0.4)))
                    resolved = created + dt.timedelta(hours=hours)
                    due = created + dt.timedelta(hours=24)
                    rows.append((f"{team}-{d}-{k}", team, created, resolved, resolved.date(), hours, due,
                                 resolved > due, int(rng.integers(3, 6)), resolved.date()))  # fmt: skip
        cur.executemany("insert into marts.fct_tickets values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        last = FIRST + dt.timedelta(days=DAYS - 1)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC)
        cur.execute(
            "insert into ops.batches (batch_id, source, entity, interval_start, interval_end, window_end, "
            "rows_read, rows_loaded, rows_quarantined) values ('b1', 'helpdesk', 'tickets', %s, %s, %s, 0, 0, 0)",
            (end - dt.timedelta(days=1), end, end),
        )
    conn.commit()
    return last


@pytest.fixture
def conn(fresh_db):
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        schema.ensure(conn)
        yield conn


def _runs(workspace: Path) -> dict[str, int]:
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(workspace))
    return {p.name: len(ws.list_runs(p.id)) for p in ws.list_projects()}


def test_a_run_adds_a_snapshot_per_segment_and_day_and_a_rerun_replaces_them(conn, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVICELOOP_EVIDENTLY_DAYS", "2")
    last = _tickets(conn)
    workspace = tmp_path / "evidently"
    config = drift.DriftConfig(metrics=("resolution_time", "sla_breach", "csat"))
    result = drift.run(conn, tmp_path / "reports", config=config, workspace=workspace)
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("select min(as_of) from monitoring.drift_findings where is_finding and segment = 'billing'")
        (first_finding,) = cur.fetchone()
    assert first_finding is not None and first_finding >= last - dt.timedelta(days=2)
    # The last 2 days of each team, and the day billing's finding episode started.
    expected = {"team accounts": 2, "team billing": 2 if first_finding >= last - dt.timedelta(days=1) else 3}
    assert _runs(workspace) == expected
    assert result.snapshots == sum(expected.values())

    # A snapshot is stamped with its as-of day and names the day's findings.
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(workspace))
    (billing,) = ws.search_project("team billing")
    snapshots = [ws.get_run(billing.id, sid) for sid in ws.list_runs(billing.id)]
    latest = max(snapshots, key=lambda s: s.timestamp)
    assert latest.timestamp.date() == last
    assert "finding:resolution_time" in latest.tags

    # Evaluating the last day again replaces its snapshots instead of adding more.
    with conn.cursor() as cur:
        cur.execute("delete from monitoring.drift_runs where as_of = %s", (last,))
    conn.commit()
    drift.run(conn, tmp_path / "reports", config=config, workspace=workspace)
    assert _runs(workspace) == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_the_evidently_ui_lists_the_segments_and_their_snapshots(conn, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVICELOOP_EVIDENTLY_DAYS", "1")
    _tickets(conn)
    workspace = tmp_path / "evidently"
    drift.run(conn, tmp_path / "reports", config=drift.DriftConfig(metrics=("resolution_time",)), workspace=workspace)
    evidently = shutil.which("evidently", path=str(Path(sys.executable).parent))
    assert evidently, "the evidently command comes with the project's dependencies"
    port = _free_port()
    server = subprocess.Popen(
        [evidently, "ui", "--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "DO_NOT_TRACK": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 120
        while True:
            try:
                projects = _get(f"{base}/projects/")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        by_name = {p["name"]: p["id"] for p in projects}
        assert set(by_name) == {f"team {t}" for t in TEAMS}
        for project_id in by_name.values():
            assert len(_get(f"{base}/projects/{project_id}/snapshots")) >= 1
    finally:
        server.terminate()
        server.wait(timeout=30)
