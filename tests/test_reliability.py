"""Reliability invariants over 60 days of a small organisation, run daily and as a backfill.

One simulated organisation (60 days, two staffing shortages) is loaded two ways, as the
pipeline's role, each into a warehouse of its own:

- **daily**: 60 daily runs, the helpdesk and the survey drop as they stood at each day's end,
  the transform after some of them (a dbt run costs 10-30 s here, so not after every one;
  `test_kpis.py` shows that one incremental build equals a full rebuild);
- **backfill**: the same 60 intervals one after the other once the period is over (in a
  process of its own, beside the daily runs), then one transform.

On the way the sources misbehave: an older version of a ticket is delivered after the newer
one, a ticket closed three intervals before is updated, a survey export arrives three days
late, and every record is delivered again by the next batches' overlap. The dbt build of a
copy of the backfill is killed with SIGKILL halfway and run again. The daily warehouse then
runs drift, reviews and alerts (SMTP and a JSON webhook on loopback, through Airflow
connections from the environment), and its last interval is run twice more.

Checked: read = loaded + quarantined for every batch; the marts of the daily runs, of the
backfill and of the killed-and-rerun build are identical (checksums); three runs of the same
interval give identical raw, marts, findings, reviews and alerts, and no alert goes twice;
customer ids in the marts are keyed pseudonyms and survey comments lose their e-mail
addresses and phone numbers; the analyst reads every mart the pipeline's role built; and no
secret (database passwords, SMTP password, webhook URL, API token, pseudonymisation key)
appears in any log or report under the state folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg2
import pytest
from pipeline_driver import (
    as_role,
    copy_database,
    create_database,
    dbt,
    dbt_command,
    dbt_env,
    drop_database,
    ingest_interval,
    monitor,
    prepare,
)

from serviceloop import checksums, privacy, roles

pytestmark = pytest.mark.slow

START = dt.date(2026, 3, 2)
DAYS = 60
FIRST_END = dt.datetime.combine(START + dt.timedelta(days=1), dt.time(), dt.UTC)
END = dt.datetime.combine(START + dt.timedelta(days=DAYS), dt.time(), dt.UTC)
DAY = dt.timedelta(days=1)
SCENARIOS = (
    f"staffing_shortage(team=tech_support,start={START + dt.timedelta(days=38)},days=14,severity=0.6)",
    f"staffing_shortage(team=billing,start={START + dt.timedelta(days=40)},days=14,severity=0.6)",
)
# The daily runs after which the transform runs (and the day before and of the late update).
OUT_OF_ORDER_DAY = 30
LATE_UPDATE_DAY = 55
LATE_FILE_DATE = START + dt.timedelta(days=44)  # its export arrives with the run 3 days later
TRANSFORM_DAYS = {20, 40, LATE_UPDATE_DAY - 1, LATE_UPDATE_DAY, DAYS}
DATA_DOCS_FROM = DAYS - 2  # the last runs render their Data Docs pages (scanned for secrets)
# Survey comments with contact details in several layouts, and what staging makes of them.
COMMENTS = {
    "mail me at ana.lopez+cs@mail.example.co.uk please": "mail me at [email] please",
    "call (555) 123-4567 or 138 1234 5678": "call [phone] or [phone]",
    "reach me on +1-202-555-0147 after 5": "reach me on [phone] after 5",
    "my mobile 07700900123, thanks": "my mobile [phone], thanks",
    "fixed on 2026-06-01 at 10:30, order 42": "fixed on 2026-06-01 at 10:30, order 42",
    "客服很好，电话 13812345678": "客服很好，电话 [phone]",
}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
PHONE = re.compile(r"\+\d[\d ().-]{6,}\d|\d{7,}")


def _marker(kind: str) -> str:
    return f"{kind}-marker-{uuid.uuid4().hex[:16]}"


SECRETS = {
    "warehouse password": _marker("whpw"),
    "helpdesk password": _marker("hdpw"),
    "SMTP password": _marker("smtppw"),
    "webhook token": _marker("hook"),
    "API token": _marker("apitoken"),
    "pseudonymisation key": _marker("pskey"),
}


# --- the sources' misbehaviour --------------------------------------------------------------


def _one(url: str, sql: str, *args):
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def _all(url: str, sql: str, *args) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def _execute(url: str, sql: str, *args) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        conn.commit()


def _late_ticket(data) -> str:
    """A ticket created three intervals before the late update's, closed before that interval."""
    created = dt.datetime.combine(START + dt.timedelta(days=LATE_UPDATE_DAY - 4), dt.time(), dt.UTC)
    t = data.tickets
    done = t[(t.created_at >= created) & (t.created_at < created + DAY) & (t.status == "closed")]
    # Its last change before the late update lies in an earlier interval.
    done = done[done.updated_at < created + 3 * DAY].sort_values("ticket_id")
    assert len(done), "no ticket to update late"
    return done.ticket_id.iloc[0]


