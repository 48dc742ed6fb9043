"""The benchmark: each stage of ServiceLoop beside the bare cost of the same work.

``serviceloop bench [--sizes 10000,100000,1000000]`` simulates a service organisation of
each size (tickets, about 6.6 lifecycle events and 0.3 surveys per ticket), runs it through
the pipeline and, in the same run on the same machine, the plainest way to do each stage's
work. The machine may be noisy, so what counts are the ratios:

| stage | anchor beside it | target |
|---|---|---|
| load into raw (helpdesk tickets + events: extract, landing, raw and quarantine; validation apart) | ``psql`` ``\\copy`` of the same rows from a CSV file | >= 0.8x its throughput |
| validation (the GX part of that ingest) | one hand-written SQL pass of the same checks | <= 2x its time |
| extract from SQL: peak RSS of each entity's batch | | < 1 GB |
| dbt build after 1 % of tickets changed | the full build | <= 0.15x |
| drift, every team and day | one Evidently report over the whole population | <= 3x |
| one daily interval through Airflow | the sum of the bare stages for that interval | <= 1.5x |
| peak RSS of any stage at the largest size | | <= 1.5 GB |
| the Service quality page (its mart queries as the analyst, and the render), slowest view | | < 1 s |

Two loading paths are measured beside them for reference: ``pandas.DataFrame.to_sql``, the
one most pipelines start with (on at most ``TO_SQL_ROWS`` rows per table: it is that slow),
and the source's rows piped straight into a table with raw's types (``COPY ... TO STDOUT``
into ``COPY ... FROM STDIN``), which writes each row once: what a load without a staged
landing table, and without validation between the two, would cost.

Everything runs in a state folder of its own (``<SERVICELOOP_HOME>/bench`` by default) with
its own embedded PostgreSQL, so the user's warehouse is never touched. Each measured stage
runs in a child process: its peak RSS comes from ``wait4``, which is the child's own
high-water mark (and that of the processes it waited for), not an estimate. Results go to
``bench/results.json``; a run replaces the sizes it measured and keeps the others, each with
the commit it was measured on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (10_000, 100_000, 1_000_000)
HISTORY_DAYS = 56  # drift evaluates the days after its first 35 (7 current + 28 reference)
TO_SQL_ROWS = 50_000
CHANGED_SHARE = 0.01
PEAK_RSS_TARGET_MB = 1536
EXTRACT_RSS_TARGET_MB = 1024
LOAD_ENTITIES = ("tickets", "ticket_events")  # the helpdesk batch the load and validation rows measure
TARGETS = {
    "load": (">=", 0.8),
    "validation": ("<=", 2.0),
    "dbt_incremental": ("<=", 0.15),
    "drift": ("<=", 3.0),
    "airflow_day": ("<=", 1.5),
}
LABELS = {
    "load": "load into raw (rows/s) vs psql COPY",
    "load_with_validation": "load + validation (rows/s) vs psql COPY",
    "to_sql": "pandas to_sql (rows/s) vs psql COPY",
    "one_write": "source straight into a typed table, one write (rows/s) vs psql COPY",
    "validation": "validation: GX vs one SQL pass (s)",
    "extract_rss": "extract from SQL: batch peak RSS (MB)",
    "dbt_full": "dbt full build of the models (s)",
    "dbt_incremental": "dbt models after 1 % change vs full (s)",
    "dbt_tests": "dbt tests after 1 % change vs after full (s)",
    "ingest_increment": "ingest of the next interval (s)",
    "drift": "drift, all teams x days vs one Evidently report (s)",
    "airflow_day": "one day through Airflow vs bare stages (s)",
    "peak_rss": "peak RSS of any stage (MB)",
    "dashboard": "Service quality page: queries + render, slowest view (ms)",
}
DASHBOARD_TARGET_MS = 1000
NOTHING_SELECTED = "tag:serviceloop_bench_selects_nothing"  # no node has this tag: dbt's floor
DAY_DAGS = ("serviceloop_ingest", "serviceloop_transform", "serviceloop_drift")  # a day through Airflow
# The weekday volume profile of the simulator, whose weekday mean is tickets_per_day.
_WEEK_MEAN = (1.2 + 1.05 + 1.0 + 0.95 + 0.8 + 0.35 + 0.35) / 7


# --- configuration of one size -------------------------------------------------------------


def plan(size: int, history_days: int = HISTORY_DAYS) -> dict:
    """Simulation parameters whose history holds about ``size`` tickets.

    Three days are simulated past the history: one for the 1 % change, one for the daily
    interval through the bare stages, the next for a daily interval through Airflow.
    """
    tickets_per_day = max(1, round(size / (history_days * _WEEK_MEAN)))
    start = dt.date(2026, 1, 5)
    history_end = dt.datetime.combine(start + dt.timedelta(days=history_days), dt.time(), dt.UTC)
    return {
        "size": size,
        "seed": 11,
        "start": start.isoformat(),
        "days": history_days + 3,
        "tickets_per_day": tickets_per_day,
        "history_end": history_end.isoformat(),
    }


def _end(p: dict, extra_days: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(p["history_end"]) + dt.timedelta(days=extra_days)


# --- child processes -----------------------------------------------------------------------


def measured(args: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run a command to its end; its wall time and its peak RSS (of it and what it waited for)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT if log else None)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    if proc.returncode != 0:
        where = f"; see {log}" if log else ""
        raise RuntimeError(f"bench: {' '.join(map(str, args[:4]))} failed (exit {proc.returncode}){where}")
    # ru_maxrss is in kilobytes on Linux. The load average says how busy the machine was.
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "load_average": os.getloadavg()[0]}


def dag_test_timeline(log_text: str, began: dt.datetime) -> dict:
    """Where one ``airflow dags test`` spent its time, read off the timestamps of Airflow's lines.

    ``to_first_log``: from the command's start to its first log line (Python, Airflow, its
    configuration); ``to_first_task``: from there to the first task's "Task started" (the DAG
    folder's parse, the DAG run, and the in-process Execution API that ``dags test`` builds
    on the first task); ``tasks``: how many ran and the median of each one's time from
    "running task" to "end task" (the cost of a task that does little: the task SDK's
    supervisor, its API calls, state and XCom in the metadata database).
    """
    first = first_task = running = None
    durations = []
    for line in log_text.splitlines():
        try:
            stamp = dt.datetime.fromisoformat(line[:27])
        except ValueError:
            continue
        first = first or stamp
        if "[DAG TEST] running task" in line:
            running = stamp
        elif "Task started" in line and first_task is None:
            first_task = stamp
        elif "[DAG TEST] end task" in line and running is not None:
            durations.append((stamp - running).total_seconds())
            running = None
    if first is None or first_task is None:
        return {}
    return {
        "to_first_log_seconds": (first - began).total_seconds(),
        "to_first_task_seconds": (first_task - first).total_seconds(),
        "tasks": len(durations),
        "task_median_seconds": float(sorted(durations)[len(durations) // 2]) if durations else None,
        "task_total_seconds": sum(durations),
    }


def child(step: str, params: dict, log: Path) -> dict:
    """Run one step of this module in a child process; its own result plus wall time and peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    try:
        run = measured(
            [sys.executable, "-m", "serviceloop.bench", "--step", step, json.dumps(params), str(result_path)],
            log=log,
        )
        result = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    return {**run, **result}


