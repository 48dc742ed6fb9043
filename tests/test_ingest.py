"""Ingest of one batch: every record read is loaded or quarantined with its reason, atomically."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time

import psycopg2
import pytest

from serviceloop import schema
from serviceloop.contract import TICKET
from serviceloop.extract import ContractError
from serviceloop.ingest import batch_id, ingest_batch

UTC = dt.UTC
DAY1 = dt.datetime(2026, 6, 1, tzinfo=UTC)
DAY2 = dt.datetime(2026, 6, 2, tzinfo=UTC)
DAY3 = dt.datetime(2026, 6, 3, tzinfo=UTC)
SQL_TYPES = {"text": "text", "timestamptz": "timestamptz", "integer": "integer", "boolean": "boolean"}


def _ticket(tid: str, updated: dt.datetime, **overrides) -> dict:
    row = {
        "ticket_id": tid, "source_system": "helpdesk", "created_at": updated - dt.timedelta(hours=5),
        "updated_at": updated, "channel": "email", "customer_id": "C-1", "customer_segment": "consumer",
        "category": "invoice", "subcategory": None, "priority": "P3", "impact": None, "urgency": None,
        "team_id": "billing", "agent_id": "billing-a01", "status": "resolved",
        "first_response_at": updated - dt.timedelta(hours=4), "resolved_at": updated, "closed_at": None,
        "reopen_count": 0, "reassignment_count": 0, "escalated": False, "resolution_code": "fixed",
        "delay_cause": None,
    }  # fmt: skip
    row.update(overrides)
    return row


def _helpdesk(url: str, rows: list[dict], drop: tuple[str, ...] = ()) -> None:
    cols = [f for f in TICKET.fields if f.name not in drop]
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("drop table if exists hd_tickets")
        cur.execute(f"create table hd_tickets ({', '.join(f'{f.name} {SQL_TYPES[f.type]}' for f in cols)})")
        for r in rows:
            cur.execute(
                f"insert into hd_tickets ({', '.join(f.name for f in cols)}) values ({', '.join(['%s'] * len(cols))})",
                [r[f.name] for f in cols],
            )
        conn.commit()


def _count(url: str, sql: str, *args) -> int:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def _ingest(url: str, start: dt.datetime, end: dt.datetime, entity: str = "tickets", source: str = "helpdesk", **kw):
    with contextlib.closing(psycopg2.connect(url)) as conn:
        result = ingest_batch(conn, source, entity, start, end, source_dsn=url, **kw)
        conn.commit()
    return result


def _outcome(result) -> dict:
    """What a batch did, without what differs between runs: its Data Docs page and its timings."""
    return {k: v for k, v in result.as_dict().items() if k != "data_docs" and not k.endswith("_seconds")}


@pytest.fixture
def db(fresh_db):
    rows = [
        _ticket("HD-1", DAY1 + dt.timedelta(hours=9)),
        _ticket("HD-2", DAY1 + dt.timedelta(hours=10), channel="fax"),
        _ticket("HD-3", DAY1 + dt.timedelta(hours=11), customer_id=None, reopen_count=-1),
        _ticket("HD-4", DAY1 + dt.timedelta(hours=12), priority="P1", escalated=True),
    ]
    _helpdesk(fresh_db, rows)
    return fresh_db


def test_every_row_read_is_loaded_or_quarantined_with_its_reasons(db):
    result = _ingest(db, DAY1, DAY2)
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (4, 2, 2)
    assert result.quarantine_reasons == {
        "channel_in_vocabulary": 1, "customer_id_present": 1, "reopen_count_is_non_negative_integer": 1,
    }  # fmt: skip
    assert _count(db, "select count(*) from raw.helpdesk__tickets") == 2
    with contextlib.closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("select record, failed_rules from quarantine.helpdesk__tickets order by row_number")
        quarantined = cur.fetchall()
    assert quarantined[0][0]["ticket_id"] == "HD-2" and quarantined[0][0]["channel"] == "fax"
    assert quarantined[0][1] == ["channel_in_vocabulary"]
    assert sorted(quarantined[1][1]) == ["customer_id_present", "reopen_count_is_non_negative_integer"]
    assert quarantined[1][0]["reopen_count"] == "-1", "the original value is kept"
    assert (
        _count(db, "select rows_read from ops.batches where batch_id = %s", batch_id("helpdesk", "tickets", DAY2)) == 4
    )


def test_the_batch_says_where_its_time_went(db, caplog):
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="serviceloop.ingest"):
        result = _ingest(db, DAY1, DAY2)
    wall = time.perf_counter() - started
    phases = [result.extract_seconds, result.validation_seconds, result.data_docs_seconds, result.load_seconds]
    assert all(p > 0 for p in phases), phases
    # The phases follow one another inside the call: together they fit in its wall time.
    assert sum(phases) <= wall
    logged = next(r.getMessage() for r in caplog.records if "extract" in r.getMessage())
    assert f"extract {result.extract_seconds:.1f} s" in logged and f"load {result.load_seconds:.1f} s" in logged


def test_rerunning_an_interval_replaces_its_batch(db):
    first = _ingest(db, DAY1, DAY2)
    again = _ingest(db, DAY1, DAY2)
    assert _outcome(first) == _outcome(again)
    assert _count(db, "select count(*) from raw.helpdesk__tickets") == 2
    assert _count(db, "select count(*) from quarantine.helpdesk__tickets") == 2
    assert _count(db, "select count(*) from ops.batches") == 1


def test_next_interval_reads_from_the_watermark_minus_the_overlap(db):
    _ingest(db, DAY1, DAY2)
    with contextlib.closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        # HD-1 is reopened on day 2: the helpdesk updates the row in place.
        cur.execute("update hd_tickets set status = 'in_progress', reopen_count = 1, updated_at = %s "
                    "where ticket_id = 'HD-1'", (DAY2 + dt.timedelta(hours=3),))  # fmt: skip
        conn.commit()
    second = _ingest(db, DAY2, DAY3)
    # The overlap (2 days for the helpdesk) re-reads day 1 as well: late commits are not missed.
    assert second.window_start == (DAY2 - dt.timedelta(days=2)).isoformat()
    assert second.rows_read == 4
    versions = _count(db, "select count(*) from raw.helpdesk__tickets where ticket_id = 'HD-1'")
    assert versions == 2, "raw is append-only: both versions are kept, staging picks the latest"


def test_a_missing_required_column_fails_the_batch_and_loads_nothing(fresh_db):
    _helpdesk(fresh_db, [_ticket("HD-9", DAY1 + dt.timedelta(hours=1))], drop=("priority",))
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        schema.ensure(conn)
        conn.commit()
    with pytest.raises(ContractError, match="priority"):
        _ingest(fresh_db, DAY1, DAY2)
    assert _count(fresh_db, "select count(*) from raw.helpdesk__tickets") == 0
    assert _count(fresh_db, "select count(*) from ops.batches") == 0


SURVEY_HEADER = "survey_id,ticket_id,submitted_at,csat,nps,complaint,comment\n"


def test_survey_drop_files_with_bom_and_bad_values(db, tmp_path):
    fresh_db = db
    _ingest(db, DAY1, DAY2)  # the surveys' tickets are known
    folder = tmp_path / "surveys"
    folder.mkdir()
    (folder / "surveys_20260601.csv").write_text(
        SURVEY_HEADER
        + "S-1,HD-1,2026-06-01T10:00:00+00:00,5,9,false,Très bien 非常好\n"
        + "S-2,HD-2,31/02/2026 25:00,4,8,false,\n"
        + 'S-3,HD-3,2026-06-01 12:30:00Z,9,3,true,"slow, and nobody called back"\n',
        encoding="utf-8-sig",
    )
    (folder / "surveys_20260602.csv").write_text(SURVEY_HEADER + "S-4,HD-4,2026-06-02T09:00:00+00:00,,,false,\n")
    result = _ingest(fresh_db, DAY1, DAY2, entity="surveys", source="survey_drop", drop_root=tmp_path)
    # Only the day-1 file belongs to the interval ending on day 2.
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (3, 1, 2)
    assert result.quarantine_reasons == {"submitted_at_is_iso_timestamp": 1, "csat_in_range": 1}
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn, conn.cursor() as cur:
        cur.execute("select comment, submitted_at from raw.survey_drop__surveys")
        comment, submitted = cur.fetchone()
        cur.execute("select record from quarantine.survey_drop__surveys where record->>'survey_id' = 'S-3'")
        (record,) = cur.fetchone()
    assert comment == "Très bien 非常好", "UTF-8 with a byte-order mark is read as text, not mojibake"
    assert submitted == DAY1 + dt.timedelta(hours=10)
    assert record["comment"] == "slow, and nobody called back"
    assert json.dumps(record)  # the original record is kept whole


def test_raw_indexes_are_brin_and_an_older_warehouse_is_upgraded(db):
    """Raw's bookkeeping indexes are BRIN (a btree pair doubled a load's cost); a warehouse
    made by an earlier release, with btree indexes, gets them replaced and keeps its rows."""

    def methods(url):
        with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
            cur.execute(
                "select i.relname, am.amname from pg_index x join pg_class i on i.oid = x.indexrelid"
                " join pg_am am on am.oid = i.relam where x.indrelid = 'raw.helpdesk__tickets'::regclass"
            )
            return dict(cur.fetchall())

    _ingest(db, DAY1, DAY2)
    assert methods(db) == {"helpdesk__tickets__batch": "brin", "helpdesk__tickets__loaded": "brin"}
    with contextlib.closing(psycopg2.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("drop index raw.helpdesk__tickets__batch, raw.helpdesk__tickets__loaded")
        cur.execute("create index helpdesk__tickets__batch on raw.helpdesk__tickets (_batch_id)")
        cur.execute("create index helpdesk__tickets__loaded on raw.helpdesk__tickets (_loaded_at)")
        cur.execute("truncate ops.schema_version")
        conn.commit()
    assert methods(db) == {"helpdesk__tickets__batch": "btree", "helpdesk__tickets__loaded": "btree"}
    loaded = _count(db, "select count(*) from raw.helpdesk__tickets")
    # The next batch's schema check finds the DDL changed and upgrades; a rerun replaces its batch.
    rerun = _ingest(db, DAY1, DAY2)
    assert methods(db) == {"helpdesk__tickets__batch": "brin", "helpdesk__tickets__loaded": "brin"}
    assert _count(db, "select count(*) from raw.helpdesk__tickets") == loaded == rerun.rows_loaded
    assert _count(db, "select count(*) from raw.helpdesk__tickets where _batch_id = %s", rerun.batch_id) == loaded