def _apply_late_update(helpdesk_url: str, ticket_id: str) -> None:
    """The helpdesk edits the ticket's priority and category in the interval of LATE_UPDATE_DAY."""
    when = FIRST_END + (LATE_UPDATE_DAY - 1) * DAY - dt.timedelta(hours=6)
    _execute(
        helpdesk_url,
        """
        update hd_tickets set priority = case priority when 'P1' then 'P2' else 'P1' end,
            category = 'reclassified', updated_at = %s
        where ticket_id = %s
        """,
        when,
        ticket_id,
    )


def _deliver_stale_version(helpdesk_url: str, end: dt.datetime) -> str:
    """A replica serves an older version of a ticket loaded by the previous batch (out of order)."""
    (ticket_id,) = _one(
        helpdesk_url,
        """
        select ticket_id from hd_tickets
        where status = 'closed' and updated_at >= %s and updated_at < %s order by ticket_id limit 1
        """,
        end - 2 * DAY,
        end - DAY,
    )
    _execute(
        helpdesk_url,
        """
        update hd_tickets set status = 'in_progress', resolved_at = null, closed_at = null,
            updated_at = updated_at - interval '1 hour'
        where ticket_id = %s
        """,
        ticket_id,
    )
    return ticket_id


def _pii_surveys(data) -> list[dict]:
    """Surveys with contact details in their comments, in a file of the first day, an hour after their
    tickets (created that day) were resolved."""
    t = data.tickets
    first = dt.datetime.combine(START, dt.time(), dt.UTC)
    resolved = t[(t.created_at < first + DAY) & t.resolved_at.notna()].sort_values("ticket_id")
    assert len(resolved) >= len(COMMENTS)
    return [
        {"survey_id": f"SV-PII-{i}", "ticket_id": row.ticket_id,
         "submitted_at": (row.resolved_at + dt.timedelta(hours=1)).isoformat(), "csat": 4, "nps": 8,
         "complaint": False, "comment": comment}
        for i, (row, comment) in enumerate(zip(resolved.head(len(COMMENTS)).itertuples(), COMMENTS, strict=True))
    ]  # fmt: skip


def _write_drops(data, folder: Path, as_of: dt.datetime, pii: list[dict], hide_late: bool) -> None:
    from serviceloop.simulator import write_survey_drop

    write_survey_drop(data, folder, as_of=as_of)
    extra = folder / f"surveys_{START:%Y%m%d}.jsonl"
    if not extra.exists():
        extra.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pii), encoding="utf-8")
        os.utime(extra, (time.time() - 60, time.time() - 60))
    late, hidden = folder / f"surveys_{LATE_FILE_DATE:%Y%m%d}.csv", folder / f".surveys_{LATE_FILE_DATE:%Y%m%d}.csv"
    if hide_late and late.exists():
        late.replace(hidden)
    elif not hide_late and hidden.exists():
        hidden.replace(late)
    # The export finished a while ago: the reader need not wait for the files to settle.
    settled = time.time() - 60
    for path in folder.iterdir():
        if path.stat().st_mtime > settled:
            os.utime(path, (settled, settled))