def _simulate(params: dict) -> dict:
    """Write the helpdesk database and the survey drop as they stood ``extra_days`` after the history."""
    from serviceloop import warehouse
    from serviceloop.settings import HELPDESK_DB, paths
    from serviceloop.simulator import SimulationConfig, default_scenarios, simulate, write_helpdesk, write_survey_drop

    p = params["plan"]
    base = SimulationConfig(seed=p["seed"], start=dt.date.fromisoformat(p["start"]), days=p["days"],
                            tickets_per_day=p["tickets_per_day"])  # fmt: skip
    config = SimulationConfig(**{**base.__dict__, "scenarios": default_scenarios(base)})
    started = time.perf_counter()
    data = simulate(config)
    simulated = time.perf_counter() - started
    as_of = _end(p, params["extra_days"])
    counts = write_helpdesk(data, warehouse.url(HELPDESK_DB), as_of=as_of)
    write_survey_drop(data, paths().survey_drop, as_of=as_of)
    return {"simulate_seconds": simulated, "rows": counts}


def _ingest(params: dict) -> dict:
    """ServiceLoop's ingest of every source entity for one interval, as the ingest DAG's tasks do it.

    Per entity: the batch's time, the part of it its GX validation took, rows read and the
    rules rows broke.
    """
    from serviceloop import ingest, warehouse
    from serviceloop.settings import HELPDESK_DB, paths
    from serviceloop.sources import SCHEDULED

    spent = {"validation": 0.0}
    build_validator = ingest.validator

    def timed_validator(entity: str, url: str):
        # Of the batch's validation, the part that builds the GX context and suite (once per entity and process).
        started = time.perf_counter()
        built = build_validator(entity, url)
        spent["validation"] += time.perf_counter() - started
        return built

    ingest.validator = timed_validator
    start, end = dt.datetime.fromisoformat(params["start"]), dt.datetime.fromisoformat(params["end"])
    only = params.get("entities")
    out = {}
    for source in SCHEDULED.values():
        for entity in source.entities:
            if only is not None and [source.name, entity.name] not in only:
                continue
            spent["validation"] = 0.0
            started = time.perf_counter()
            with warehouse.connect() as conn:
                result = ingest.ingest_batch(
                    conn, source.name, entity.name, start, end,
                    source_dsn=warehouse.url(HELPDESK_DB), drop_root=paths().drops,
                )  # fmt: skip
            out[entity.name] = {
                "source": source.name,
                "source_kind": source.kind,
                "work_seconds": time.perf_counter() - started,
                "extract_seconds": result.extract_seconds,
                "validation_seconds": result.validation_seconds,
                # Of which importing GX and building its context and suite, once per process.
                "validation_setup_seconds": spent["validation"],
                "data_docs_seconds": result.data_docs_seconds,
                "load_seconds": result.load_seconds,
                "rows_read": result.rows_read,
                "rows_quarantined": result.rows_quarantined,
                "failed_rules": {**result.quarantine_reasons, **result.warnings},
            }
    return {"entities": out}


def _drift(params: dict) -> dict:
    """ServiceLoop's drift over every team and every day not yet evaluated."""
    from serviceloop import drift, warehouse
    from serviceloop.settings import paths

    started = time.perf_counter()
    with warehouse.connect() as conn:
        result = drift.run(conn, reports_dir=paths().reports)
    return {
        "work_seconds": time.perf_counter() - started,
        "days": len(result.as_of_days),
        "runs": result.runs,
        "evaluations": result.evaluations,
    }


def _drift_anchor(params: dict) -> dict:
    """The same metrics in one Evidently report over the whole population the drift stage read."""
    from serviceloop import drift, warehouse

    started = time.perf_counter()
    with warehouse.connect() as conn:
        last = drift.last_complete_day(conn)
        with conn.cursor() as cur:
            cur.execute("select min(resolved_date) from marts.fct_tickets")
            (first,) = cur.fetchone()
        tickets = drift._load_tickets(conn, first, last)
    middle = tickets["resolved_date"].min() + (tickets["resolved_date"].max() - tickets["resolved_date"].min()) / 2
    reference, current = tickets[tickets["resolved_date"] < middle], tickets[tickets["resolved_date"] >= middle]
    drift._evidently_report(reference, current)
    return {"work_seconds": time.perf_counter() - started, "rows": len(tickets)}


