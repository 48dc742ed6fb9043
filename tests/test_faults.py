"""Faults injected into one batch: a killed worker, a restarting warehouse, a changing source schema,
a source clock hours off, an export delivered late.

Each test breaks something on purpose and then checks the invariants: no partial batch is
visible (nothing in raw, quarantine or the batch registry from a batch that did not finish),
read = loaded + quarantined, and a retry loads exactly what a clean run loads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time

import psycopg2
import pytest

from serviceloop import checksums
from serviceloop.contract import TICKET
from serviceloop.extract import ContractError
from serviceloop.ingest import batch_id

UTC = dt.UTC
DAY1 = dt.datetime(2026, 6, 1, tzinfo=UTC)
DAY2 = dt.datetime(2026, 6, 2, tzinfo=UTC)
BIG = 60_000  # tickets in the batch a worker is killed in: its COPY lasts long enough to be seen
BATCH = batch_id("helpdesk", "tickets", DAY2)
TICKET_COLUMNS = ", ".join(TICKET.columns)

# One batch, as the ingest task runs it (serviceloop.tasks.ingest_entity).
INGEST = """
import datetime as dt, sys
from serviceloop import warehouse
from serviceloop.ingest import ingest_batch
url = sys.argv[1]
with warehouse.connect(dsn=url) as conn:
    r = ingest_batch(conn, "helpdesk", "tickets", dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
                     dt.datetime(2026, 6, 2, tzinfo=dt.UTC), source_dsn=url)