# --- the routes the alerts take -------------------------------------------------------------


@contextlib.contextmanager
def _smtp(password: str):
    import socket

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    inbox = types.SimpleNamespace(messages=[])

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            inbox.messages.append(envelope.content)
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == password
        return AuthResult(success=ok)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    inbox.port = port
    try:
        yield inbox
    finally:
        controller.stop()


@contextlib.contextmanager
def _webhook():
    posts = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's hook name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.path, self.headers.get("Idempotency-Key"), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], posts
    finally:
        server.shutdown()
        server.server_close()


# --- the runs ---------------------------------------------------------------------------------


def _seed(url: str, target: Path) -> str:
    """The reference data, with the alert routes this organisation uses: Technical Support by
    SMTP, Billing by a JSON webhook (the Airflow connections are defined in the environment)."""
    out = dbt(url, target, "seed")
    _execute(url, "update reference.teams set alert_route = 'email', alert_conn_id = 'reliability_smtp'"
             " where team_id = 'tech_support'")  # fmt: skip
    _execute(url, "update reference.teams set alert_route = 'webhook', alert_conn_id = 'reliability_hook'"
             " where team_id = 'billing'")  # fmt: skip
    return out


def _marts_checksums(url: str) -> dict:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        return checksums.marts(cur)


def _kill_dbt_halfway(url: str, target: Path, log_file) -> dict:
    """Start `dbt run`, SIGKILL it once the first mart is being built, report what was there."""
    proc = subprocess.Popen(
        dbt_command(target, "run"), env=dbt_env(url), stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            (building,) = _one(
                url,
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and state = 'active' and query ilike %s and pid <> pg_backend_pid()",
                '%create%table%"marts".%',
            )
            if building:
                break
            time.sleep(0.05)
        running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    tables = {t for (t,) in _all(url, "select table_name from information_schema.tables where table_schema = 'marts'")}
    return {"running": running, "marts": tables, "returncode": proc.returncode}


@pytest.fixture(scope="module")
def org(warehouse_url, state_dir):
    from serviceloop.simulator import SimulationConfig, parse_scenario, simulate, write_helpdesk

    secrets = SECRETS
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = state_dir / "reliability"
    pipeline_log = logs / "reliability-pipeline.log"
    # The steps' logs, as an Airflow task log holds them (INFO, Airflow's default level). Airflow
    # configures logging when first imported (connections are read through it), dropping other
    # handlers: it comes first.
    from serviceloop.tasks import connection_fields

    connection_fields("serviceloop_reliability_none")
    handler = logging.FileHandler(pipeline_log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel("INFO")
    mp = pytest.MonkeyPatch()
    mp.setenv(privacy.KEY_ENV, secrets["pseudonymisation key"])
    mp.setenv("SERVICELOOP_DATA_DOCS", "off")
    urls = {
        name: create_database(warehouse_url, f"rel_{name}") for name in ("daily", "daily_hd", "backfill", "backfill_hd")
    }
    out = {"urls": urls, "secrets": secrets, "logs": logs, "work": work, "pipeline_log": pipeline_log}
    backfill_proc = None
    try:
        data = simulate(
            SimulationConfig(
                seed=23, start=START, days=DAYS, tickets_per_day=50, scenarios=[parse_scenario(s) for s in SCENARIOS]
            )
        )
        late_ticket = _late_ticket(data)
        pii = _pii_surveys(data)
        out.update(data=data, late_ticket=late_ticket, pii=pii)
        daily = prepare(urls["daily"], secrets["warehouse password"])
        backfill = prepare(urls["backfill"], secrets["warehouse password"])
        out.update(daily=daily, backfill=backfill)

        # The helpdesk is read by a role of its own, with a password.
        reader = "reliability_reader"
        with contextlib.closing(psycopg2.connect(as_role(urls["daily_hd"], "postgres"))) as conn, conn.cursor() as cur:
            cur.execute("select 1 from pg_roles where rolname = %s", (reader,))
            if cur.fetchone() is None:
                cur.execute(f"create role {reader} login")
            cur.execute(f"alter role {reader} password %s", (secrets["helpdesk password"],))
            conn.commit()

        def grant(helpdesk_url):
            _execute(as_role(helpdesk_url, "postgres"), f"grant select on all tables in schema public to {reader}")
            return as_role(helpdesk_url, reader, secrets["helpdesk password"])

        # The backfill's sources: the period over, with the same late update and files.
        write_helpdesk(data, urls["backfill_hd"], as_of=END)
        _apply_late_update(urls["backfill_hd"], late_ticket)
        backfill_drops = work / "backfill-drops"
        _write_drops(data, backfill_drops / "surveys", END, pii, hide_late=False)
        backfill_source = grant(urls["backfill_hd"])
        backfill_log = (logs / "reliability-backfill.log").open("ab")
        backfill_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("pipeline_driver.py")), "backfill", str(backfill_drops),
             FIRST_END.isoformat(), str(DAYS)],
            env={**os.environ, "RELIABILITY_WAREHOUSE_URL": backfill, "RELIABILITY_SOURCE_URL": backfill_source},
            stdout=backfill_log, stderr=subprocess.STDOUT,
        )  # fmt: skip

        # The daily runs.
        drops = work / "daily-drops"
        write_helpdesk(data, urls["daily_hd"], as_of=FIRST_END)
        daily_source = grant(urls["daily_hd"])
        target = work / "dbt-daily"
        dbt_log = (logs / "reliability-dbt.log").open("a", encoding="utf-8")
        stale = None
        for day in range(1, DAYS + 1):
            end = FIRST_END + (day - 1) * DAY
            write_helpdesk(data, urls["daily_hd"], as_of=end)
            if day >= LATE_UPDATE_DAY:
                _apply_late_update(urls["daily_hd"], late_ticket)
            if day == OUT_OF_ORDER_DAY:
                stale = _deliver_stale_version(urls["daily_hd"], end)
            hide = LATE_FILE_DATE + dt.timedelta(days=1) <= end.date() < LATE_FILE_DATE + dt.timedelta(days=3)
            _write_drops(data, drops / "surveys", end, pii, hide_late=hide)
            if day >= DATA_DOCS_FROM:
                mp.setenv("SERVICELOOP_DATA_DOCS", "on")
            ingest_interval(daily, daily_source, drops, end)
            if day in TRANSFORM_DAYS:
                if day == min(TRANSFORM_DAYS):
                    dbt_log.write(_seed(daily, target))
                dbt_log.write(dbt(daily, target, "run"))
                out[f"marts_day_{day}"] = _all(
                    daily, "select priority, category from marts.fct_tickets where ticket_id = %s", late_ticket
                )
        out["stale_ticket"] = stale
        out["daily_marts"] = _marts_checksums(daily)

        backfill_proc.wait(timeout=3600)
        assert backfill_proc.returncode == 0, (logs / "reliability-backfill.log").read_text()[-5000:]
        copy = copy_database(urls["backfill"], "rel_killed")
        urls["killed"] = copy
        # A copy does not inherit the database's grants: the pipeline's role gets them again.
        killed = prepare(copy, secrets["warehouse password"])
        dbt_log.write(_seed(backfill, work / "dbt-backfill"))
        dbt_log.write(dbt(backfill, work / "dbt-backfill", "run"))
        out["backfill_marts"] = _marts_checksums(backfill)
        dbt_log.write(_seed(killed, work / "dbt-killed"))
        dbt_log.flush()
        out["kill"] = _kill_dbt_halfway(killed, work / "dbt-killed", dbt_log)
        dbt_log.write(dbt(killed, work / "dbt-killed", "run"))
        out["killed_marts"] = _marts_checksums(killed)
        out["killed_leftovers"] = _all(
            killed,
            "select table_schema, table_name from information_schema.tables"
            " where table_name like '%%dbt_tmp%%' or table_name like '%%dbt_backup%%'",
        )

        # Drift, reviews and alerts on the daily warehouse, by the teams' routes.
        with _smtp(secrets["SMTP password"]) as inbox, _webhook() as (hook_port, posts):
            mp.setenv("AIRFLOW_CONN_RELIABILITY_SMTP", json.dumps({
                "conn_type": "smtp", "host": "127.0.0.1", "port": inbox.port, "login": "alerts",
                "password": secrets["SMTP password"],
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "ServiceLoop <alerts@example.org>"},
            }))  # fmt: skip
            mp.setenv("AIRFLOW_CONN_RELIABILITY_HOOK", json.dumps({
                "conn_type": "http", "host": "127.0.0.1", "port": hook_port, "schema": "http",
                "extra": {"endpoint": f"/hooks/{secrets['webhook token']}"},
            }))  # fmt: skip
            reports, outbox = work / "reports", work / "outbox"
            runs = []
            for attempt in range(3):
                if attempt:
                    # The same interval again: a retry, a manual rerun.
                    ingest_interval(daily, daily_source, drops, END)
                    dbt_log.write(dbt(daily, target, "run"))
                out.setdefault("monitor", []).append(monitor(daily, reports, outbox, connection_fields))
                with contextlib.closing(psycopg2.connect(daily)) as conn:
                    runs.append(checksums.snapshot(conn, outbox))
                runs[-1]["smtp"] = len(inbox.messages)
                runs[-1]["webhook"] = sorted(key for _p, key, _b in posts)
            out["runs"] = runs
            out["posts"] = posts
            out["inbox"] = inbox.messages

        out["api_batch"] = _rest_batch(mp, daily, data, secrets["API token"])
        dbt_log.close()
        yield out
    finally:
        if backfill_proc is not None and backfill_proc.poll() is None:
            backfill_proc.kill()
            backfill_proc.wait()
        mp.undo()
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
        for url in urls.values():
            drop_database(url)