def _to_sql(params: dict) -> dict:
    """The naive path: ``pandas.DataFrame.to_sql`` of the same rows, read from the CSV export."""
    import pandas as pd
    from sqlalchemy import create_engine

    from serviceloop import warehouse
    from serviceloop.settings import WAREHOUSE_DB

    engine = create_engine(warehouse.sqlalchemy_url(WAREHOUSE_DB))
    rows, seconds = 0, 0.0
    for entity, path in params["files"].items():
        frame = pd.read_csv(path, header=None, dtype=str, nrows=params["limit"], keep_default_na=False)
        started = time.perf_counter()
        frame.to_sql(f"{entity}_to_sql", engine, schema="bench", if_exists="replace", index=False, chunksize=10_000)
        seconds += time.perf_counter() - started
        rows += len(frame)
    engine.dispose()
    return {"work_seconds": seconds, "rows": rows}


STEPS = {
    "simulate": _simulate,
    "ingest": _ingest,
    "drift": _drift,
    "drift_anchor": _drift_anchor,
    "to_sql": _to_sql,
}


# --- anchors run from the bench process itself ---------------------------------------------


def _canonical_sql(entity) -> str:
    """A select rendering the helpdesk table's rows in the contract's canonical text form."""
    from serviceloop.contract import BOOLEAN, TIMESTAMP

    cols = []
    for f in entity.fields:
        if f.type == TIMESTAMP:
            expr = f"""to_char({f.name} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')"""
        elif f.type == BOOLEAN:
            expr = f"case when {f.name} then 'true' when not {f.name} then 'false' end"
        else:
            expr = f"nullif(btrim({f.name}::text), '')"
        cols.append(f"{expr} as {f.name}")
    return f"select {', '.join(cols)} from {_helpdesk_table(entity.name)}"


def _helpdesk_table(entity: str) -> str:
    from serviceloop.sources import SOURCES

    return SOURCES["helpdesk"].tables[entity]


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def rule_predicate(rule) -> str:
    """The SQL condition under which a row breaks one rule of a suite (nulls pass value rules, as in GX)."""
    col, kw = rule.kwargs["column"], rule.kwargs
    if rule.type == "expect_column_values_to_not_be_null":
        return f"{col} is null"
    if rule.type == "expect_column_values_to_be_null":
        return f"{col} is not null"
    if rule.type == "expect_column_values_to_be_in_set":
        return f"{col} not in ({', '.join(_quote(v) for v in kw['value_set'])})"
    if rule.type == "expect_column_values_to_match_regex":
        return f"{col} !~ {_quote(kw['regex'])}"
    if rule.type == "expect_column_values_to_match_strftime_format":
        if kw["strftime_format"] != "%Y-%m-%dT%H:%M:%S%z":
            raise ValueError(f"rule {rule.rule}: no SQL form for strftime format {kw['strftime_format']!r}")
        from serviceloop.contract import ISO_TIMESTAMP_RE

        # The SQL form of GX's ``%Y-%m-%dT%H:%M:%S%z``: the layout, with an offset or Z.
        return f"{col} !~ {_quote(ISO_TIMESTAMP_RE)}"
    if rule.type == "expect_column_values_to_be_castable":
        castable = f"ops.input_is_valid({col}, {_quote(kw['type_name'])})"
        if kw.get("regex"):
            castable = f"{col} ~ {_quote(kw['regex'])} and {castable}"
        return f"not ({castable})"
    if rule.type == "expect_column_value_lengths_to_be_between":
        return f"length({col}) not between {kw.get('min_value', 0)} and {kw.get('max_value', 2**31 - 1)}"
    raise ValueError(f"rule {rule.rule}: no SQL form for {rule.type}")


def validation_sql(entity: str, table: str, known_tickets: str | None = None) -> str:
    """One pass over ``table`` counting the rows that break each column rule of the entity's
    suite, and the suite's own query for each cross-column, cross-row and reference rule."""
    from serviceloop.validation import UNEXPECTED_ROWS, load, render_query

    suite = load(entity)
    column_rules = [r for r in suite.rules if r.type != UNEXPECTED_ROWS]
    cases = ",\n        ".join(f"case when {rule_predicate(r)} then {_quote(r.rule)} end" for r in column_rules)
    queries = []
    for r in suite.rules:
        if r.type == UNEXPECTED_ROWS:
            query = render_query(r, suite, table)
            if known_tickets:
                from serviceloop.validation import known_tickets_sql

                query = query.replace(known_tickets_sql(), known_tickets)
            queries.append(f"select {_quote(r.rule)}, count(*) from ({query}) as broken having count(*) > 0")
    return f"""
    select broken.rule, count(*)
    from {table}
    cross join lateral unnest(array[
        {cases}
    ]) as broken (rule)
    where broken.rule is not null
    group by broken.rule
    {"".join(" union all " + q for q in queries)}
    """


def _psql_args(url: str, command: str) -> list[str]:
    return ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-q", url, "-c", command]


def _psql(url: str, command: str, log: Path) -> dict:
    return measured(_psql_args(url, command), log=log)


def _psql_pipe(source_url: str, copy_out: str, target_url: str, copy_in: str, log: Path | None = None) -> dict:
    """One psql's ``COPY ... TO STDOUT`` piped into another's ``COPY ... FROM STDIN``, timed whole."""
    pipe = f"{shlex.join(_psql_args(source_url, copy_out))} | {shlex.join(_psql_args(target_url, copy_in))}"
    return measured(["bash", "-o", "pipefail", "-c", pipe], log=log)


# --- one size ------------------------------------------------------------------------------