print("loaded", r.rows_loaded)
"""


def _execute(url: str, sql: str, *args) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        conn.commit()


def _one(url: str, sql: str, *args):
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def _helpdesk(url: str, n: int, start: dt.datetime = DAY1, step: str = "1 second") -> None:
    """``n`` valid resolved tickets in ``hd_tickets``, one per ``step`` from ``start``."""
    _execute(url, "drop table if exists hd_tickets")
    _execute(
        url,
        """
        create table hd_tickets as
        select 'HD-' || lpad(i::text, 7, '0') as ticket_id, 'helpdesk' as source_system,
            ts - interval '5 hours' as created_at, ts as updated_at,
            (array['phone', 'email', 'chat', 'web'])[1 + mod(i, 4)] as channel, 'C-' || mod(i, 5000) as customer_id,
            'consumer' as customer_segment, 'invoice' as category, null::text as subcategory,
            (array['P1', 'P2', 'P3', 'P4'])[1 + mod(i, 4)] as priority, null::text as impact, null::text as urgency,
            'billing' as team_id, 'billing-a01' as agent_id, 'resolved' as status,
            ts - interval '4 hours' as first_response_at, ts as resolved_at, null::timestamptz as closed_at,
            0 as reopen_count, 0 as reassignment_count, false as escalated, 'fixed' as resolution_code,
            null::text as delay_cause
        from generate_series(1, %s) as i, lateral (select %s::timestamptz + i * %s::interval as ts) as t
        """,
        n,
        start,
        step,
    )


def _nothing_of_the_batch(url: str) -> None:
    assert _one(url, "select count(*) from raw.helpdesk__tickets where _batch_id = %s", BATCH) == (0,)
    assert _one(url, "select count(*) from quarantine.helpdesk__tickets where batch_id = %s", BATCH) == (0,)
    assert _one(url, "select count(*) from ops.batches where batch_id = %s", BATCH) == (0,)


def _loaded_as_the_source_holds_it(url: str, n: int) -> None:
    read, loaded, quarantined = _one(
        url, "select rows_read, rows_loaded, rows_quarantined from ops.batches where batch_id = %s", BATCH
    )
    assert (read, loaded, quarantined) == (n, n, 0)
    (differ,) = _one(
        url,
        f"""
        select count(*) from (
            (select {TICKET_COLUMNS} from hd_tickets except all select {TICKET_COLUMNS} from raw.helpdesk__tickets)
            union all
            (select {TICKET_COLUMNS} from raw.helpdesk__tickets except all select {TICKET_COLUMNS} from hd_tickets)
        ) as d
        """,
    )
    assert differ == 0, "raw holds other records than the source"
    assert _one(url, "select count(*) from information_schema.tables where table_schema = 'landing'") == (0,)


def _start_ingest(url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", INGEST, url], env={**os.environ, "SERVICELOOP_DATA_DOCS": "off"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _wait_for(url: str, proc: subprocess.Popen, sql: str, timeout: float = 300):
    """Poll ``sql`` (on the database of ``url``) until it returns a row; None if the process ended first."""
    deadline = time.monotonic() + timeout
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            while time.monotonic() < deadline and proc.poll() is None:
                cur.execute(sql)
                row = cur.fetchone()
                if row:
                    return row
                time.sleep(0.01)
    return None


@pytest.fixture
def db(fresh_db):
    from serviceloop import schema

    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        schema.ensure(conn)
        conn.commit()
    return fresh_db


def _ingest(url: str, start=DAY1, end=DAY2, **kw):
    from serviceloop.ingest import ingest_batch

    with contextlib.closing(psycopg2.connect(url)) as conn:
        result = ingest_batch(conn, "helpdesk", "tickets", start, end, source_dsn=url, **kw)
        conn.commit()
    return result


# --- a worker killed, the warehouse restarting ---------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_during_the_copy_leaves_nothing_and_the_rerun_loads_the_batch(db):
    _helpdesk(db, BIG)
    proc = _start_ingest(db)
    try:
        # A COPY into the warehouse, from the batch's process, is in flight (whatever table it fills).
        copying = _wait_for(
            db,
            proc,
            "select p.relid::regclass::text, p.tuples_processed from pg_stat_progress_copy as p"
            " where p.datname = current_database() and p.command = 'COPY FROM'",
        )
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert copying is not None, f"no COPY was seen before the batch ended: {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    # The server notices the dead client and rolls its transactions back.
    for _ in range(100):
        if _one(db, "select count(*) from pg_stat_activity where datname = current_database()")[0] <= 1:
            break
        time.sleep(0.1)
    _nothing_of_the_batch(db)
    _ingest(db)
    _loaded_as_the_source_holds_it(db, BIG)


@pytest.mark.slow
def test_the_warehouse_restarting_mid_batch_fails_it_cleanly_and_the_retry_loads_it(db):
    from serviceloop import warehouse

    _helpdesk(db, BIG)
    proc = _start_ingest(db)
    try:
        busy = _wait_for(
            db,
            proc,
            "select query from pg_stat_activity where datname = current_database() and state = 'active'"
            " and pid <> pg_backend_pid() and query ilike 'copy%%'",
        )
        warehouse.stop()
        warehouse.start()
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert busy is not None, "the batch ended before the warehouse restarted"
    assert proc.returncode == 1, "the batch did not fail"
    # The batch fails with the warehouse's error (the connection it lost), not a cleanup's.
    assert re.search(r"^psycopg2\.OperationalError: .*(terminat|closed|socket)", err, re.M), err[-3000:]
    assert "InterfaceError" not in err, err[-3000:]
    _nothing_of_the_batch(db)
    # The retry (Airflow's, a minute later).
    _ingest(db)
    _loaded_as_the_source_holds_it(db, BIG)


# --- the source's schema changes ----------------------------------------------------------


def test_a_column_added_to_the_source_is_ignored(db):
    _helpdesk(db, 40)
    _execute(db, "alter table hd_tickets add column internal_note text default 'do not export'")
    result = _ingest(db)
    assert (result.rows_read, result.rows_loaded) == (40, 40)
    with contextlib.closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        assert "internal_note" not in checksums.columns(cur, "raw.helpdesk__tickets")


def test_an_optional_column_removed_from_the_source_reads_as_null(db, caplog):
    _helpdesk(db, 40)
    _execute(db, "alter table hd_tickets drop column resolution_code")
    result = _ingest(db)
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (40, 40, 0)
    assert _one(db, "select count(resolution_code) from raw.helpdesk__tickets") == (0,)
    assert "no column resolution_code (optional contract field resolution_code): read as null" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "alter table hd_tickets drop column priority",
            r"table hd_tickets: column priority \(contract field priority\) missing for entity tickets$",
        ),
        (
            "alter table hd_tickets rename column priority to ticket_priority",
            r"column priority \(contract field priority\) missing for entity tickets \(renamed to ticket_priority\?\)",
        ),
        (
            "alter table hd_tickets rename column updated_at to updated_at_utc",
            r"column updated_at \(contract field updated_at\) missing .* \(renamed to updated_at_utc\?\)",
        ),
    ],
    ids=["required-removed", "renamed", "watermark-renamed"],
)
def test_a_required_column_removed_or_renamed_fails_the_batch_naming_it(db, change, message):
    _helpdesk(db, 40)
    _execute(db, change)
    with pytest.raises(ContractError, match=message):
        _ingest(db)
    _nothing_of_the_batch(db)


def test_widened_column_types_still_load(db):
    _helpdesk(db, 40)
    _execute(
        db,
        """
        alter table hd_tickets
            alter column reopen_count type bigint, alter column reassignment_count type numeric(12, 0),
            alter column ticket_id type varchar(64), alter column created_at type timestamp(6) with time zone,
            alter column channel type varchar(200)
        """,
    )
    result = _ingest(db)
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (40, 40, 0)
    _loaded_as_the_source_holds_it(db, 40)


# --- a source's clock hours off --------------------------------------------------------------


def test_a_source_clock_ahead_is_tolerated_by_the_clock_skew_and_quarantined_beyond(db, monkeypatch):
    """Timestamps up to ``clock_skew`` (10 minutes) past the warehouse's now load; later ones are
    quarantined as not_in_future; ``SERVICELOOP_CLOCK_SKEW`` widens the tolerance."""
    from serviceloop import validation

    now = dt.datetime.now(UTC).replace(microsecond=0)
    _helpdesk(db, 3, start=now - dt.timedelta(hours=3), step="1 second")
    # The source's clock runs ahead: one ticket 5 minutes, one 3 hours into the future.
    _execute(db, "update hd_tickets set updated_at = %s, resolved_at = %s where ticket_id = 'HD-0000002'",
             now + dt.timedelta(minutes=5), now + dt.timedelta(minutes=5))  # fmt: skip
    _execute(db, "update hd_tickets set updated_at = %s, resolved_at = %s where ticket_id = 'HD-0000003'",
             now + dt.timedelta(hours=3), now + dt.timedelta(hours=3))  # fmt: skip
    end = now + dt.timedelta(hours=4)
    result = _ingest(db, end - dt.timedelta(days=1), end)
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (3, 2, 1)
    assert result.quarantine_reasons == {"not_in_future": 1}
    (held,) = _one(db, "select record->>'ticket_id' from quarantine.helpdesk__tickets")
    assert held == "HD-0000003"

    monkeypatch.setenv(validation.CLOCK_SKEW_ENV, "4 hours")
    validation.forget()
    try:
        again = _ingest(db, end - dt.timedelta(days=1), end)
    finally:
        monkeypatch.delenv(validation.CLOCK_SKEW_ENV)
        validation.forget()
    assert (again.rows_read, again.rows_loaded, again.rows_quarantined) == (3, 3, 0)


def test_a_source_clock_behind_within_the_overlap_loses_nothing(db):
    """A source whose clock is 5 hours behind stamps a change made after a batch ran with a time
    inside that batch's window: the next batch's overlap (2 days) reads it."""
    _helpdesk(db, 10, start=DAY1 + dt.timedelta(hours=6), step="1 hour")
    first = _ingest(db)
    assert first.rows_loaded == 10
    # After the first batch ran, ticket 4 changes; the skewed clock stamps it before DAY2.
    _execute(db, "update hd_tickets set status = 'closed', closed_at = %s, updated_at = %s"
             " where ticket_id = 'HD-0000004'", DAY2 - dt.timedelta(hours=1), DAY2 - dt.timedelta(hours=1))  # fmt: skip
    second = _ingest(db, DAY2, DAY2 + dt.timedelta(days=1))
    assert second.rows_read == 10  # the overlap reads day 1 again
    assert _one(
        db, "select count(*) from raw.helpdesk__tickets where ticket_id = 'HD-0000004' and status = 'closed'"
    ) == (1,)


def test_the_clock_skew_setting_cannot_carry_sql(monkeypatch):
    from serviceloop import validation

    monkeypatch.setenv(validation.CLOCK_SKEW_ENV, "10 minutes'::interval; drop table raw.helpdesk__tickets; --")
    validation.forget()
    try:
        with pytest.raises(validation.SuiteError, match="is not a duration such as '10 minutes'"):
            validation.load("tickets")
    finally:
        monkeypatch.delenv(validation.CLOCK_SKEW_ENV)
        validation.forget()