def _rest_batch(mp, url: str, data, token: str) -> dict:
    """One batch from the survey API with a bearer token, through the source's environment variable."""
    from serviceloop.ingest import ingest_batch
    from serviceloop.simulated_api import SurveyApi, survey_records
    from serviceloop.sources import SOURCES, load_sources
    from serviceloop.tasks import source_connection

    config = Path(os.environ["SERVICELOOP_HOME"]) / "reliability" / "sources-survey-api.yml"
    config.write_text(
        "sources:\n  survey_api:\n    kind: rest_api\n    connection: {env: RELIABILITY_SURVEY_API_URL}\n"
        "    auth: bearer\n    timeout: 5\n    retries: 2\n    backoff: 0.05\n    page_size: 50\n    entities:\n"
        "      surveys:\n        endpoint: /api/v1/surveys\n        pagination: offset\n        records: data\n"
        "        window_params: {start: submitted_from, end: submitted_to}\n"
        "        columns: {survey_id: id, ticket_id: ticket, submitted_at: submitted, csat: csat_score,"
        " nps: nps_score, complaint: is_complaint, comment: text}\n"
    )
    source = load_sources(config)["survey_api"]
    SOURCES["survey_api"] = source
    try:
        with SurveyApi(survey_records(data.surveys), token=token) as api:
            mp.setenv("RELIABILITY_SURVEY_API_URL", api.url.replace("http://", f"http://:{token}@"))
            with contextlib.closing(psycopg2.connect(url)) as conn:
                result = ingest_batch(
                    conn, "survey_api", "surveys", END - DAY, END, source_dsn=source_connection(source)
                )
                conn.commit()
    finally:
        del SOURCES["survey_api"]
    logging.getLogger("serviceloop.tests.driver").info("ingest survey_api returned %s", result.as_dict())
    return result.as_dict()