class Bench:
    def __init__(self, home: Path, history_days: int = HISTORY_DAYS, log=print):
        self.home = home
        self.history_days = history_days
        self.say = log
        self.log_path = home / "logs" / "bench.log"
        self.work = home / "bench-files"

    # -- environment

    def setup(self) -> None:
        """Point everything at the bench's own state folder and start its warehouse and Airflow."""
        os.environ["SERVICELOOP_HOME"] = str(self.home)
        os.environ.pop("SERVICELOOP_WAREHOUSE_URL", None)
        os.environ.pop("AIRFLOW_HOME", None)
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        from serviceloop import pipeline

        pipeline.prepare(self.log_path)

    def teardown(self) -> None:
        from serviceloop import warehouse

        warehouse.stop()

    def reset(self) -> None:
        """Empty warehouse, helpdesk and survey drop: each size starts from nothing."""
        import psycopg2
        from sqlalchemy.engine import make_url

        from serviceloop import warehouse
        from serviceloop.pipeline import prepare_warehouse
        from serviceloop.settings import HELPDESK_DB, WAREHOUSE_DB, paths

        admin = make_url(warehouse.url()).set(database="postgres").render_as_string(hide_password=False)
        with contextlib.closing(psycopg2.connect(admin)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in (WAREHOUSE_DB, HELPDESK_DB):
                    cur.execute(f'drop database if exists "{db}" with (force)')
        warehouse.ensure_databases()
        # The roles' grants on the new database, and the schemas, as a run prepares them.
        prepare_warehouse()
        with warehouse.connect() as conn, conn.cursor() as cur:
            cur.execute("create schema bench")
        for folder in (paths().drops, paths().reports, self.work):
            shutil.rmtree(folder, ignore_errors=True)
        self.work.mkdir(parents=True)

    def _dbt_build(self, *extra: str, command: str = "build") -> dict:
        from serviceloop import airflow_env
        from serviceloop.settings import paths

        p = paths()
        args = [
            airflow_env.dbt_bin(), command, "--project-dir", str(p.dbt_project), "--profiles-dir", str(p.dbt_project),
            "--target-path", str(p.dbt_target), "--log-path", str(self.home / "logs" / "dbt"), "--target", "warehouse",
            *extra,
        ]  # fmt: skip
        return measured(args, env=airflow_env.environment(), log=self.log_path)

    def _ingest_all(self, start: dt.datetime, end: dt.datetime) -> dict:
        """Every entity's batch for the interval, in one child process (its peak RSS is the stage's)."""
        return child("ingest", {"start": start.isoformat(), "end": end.isoformat()}, self.log_path)

    def _ingest_each(self, start: dt.datetime, end: dt.datetime) -> dict:
        """Every entity's batch for the interval, each in a child process of its own, as the ingest
        DAG runs them (one task each): each entity's peak RSS is its batch's own."""
        from serviceloop.sources import SCHEDULED

        out = {"entities": {}, "seconds": 0.0, "peak_rss_mb": 0.0}
        for source in SCHEDULED.values():
            for entity in source.entities:
                params = {"start": start.isoformat(), "end": end.isoformat(), "entities": [[source.name, entity.name]]}
                run = child("ingest", params, self.log_path)
                result = run["entities"][entity.name]
                result.update(peak_rss_mb=run["peak_rss_mb"], load_average=run["load_average"])
                out["entities"][entity.name] = result
                out["seconds"] += run["seconds"]
                out["peak_rss_mb"] = max(out["peak_rss_mb"], run["peak_rss_mb"])
        return out

    # -- the measurements

    def measure_load(self, size: int, m: dict, save=lambda m: None) -> dict:
        """The anchors (psql COPY, the SQL validation pass, to_sql), then the history's ingest:
        the load, validation and extract-memory rows. Returns the history's ingest."""
        import psycopg2

        from serviceloop import warehouse
        from serviceloop.contract import ENTITIES
        from serviceloop.settings import HELPDESK_DB

        p = m["plan"]
        start, history_end = dt.datetime.fromisoformat(p["start"] + "T00:00:00+00:00"), _end(p)
        # The anchors go first: at the largest size they are measured even if the run is cut short.
        self.say(f"[{size:,}] anchors: psql COPY, SQL validation pass, to_sql")
        wh_url, hd_url = warehouse.url(), warehouse.url(HELPDESK_DB)
        files, copy_seconds, sql_seconds, sql_counts = {}, 0.0, 0.0, {}
        one_write_seconds, one_write_rows, copy_rows = 0.0, 0, 0

        for name in LOAD_ENTITIES:
            entity = ENTITIES[name]
            path = self.work / f"{name}.csv"
            files[name] = str(path)
            # The same rows the ingest read, in the canonical text form it loads, as a file.
            _psql(hd_url, f"\\copy ({_canonical_sql(entity)}) to '{path}' with (format csv)", self.log_path)
            with contextlib.closing(psycopg2.connect(wh_url)) as conn, conn.cursor() as cur:
                cur.execute(
                    f"create table bench.{name}_copy as select {', '.join(entity.columns)}"
                    f" from raw.helpdesk__{name} with no data"
                )
                # The landing table's form: contract columns as text, and what a reader may add.
                cur.execute(
                    f"create table bench.{name}_text ({', '.join(c + ' text' for c in entity.columns)},"
                    " _origin text, _parse_error text, _row_number bigint generated always as identity)"
                )
                # For the reference load that writes each row once: raw's types, as the anchor's.
                cur.execute(f"create table bench.{name}_direct (like bench.{name}_copy)")
                conn.commit()
            copy_seconds += _psql(
                wh_url, f"\\copy bench.{name}_copy ({', '.join(entity.columns)}) from '{path}' with (format csv)",
                self.log_path,
            )["seconds"]  # fmt: skip
            # For reference, what a load that writes each row once would cost: the source's rows
            # in the same canonical text, piped straight into a table with raw's types.
            one_write_seconds += _psql_pipe(
                hd_url, f"copy ({_canonical_sql(entity)}) to stdout",
                wh_url, f"copy bench.{name}_direct ({', '.join(entity.columns)}) from stdin", self.log_path,
            )["seconds"]  # fmt: skip
            # Staged as text (untimed), then one timed SQL pass of the suite's checks.
            _psql(
                wh_url,
                f"\\copy bench.{name}_text ({', '.join(entity.columns)}) from '{path}' with (format csv)",
                self.log_path,
            )
            with contextlib.closing(psycopg2.connect(wh_url)) as conn, conn.cursor() as cur:
                # How many rows each reference load received (the ingest's are counted by its batches).
                cur.execute(
                    f"select (select count(*) from bench.{name}_direct), (select count(*) from bench.{name}_copy)"
                )
                direct, copied = cur.fetchone()
                one_write_rows += direct
                copy_rows += copied
                cur.execute(f"analyze bench.{name}_text")
                conn.commit()
                started = time.perf_counter()
                cur.execute(validation_sql(name, f"bench.{name}_text", "(select ticket_id from bench.tickets_text)"))
                sql_counts[name] = dict(cur.fetchall())
                sql_seconds += time.perf_counter() - started
        to_sql = child("to_sql", {"files": files, "limit": TO_SQL_ROWS}, self.log_path)
        m["anchors"] = {
            "copy_seconds": copy_seconds, "copy_rows": copy_rows, "sql_validation_seconds": sql_seconds,
            "to_sql": to_sql, "one_write_seconds": one_write_seconds, "one_write_rows": one_write_rows,
        }  # fmt: skip
        save(m)

        self.say(f"[{size:,}] ingest the history, each entity in a process of its own")
        ingested = self._ingest_each(start, history_end)
        history = ingested["entities"]
        m["ingest_history"] = ingested
        load_rows = sum(history[e]["rows_read"] for e in LOAD_ENTITIES)
        batch_seconds = sum(history[e]["work_seconds"] for e in LOAD_ENTITIES)
        gx_seconds = sum(history[e]["validation_seconds"] for e in LOAD_ENTITIES)
        # The load row is the batch without its validation, which has a row (and a target) of its
        # own; the whole batch is the next row, so neither hides the other.
        load_seconds = batch_seconds - gx_seconds
        copy_rate = load_rows / copy_seconds
        load_rss = max(history[e]["peak_rss_mb"] for e in LOAD_ENTITIES)
        m["load"] = {
            "rows": load_rows, "seconds": load_seconds, "rows_per_s": load_rows / load_seconds,
            "anchor_seconds": copy_seconds, "anchor_rows_per_s": copy_rate,
            "ratio": (load_rows / load_seconds) / copy_rate, "peak_rss_mb": load_rss,
            "entities": {e: history[e]["work_seconds"] - history[e]["validation_seconds"] for e in LOAD_ENTITIES},
            # Where the load's time went: the source read into the landing table; rendering the Data
            # Docs page; the move into raw and quarantine.
            "phases": {
                phase: sum(history[e][f"{phase}_seconds"] for e in LOAD_ENTITIES)
                for phase in ("extract", "data_docs", "load")
            },
        }  # fmt: skip
        m["load_with_validation"] = {
            "rows": load_rows, "seconds": batch_seconds, "rows_per_s": load_rows / batch_seconds,
            "anchor_seconds": copy_seconds, "anchor_rows_per_s": copy_rate,
            "ratio": (load_rows / batch_seconds) / copy_rate, "peak_rss_mb": load_rss,
        }  # fmt: skip
        m["extract_rss"] = {
            "entities": {
                e: {"peak_rss_mb": r["peak_rss_mb"], "rows": r["rows_read"], "source": r["source"]}
                for e, r in history.items() if r["source_kind"] == "sql"
            },
        }  # fmt: skip
        m["extract_rss"]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in m["extract_rss"]["entities"].values())
        m["to_sql"] = {
            "rows": to_sql["rows"], "seconds": to_sql["work_seconds"], "rows_per_s": to_sql["rows"] / to_sql["work_seconds"],
            "anchor_rows_per_s": copy_rate, "ratio": (to_sql["rows"] / to_sql["work_seconds"]) / copy_rate,
            "peak_rss_mb": to_sql["peak_rss_mb"],
        }  # fmt: skip
        m["one_write"] = {
            "rows": one_write_rows, "seconds": one_write_seconds, "rows_per_s": one_write_rows / one_write_seconds,
            "anchor_rows_per_s": copy_rate, "ratio": (one_write_rows / one_write_seconds) / copy_rate,
        }  # fmt: skip
        m["validation"] = {
            "rows": load_rows, "seconds": gx_seconds, "anchor_seconds": sql_seconds, "ratio": gx_seconds / sql_seconds,
            "setup_seconds": sum(history[e]["validation_setup_seconds"] for e in LOAD_ENTITIES),
            "gx_failed_rules": {e: history[e]["failed_rules"] for e in LOAD_ENTITIES}, "sql_failed_rules": sql_counts,
        }  # fmt: skip
        save(m)
        return ingested

    def run_size(self, size: int, save=lambda m: None) -> dict:
        """Every measurement of one size; ``save`` gets the measurements so far after each stage."""
        import psycopg2

        from serviceloop import airflow_env, warehouse
        from serviceloop.settings import HELPDESK_DB

        p = plan(size, self.history_days)
        history_end = _end(p)
        day1, day2, day3 = _end(p, 1), _end(p, 2), _end(p, 3)
        m: dict = {"plan": p}
        self.reset()

        self.say(f"[{size:,}] simulate {p['days']} days at {p['tickets_per_day']} tickets a weekday")
        sim = child("simulate", {"plan": p, "extra_days": 0}, self.log_path)
        m["simulate"] = sim
        ingested = self.measure_load(size, m, save)
        wh_url, hd_url = warehouse.url(), warehouse.url(HELPDESK_DB)

        self.say(f"[{size:,}] dbt full build")
        # Models and tests apart: the models are what an incremental run makes cheaper; the
        # tests read whole tables either way (reported on their own line).
        self._dbt_build(command="seed")
        full = self._dbt_build("--full-refresh", command="run")
        full_tests = self._dbt_build(command="test")
        m["dbt_full"] = {"seconds": full["seconds"], "peak_rss_mb": full["peak_rss_mb"]}
        self.say(f"[{size:,}] the Service quality page over the marts, as the analyst")
        m["dashboard"] = dashboard_timing()

        save(m)
        self.say(f"[{size:,}] drift over every team and day, and one Evidently report")
        drift = child("drift", {}, self.log_path)
        anchor = child("drift_anchor", {}, self.log_path)
        m["drift"] = {
            "seconds": drift["work_seconds"], "anchor_seconds": anchor["work_seconds"],
            "ratio": drift["work_seconds"] / anchor["work_seconds"], "days": drift["days"], "runs": drift["runs"],
            "evaluations": drift["evaluations"], "anchor_rows": anchor["rows"], "peak_rss_mb": drift["peak_rss_mb"],
            "anchor_peak_rss_mb": anchor["peak_rss_mb"],
        }  # fmt: skip

        save(m)
        self.say(f"[{size:,}] 1 % of the tickets change, the next interval is ingested and built")
        child("simulate", {"plan": p, "extra_days": 1}, self.log_path)
        with contextlib.closing(psycopg2.connect(hd_url)) as conn, conn.cursor() as cur:
            table = _helpdesk_table("tickets")
            cur.execute(f"select count(*) from {table}")
            changed = max(1, int(cur.fetchone()[0] * CHANGED_SHARE))
            # Touched in place during the next interval, as an agent re-saving a ticket does.
            cur.execute(
                f"""
                update {table} set updated_at = %s
                where ticket_id in (select ticket_id from {table} where updated_at < %s order by md5(ticket_id) limit %s)
                """,
                (history_end + dt.timedelta(hours=12), history_end, changed),
            )
            conn.commit()
        increment = self._ingest_all(history_end, day1)
        incremental = self._dbt_build(command="run")
        incremental_tests = self._dbt_build(command="test")
        # dbt's floor: the same command selecting no model (start-up, the project's parse), which
        # no run of the models can go below, whatever it has to build.
        floor = self._dbt_build("--select", NOTHING_SELECTED, command="run")
        m["ingest_increment"] = {
            "seconds": sum(r["work_seconds"] for r in increment["entities"].values()),
            "rows": sum(r["rows_read"] for r in increment["entities"].values()),
            "tickets_changed": changed,
            "peak_rss_mb": increment["peak_rss_mb"],
        }
        m["dbt_incremental"] = {
            "seconds": incremental["seconds"], "anchor_seconds": full["seconds"],
            "ratio": incremental["seconds"] / full["seconds"], "peak_rss_mb": incremental["peak_rss_mb"],
            "floor_seconds": floor["seconds"],
        }  # fmt: skip
        m["dbt_tests"] = {
            "seconds": incremental_tests["seconds"], "anchor_seconds": full_tests["seconds"],
            "ratio": incremental_tests["seconds"] / full_tests["seconds"], "peak_rss_mb": incremental_tests["peak_rss_mb"],
        }  # fmt: skip
        child("drift", {}, self.log_path)  # catch up, so the daily interval evaluates one day

        save(m)
        self.say(f"[{size:,}] one daily interval through the bare stages, the next one through Airflow")
        # Each side does a new day's work, with the sources as they stood at its end: an interval
        # run again would find its records loaded and its models built, and cost less.
        child("simulate", {"plan": p, "extra_days": 2}, self.log_path)
        bare_ingest = self._ingest_all(day1, day2)
        bare_dbt = self._dbt_build()
        bare_drift = child("drift", {}, self.log_path)
        bare = {
            "ingest": sum(r["work_seconds"] for r in bare_ingest["entities"].values()),
            "dbt": bare_dbt["seconds"],
            "drift": bare_drift["work_seconds"],
        }
        child("simulate", {"plan": p, "extra_days": 3}, self.log_path)
        dags = {}
        for dag_id in DAY_DAGS:
            # As `serviceloop run` runs them (`airflow_env.dags_test`).
            args = [*airflow_env.airflow_command(), "dags", "test", dag_id, day3.isoformat()]
            offset, began = self.log_path.stat().st_size, dt.datetime.now(dt.UTC)
            dags[dag_id] = measured(args, env=airflow_env.environment(), log=self.log_path)
            with self.log_path.open("rb") as f:
                f.seek(offset)
                dags[dag_id]["timeline"] = dag_test_timeline(f.read().decode(errors="replace"), began)
        with contextlib.closing(psycopg2.connect(wh_url)) as conn, conn.cursor() as cur:
            cur.execute(
                "select count(*), coalesce(sum(rows_read), 0) from ops.batches where interval_end = %s", (day3,)
            )
            airflow_batches, airflow_rows = cur.fetchone()
            cur.execute(
                "select count(*) from monitoring.drift_runs where as_of = %s", ((day3 - dt.timedelta(days=1)).date(),)
            )
            airflow_drift_runs = cur.fetchone()[0]
        if not airflow_batches or not airflow_drift_runs:
            raise RuntimeError(f"the Airflow interval ending {day3} was not ingested and judged; see {self.log_path}")
        airflow_seconds = sum(d["seconds"] for d in dags.values())
        m["airflow_day"] = {
            "seconds": airflow_seconds, "anchor_seconds": sum(bare.values()),
            "ratio": airflow_seconds / sum(bare.values()), "bare": bare,
            "dags": {k: v["seconds"] for k, v in dags.items()},
            # Where each command's time went, from Airflow's own log lines.
            "timelines": {k: v["timeline"] for k, v in dags.items()},
            "peak_rss_mb": max(d["peak_rss_mb"] for d in dags.values()),
            "rows": sum(r["rows_read"] for r in bare_ingest["entities"].values()),
            "airflow_rows": int(airflow_rows), "intervals": {"bare": [day1, day2], "airflow": [day2, day3]},
        }  # fmt: skip

        stages = {
            "ingest of the history": ingested["peak_rss_mb"],
            "dbt full build": full["peak_rss_mb"],
            "dbt run after 1 % change": incremental["peak_rss_mb"],
            "drift": drift["peak_rss_mb"],
            **{f"airflow {k}": v["peak_rss_mb"] for k, v in dags.items()},
        }
        worst = max(stages, key=stages.get)
        m["peak_rss"] = {
            "peak_rss_mb": stages[worst],
            "stage": worst,
            "stages": stages,
            "simulator_mb": sim["peak_rss_mb"],
        }
        return m


