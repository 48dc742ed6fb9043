"""The benchmark harness at 10k tickets, so it cannot rot: every row, with sane numbers.

It checks that `serviceloop bench` measures each stage and its anchor, not how fast they
are (speed targets are judged in the bench's own results, never in a test). It runs the
bench as a user does, through the command, in a state folder of its own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serviceloop import bench

pytestmark = pytest.mark.slow

SIZE = 10_000
HISTORY_DAYS = 42  # the fewest that still give drift a week of days to evaluate


@pytest.fixture(scope="module")
def results():
    # Not under pytest's basetemp: other pytest runs on the machine rotate old basetemps
    # away, which would pull the data directory from under the bench's running server.
    work = Path(tempfile.mkdtemp(prefix="serviceloop-bench-smoke-"))
    output = work / "results.json"
    env = {**os.environ, "SERVICELOOP_HOME": str(work / "home")}
    env.pop("AIRFLOW_HOME", None)
    env.pop("SERVICELOOP_WAREHOUSE_URL", None)
    cmd = [
        str(Path(sys.executable).with_name("serviceloop")), "bench", "--sizes", str(SIZE),
        "--history-days", str(HISTORY_DAYS), "--output", str(output), "--home", str(work / "bench"),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield json.loads(output.read_text()), proc.stdout, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0 and math.isfinite(value)


def test_every_stage_has_its_row_with_a_measured_ratio(results):
    data, stdout, _ = results
    by_stage = {r["stage"]: r for r in data["rows"] if r["size"] == SIZE}
    assert set(by_stage) == set(bench.LABELS), "one row per stage"
    for stage, row in by_stage.items():
        assert _positive(row["value"]), stage
        if stage in bench.TARGETS:
            assert _positive(row["anchor"]) and _positive(row["ratio"]), stage
            assert row["met"] in (True, False), stage
    assert by_stage["peak_rss"]["met"] in (True, False), "the memory target is judged at the largest size"
    for label in bench.LABELS.values():
        assert label in stdout, f"the printed table lacks {label!r}"


def test_the_simulated_organisation_has_the_size_asked_for(results):
    data, _, _ = results
    m = data["sizes"][str(SIZE)]
    read = {e: r["rows_read"] for e, r in m["ingest_history"]["entities"].items()}
    assert 0.85 * SIZE <= read["tickets"] <= 1.15 * SIZE
    assert 4 <= read["ticket_events"] / read["tickets"] <= 9
    assert 0.15 <= read["surveys"] / read["tickets"] <= 0.45
    assert m["load"]["rows"] == read["tickets"] + read["ticket_events"]
    # The reference loads (COPY from the file, the source piped straight into a typed table)
    # carry the rows the ingest read, every one.
    assert m["anchors"]["copy_rows"] == m["one_write"]["rows"] == m["load"]["rows"]
    # Where the load's time went: each phase took some, and together they fit in it.
    phases = m["load"]["phases"]
    assert set(phases) == {"extract", "data_docs", "load"} and all(_positive(v) for v in phases.values()), phases
    assert sum(phases.values()) <= m["load"]["seconds"], (phases, m["load"]["seconds"])
    # 1 % of the helpdesk's tickets (the history and the next day's) are touched in the next
    # interval, which reads them all again.
    changed = m["ingest_increment"]["tickets_changed"]
    assert read["tickets"] / 100 <= changed <= read["tickets"] * 1.1 / 100
    assert m["ingest_increment"]["rows"] >= changed
    assert m["dbt_incremental"]["anchor_seconds"] == m["dbt_full"]["seconds"]
    # dbt's floor, the same command selecting no model, costs less than a run that builds them.
    assert 0 < m["dbt_incremental"]["floor_seconds"] < m["dbt_incremental"]["seconds"]


def test_the_sql_anchor_checks_what_great_expectations_checks(results):
    data, _, _ = results
    validation = data["sizes"][str(SIZE)]["validation"]
    assert validation["sql_failed_rules"] == validation["gx_failed_rules"]
    assert sum(validation["gx_failed_rules"]["tickets"].values()) > 0, "the simulator's bad records are caught"


def test_drift_and_the_daily_interval_measure_the_whole_work(results):
    data, _, _ = results
    m = data["sizes"][str(SIZE)]
    drift = m["drift"]
    assert drift["days"] >= 7 and drift["runs"] == drift["days"] * 5, "every team on every day"
    assert drift["anchor_rows"] > 0
    day = m["airflow_day"]
    assert set(day["dags"]) == {"serviceloop_ingest", "serviceloop_transform", "serviceloop_drift"}
    assert all(_positive(v) for v in [*day["dags"].values(), *day["bare"].values()])
    assert math.isclose(day["anchor_seconds"], sum(day["bare"].values()))
    # Each side a new day of the same size: Airflow's interval is the one after the bare one.
    assert day["intervals"]["airflow"][0] == day["intervals"]["bare"][1]
    assert 0.5 < day["airflow_rows"] / day["rows"] < 2, (day["rows"], day["airflow_rows"])
    # Where each command's time went, read off Airflow's log: its parts fit in its wall time.
    for dag_id, t in day["timelines"].items():
        assert t["tasks"] >= 4 and t["to_first_log_seconds"] > 0 and t["to_first_task_seconds"] > 0, t
        assert t["to_first_log_seconds"] + t["to_first_task_seconds"] < day["dags"][dag_id], t
        assert t["task_total_seconds"] < day["dags"][dag_id], t
        assert 0 < t["task_median_seconds"] < t["task_total_seconds"], t
    assert day["timelines"]["serviceloop_transform"]["tasks"] > 50, "a task per dbt node"


def test_the_service_quality_page_is_timed_on_each_of_its_views(results):
    data, _, _ = results
    dashboard = data["sizes"][str(SIZE)]["dashboard"]
    views = dashboard["views_ms"]
    assert len(views) == 4 and {"organisation/week", "organisation/month"} <= set(views)
    assert all(_positive(ms) for ms in views.values()) and dashboard["ms"] == max(views.values())


def test_results_say_where_and_on_what_they_were_measured(results):
    data, _, _ = results
    m = data["sizes"][str(SIZE)]
    assert len(m["commit"]["hash"]) == 40
    assert data["machine"]["nproc"] >= 1 and data["machine"]["memory_gb"] > 0
    stages = m["peak_rss"]["stages"]
    assert all(50 < mb < 8192 for mb in stages.values()), stages
    assert m["peak_rss"]["peak_rss_mb"] == max(stages.values())


def test_the_load_paths_script_runs_on_the_helpdesk_the_bench_left(results):
    """`bench/load_paths.py` (bench/README.md, "What 0.8x takes") measures every way, and
    stops the bench's server again, as the bench left it."""
    _, _, work = results
    env = {**os.environ, "SERVICELOOP_HOME": str(work / "bench")}
    env.pop("AIRFLOW_HOME", None)
    env.pop("SERVICELOOP_WAREHOUSE_URL", None)
    script = Path(__file__).resolve().parents[1] / "bench" / "load_paths.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--rounds", "1"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = int(proc.stdout.split("ticket events in the helpdesk: ")[1].split()[0].replace(",", ""))
    assert events > 4 * SIZE, proc.stdout  # about 6.6 events a ticket
    ways = [line for line in proc.stdout.splitlines() if line.endswith("x of the anchor's throughput")]
    assert len(ways) == 7, proc.stdout
    for line in ways:
        seconds = float(line.rsplit(": ", 1)[1].split(" s,")[0])
        assert _positive(seconds), line
    status = subprocess.run(
        [str(Path(sys.executable).with_name("serviceloop")), "warehouse", "status"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "stopped" in status.stdout, status.stdout