# --- the invariants -----------------------------------------------------------------------


@pytest.mark.parametrize("side", ["daily", "backfill"])
def test_every_batch_read_equals_loaded_plus_quarantined(org, side):
    url = org[side]
    batches = _all(url, "select batch_id, source, entity, rows_read, rows_loaded, rows_quarantined from ops.batches")
    assert len(batches) >= DAYS * 5
    for batch_id, source, entity, read, loaded, quarantined in batches:
        table = f"{source}__{entity}"
        (in_raw,) = _one(url, f"select count(*) from raw.{table} where _batch_id = %s", batch_id)
        (in_quarantine,) = _one(url, f"select count(*) from quarantine.{table} where batch_id = %s", batch_id)
        assert read == loaded + quarantined, batch_id
        assert (in_raw, in_quarantine) == (loaded, quarantined), batch_id
    # Nothing half-loaded is left in landing.
    assert _all(url, "select table_name from information_schema.tables where table_schema = 'landing'") == []


def test_a_backfill_gives_the_marts_of_the_daily_runs(org):
    daily, backfill = org["daily_marts"], org["backfill_marts"]
    assert set(daily) == set(backfill) and len(daily) > 15
    assert daily["marts.fct_tickets"][0] > DAYS * 30
    assert {t: v for t, v in daily.items() if backfill[t] != v} == {}