def dashboard_timing(repeats: int = 3) -> dict:
    """Milliseconds of the Service quality page (its queries as the analyst, and the render).

    Each view the page offers (the organisation and a team, by week and by month), ``repeats``
    times; the slowest is what counts.
    """
    from serviceloop import quality, ui, warehouse
    from serviceloop.pipeline import prepare_warehouse

    prepare_warehouse()  # the bench's database is made anew for each size
    views: dict[str, list[float]] = {}
    with contextlib.closing(ui.analyst_connect()) as analyst, warehouse.connect() as conn:
        with analyst.cursor() as cur:
            team = quality.teams(cur)[0][0]
        ui.quality_page(analyst, conn, None, "week", None)  # imports the page's modules, as a first request does
        for segment, grain in ((None, "week"), (None, "month"), (team, "week"), (team, "month")):
            for _ in range(repeats):
                started = time.perf_counter()
                ui.quality_page(analyst, conn, segment, grain, None)
                views.setdefault(f"{segment or 'organisation'}/{grain}", []).append(
                    (time.perf_counter() - started) * 1000
                )
    slowest = {view: max(ms) for view, ms in views.items()}
    return {"ms": max(slowest.values()), "views_ms": slowest, "repeats": repeats}


# --- results -------------------------------------------------------------------------------