def test_a_dbt_build_killed_halfway_and_run_again_gives_the_clean_marts(org):
    kill = org["kill"]
    assert kill["running"], "dbt had finished before it was killed"
    assert kill["returncode"] == -signal.SIGKILL
    assert len(kill["marts"]) < len(org["backfill_marts"]), "the kill did not land mid-build"
    assert org["killed_leftovers"] == []
    assert org["killed_marts"] == org["backfill_marts"]


def test_a_ticket_updated_three_intervals_later_shows_in_the_marts_after_the_next_run(org):
    before, after = org[f"marts_day_{LATE_UPDATE_DAY - 1}"], org[f"marts_day_{LATE_UPDATE_DAY}"]
    assert len(before) == len(after) == 1
    assert before[0][1] != "reclassified"
    assert after[0][1] == "reclassified" and after[0][0] != before[0][0]


def test_an_older_version_delivered_after_the_newer_one_does_not_win(org):
    from serviceloop.ingest import batch_id

    stale_batch = batch_id("helpdesk", "tickets", FIRST_END + (OUT_OF_ORDER_DAY - 1) * DAY)
    versions = _all(
        org["daily"],
        "select status, updated_at, _batch_id, _loaded_at from raw.helpdesk__tickets where ticket_id = %s",
        org["stale_ticket"],
    )
    closed = [v for v in versions if v[0] == "closed"]
    stale = [v for v in versions if v[2] == stale_batch and v[0] == "in_progress"]
    assert closed and stale, versions
    # The older version (earlier updated_at) was loaded after the newer one.
    assert stale[0][1] < max(v[1] for v in closed) and stale[0][3] > min(v[3] for v in closed)
    (status,) = _one(org["daily"], "select status from marts.fct_tickets where ticket_id = %s", org["stale_ticket"])
    assert status == "closed"


def test_a_survey_export_delivered_three_days_late_is_loaded(org):
    name = f"surveys_{LATE_FILE_DATE:%Y%m%d}.csv"
    (batch_id,) = _one(org["daily"], "select batch_id from ops.drop_manifest where file_name = %s", name)
    delivered = LATE_FILE_DATE + dt.timedelta(days=3)
    assert batch_id.endswith(f"{delivered:%Y%m%d}T000000"), batch_id
    (n,) = _one(
        org["daily"], "select count(*) from raw.survey_drop__surveys where submitted_at::date = %s", LATE_FILE_DATE
    )
    assert n > 0


def test_three_runs_of_an_interval_give_identical_checksums_and_send_no_alert_twice(org):
    first, second, third = org["runs"]
    assert first["reviews"]["monitoring.improvement_reviews"][0] >= 2, "the shortages opened no reviews"
    assert first["findings"]["monitoring.drift_findings"][0] > 0
    assert first == second == third
    keys = _all(org["daily"], "select alert_key, status from monitoring.alerts order by alert_key")
    assert keys and all(status == "sent" for _k, status in keys)
    # Every alert went once: by SMTP (Technical Support), the webhook (Billing), the outbox (others).
    webhook = [key for _p, key, _b in org["posts"]]
    assert len(webhook) == len(set(webhook)) > 0
    assert org["runs"][0]["smtp"] == len(org["inbox"]) > 0
    assert len(webhook) + len(org["inbox"]) + first["alerts"]["outbox"][0] == len(keys)


def test_customer_ids_in_the_marts_are_keyed_pseudonyms(org):
    key = org["secrets"]["pseudonymisation key"].encode()
    raw = dict(_all(org["daily"], "select distinct ticket_id, customer_id from raw.helpdesk__tickets"))
    marts = dict(_all(org["daily"], "select ticket_id, customer_id from marts.fct_tickets"))
    assert marts and all(marts[t] == privacy.pseudonym(key, raw[t]) for t in marts)
    customers = {c for (c,) in _all(org["daily"], "select customer_id from marts.dim_customer")}
    assert customers == set(marts.values())
    assert not customers & set(raw.values())


def test_contact_details_in_survey_comments_are_masked_before_the_marts(org):
    staged = dict(_all(org["daily"], "select survey_id, comment from staging.stg_survey_drop__surveys"))
    for survey in org["pii"]:
        assert staged[survey["survey_id"]] == COMMENTS[survey["comment"]], survey["comment"]
    raw = dict(_all(org["daily"], "select survey_id, comment from raw.survey_drop__surveys where comment is not null"))
    with_contacts = [s for s, c in raw.items() if EMAIL.search(c) or PHONE.search(c)]
    assert len(with_contacts) > 10, "the simulation wrote no contact details"
    for survey_id in with_contacts:
        assert not EMAIL.search(staged[survey_id]) and not PHONE.search(staged[survey_id]), staged[survey_id]


def test_the_analyst_reads_every_mart_the_pipeline_built_and_nothing_else(org):
    analyst = roles.analyst_url(org["daily"])
    with contextlib.closing(psycopg2.connect(analyst)) as conn, conn.cursor() as cur:
        for table in org["daily_marts"]:
            cur.execute(f"select count(*) from {table}")
        for table in ("ops.pseudonym_key", "raw.helpdesk__tickets", "staging.stg_helpdesk__tickets"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(f"select * from {table}")
            conn.rollback()


def test_no_secret_appears_in_any_log_or_report_under_the_state_folder(org, state_dir):
    assert org["api_batch"]["rows_read"] > 0
    # The log holds every step to the last (the alerts of three runs and the API's batch).
    log_text = org["pipeline_log"].read_text(encoding="utf-8")
    assert log_text.count("alerts returned") == 3 and "ingest survey_api returned" in log_text
    scanned, leaks = 0, []
    secrets = {name: value.encode() for name, value in org["secrets"].items()}
    for path in state_dir.rglob("*"):
        # The warehouse folder is where the server's data and the generated credentials live.
        if not path.is_file() or "warehouse" in path.relative_to(state_dir).parts[:1]:
            continue
        content = path.read_bytes()
        scanned += 1
        leaks += [f"{name} in {path}" for name, value in secrets.items() if value in content]
    kinds = {p.suffix for p in state_dir.rglob("*") if p.is_file()}
    assert {".log", ".html", ".sql", ".json"} <= kinds and scanned > 100
    assert leaks == []
    # What the warehouse records about deliveries and batches, which the Reviews page shows.
    rows = _all(
        org["daily"],
        "select location || coalesce(last_error, '') from monitoring.alerts"
        " union all select coalesce(data_docs, '') from ops.batches",
    )
    text = " ".join(r for (r,) in rows)
    assert [name for name, value in org["secrets"].items() if value in text] == []