def machine() -> dict:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")  # fmt: skip
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def commit(repo: Path, output: Path | None = None) -> dict:
    """The commit measured, and whether the tree differed from it (the results file aside: the run writes it)."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    status = ["status", "--porcelain"]
    if output is not None and output.resolve().is_relative_to(repo.resolve()):
        status += ["--", ".", f":(exclude){output.resolve().relative_to(repo.resolve())}"]
    return {"hash": git("rev-parse", "HEAD") or None, "uncommitted_changes": bool(git(*status))}


def verdict(stage: str, ratio: float | None) -> bool | None:
    if stage not in TARGETS or ratio is None:
        return None
    op, target = TARGETS[stage]
    return ratio >= target if op == ">=" else ratio <= target


def rows(results: dict) -> list[dict]:
    """The table: one row per stage and size, the stage, its anchor and their ratio."""
    out = []
    sizes = sorted(results["sizes"], key=int)
    largest = sizes[-1] if sizes else None
    for stage, label in LABELS.items():
        for size in sizes:
            m = results["sizes"][size].get(stage)
            if m is None:
                continue
            if stage == "extract_rss":
                # One row per entity of a SQL source: each batch is a process of its own.
                for entity, e in m["entities"].items():
                    out.append({
                        "stage": stage, "label": f"{label}: {entity}", "size": int(size), "value": e["peak_rss_mb"],
                        "anchor": None, "ratio": None, "target": f"< {EXTRACT_RSS_TARGET_MB} MB",
                        "met": e["peak_rss_mb"] < EXTRACT_RSS_TARGET_MB, "peak_rss_mb": e["peak_rss_mb"],
                        "entity": entity, "rows": e["rows"],
                    })  # fmt: skip
                continue
            if stage in ("load", "load_with_validation", "to_sql", "one_write"):
                value, anchor = m["rows_per_s"], m["anchor_rows_per_s"]
            else:
                value, anchor = m.get("seconds", m.get("peak_rss_mb")), m.get("anchor_seconds")
            if stage == "peak_rss":
                value = m["peak_rss_mb"]
            ratio = m.get("ratio")
            met = verdict(stage, ratio)
            target = f"{TARGETS[stage][0]} {TARGETS[stage][1]}x" if stage in TARGETS else ""
            if stage == "peak_rss":
                target = f"<= {PEAK_RSS_TARGET_MB} MB at {int(largest):,}"
                met = value <= PEAK_RSS_TARGET_MB if size == largest else None
            if stage == "dashboard":
                value, target, met = m["ms"], f"< {DASHBOARD_TARGET_MS} ms", m["ms"] < DASHBOARD_TARGET_MS
            out.append({
                "stage": stage, "label": label, "size": int(size), "value": value, "anchor": anchor,
                "ratio": ratio, "target": target, "met": met, "peak_rss_mb": m.get("peak_rss_mb"),
            })  # fmt: skip
    return out


def print_table(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"ServiceLoop bench ({results['machine']['nproc']} CPUs, {results['machine']['memory_gb']} GB)")
    for col in ("stage", "tickets", "ServiceLoop", "anchor", "ratio", "target", "met", "peak RSS MB"):
        table.add_column(col, justify="left" if col in ("stage", "target") else "right")
    previous = None
    for r in rows(results):
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[r["met"]]
        table.add_row(
            r["label"] if r["label"] != previous else "", f"{r['size']:,}", _num(r["value"]), _num(r["anchor"]),
            "" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"], met, _num(r["peak_rss_mb"]),
        )  # fmt: skip
        previous = r["label"]
    console.print(table)


def _num(value, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.{digits}f}"


def _versus(value: str, anchor: str, ratio: float) -> str:
    return f"{value} vs {anchor}: **{ratio:.2f}x**"


def markdown_table(results: dict) -> str:
    """The sizes side by side as a Markdown table, as ``bench/README.md`` quotes it.

    ``serviceloop bench --table`` prints it from ``results.json`` without measuring anything;
    a test holds the README to the results file. Stages and targets are those of ``rows``.
    """
    sizes = sorted(results["sizes"], key=int)
    ms = [results["sizes"][s] for s in sizes]
    targets = {r["stage"]: r["target"] for r in rows(results)}

    def rate(m: dict) -> str:
        return _versus(f"{m['rows_per_s']:,.0f}", f"{m['anchor_rows_per_s']:,.0f}", m["ratio"])

    def timed(m: dict) -> str:
        return _versus(_num(m["seconds"], 1), _num(m["anchor_seconds"], 1), m["ratio"])

    def dags(m: dict) -> str:
        own = " / ".join(f"{m['dags'][d]:.0f}" for d in DAY_DAGS)
        bare = " / ".join(f"{m['bare'][d]:.0f}" for d in ("ingest", "dbt", "drift"))
        return f"{own} vs {bare}"

    def phases(m: dict) -> str:
        # Absent from results of an older bench.
        own = m.get("phases")
        return " / ".join(_num(own[p], 1) for p in ("extract", "data_docs", "load")) if own else ""

    def seconds(key: str):
        # A measurement that results of an older bench may not have.
        return lambda m: _num(m[key], 1) if key in m else ""

    def timelines(m: dict) -> list[dict] | None:
        # Absent from results of an older bench; empty where Airflow's log lines were not found.
        own = [m.get("timelines", {}).get(d) for d in DAY_DAGS]
        return own if all(t and t.get("task_median_seconds") is not None for t in own) else None

    def startup(m: dict) -> str:
        own = timelines(m)
        return " / ".join(f"{t['to_first_log_seconds'] + t['to_first_task_seconds']:.1f}" for t in own) if own else ""

    def per_task(m: dict) -> str:
        own = timelines(m)
        if not own:
            return ""
        medians = " / ".join(f"{t['task_median_seconds']:.2f}" for t in own)
        return f"{medians} of {' / '.join(str(t['tasks']) for t in own)}"

    day = "airflow_day"
    table = [
        ("load", LABELS["load"], rate),
        ("load", "of which extract / Data Docs / move into raw (s)", phases),
        *((stage, LABELS[stage], rate) for stage in ("load_with_validation", "to_sql", "one_write")),
        ("validation", LABELS["validation"], timed),
        (
            "validation",
            "of which GX's import and setup, one per entity's process, summed (s)",
            seconds("setup_seconds"),
        ),
        ("dbt_full", LABELS["dbt_full"], seconds("seconds")),
        ("dbt_incremental", LABELS["dbt_incremental"], timed),
        ("dbt_incremental", "dbt's floor: the same command selecting no model (s)", seconds("floor_seconds")),
        ("dbt_tests", LABELS["dbt_tests"], timed),
        ("ingest_increment", LABELS["ingest_increment"], seconds("seconds")),
        ("drift", LABELS["drift"], timed),
        (day, LABELS[day], timed),
        (day, "of which ingest / transform / drift DAG vs bare (s)", dags),
        (day, "of which each DAG's start to its first task (s)", startup),
        (day, "of which each DAG's median task (s) of its tasks", per_task),
        (day, "rows ingested: bare interval / Airflow's", lambda m: f"{m['rows']:,} / {m['airflow_rows']:,}"),
        ("peak_rss", LABELS["peak_rss"], lambda m: f"{m['peak_rss_mb']:,.0f} ({m['stage']})"),
        ("dashboard", LABELS["dashboard"], lambda m: f"{m['ms']:.1f}"),
    ]
    lines = [
        "| | " + " | ".join(f"{int(s):,}" for s in sizes) + " | target |",
        "|---" * (len(sizes) + 2) + "|",
    ]
    for stage, label, cell in table:
        cells = [cell(m[stage]) if stage in m else "" for m in ms]
        if any(cells):  # a row that results of an older bench do not have is left out
            goal = targets.get(stage, "") if label == LABELS.get(stage) else ""  # a breakdown row has none
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    return "\n".join(lines) + "\n"


def write_results(path: Path, measured_sizes: dict, repo: Path) -> dict:
    """Merge this run's sizes into the results file (other sizes are kept as they were)."""
    results = {"sizes": {}}
    if path.exists():
        with contextlib.suppress(ValueError):
            results = json.loads(path.read_text())
    results.setdefault("sizes", {})
    results["machine"] = machine()
    for size, m in measured_sizes.items():
        results["sizes"][str(size)] = m
    results["rows"] = rows(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def run(sizes: list[int], output: Path, home: Path | None = None, history_days: int = HISTORY_DAYS) -> dict:
    """Measure every size; writes ``output`` after each size, so a long run keeps what it measured."""
    from serviceloop.settings import REPO_ROOT, paths

    home = home or paths().home / "bench"
    bench = Bench(home, history_days)
    bench.setup()
    results = {}
    try:
        for size in sizes:
            started = time.perf_counter()

            def save(m: dict, complete: bool = False, size: int = size, started: float = started) -> dict:
                m["complete"] = complete
                m["commit"] = commit(REPO_ROOT, output)
                m["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                m["total_seconds"] = time.perf_counter() - started
                return write_results(output, {size: m}, REPO_ROOT)

            results = save(bench.run_size(size, save), complete=True)
    finally:
        bench.teardown()
    return results


def _child_main(argv: list[str]) -> int:
    step, params, out = argv
    result = STEPS[step](json.loads(params))
    Path(out).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--step":
        sys.exit(_child_main(sys.argv[2:]))
    sys.exit("usage: serviceloop bench [--sizes ...]")
