"""Validation in PostgreSQL: cross-column, cross-row and reference rules, batch health, held
rows, replay and Data Docs, on the embedded warehouse with real sources."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from pathlib import Path

import psycopg2
import pytest

from serviceloop import quarantine, validation
from serviceloop.contract import TICKET, TICKET_EVENT
from serviceloop.extract import ContractError
from serviceloop.ingest import batch_id, ingest_batch

UTC = dt.UTC
DAY1 = dt.datetime(2026, 6, 1, tzinfo=UTC)
DAY2 = dt.datetime(2026, 6, 2, tzinfo=UTC)
DAY3 = dt.datetime(2026, 6, 3, tzinfo=UTC)
SURVEY_HEADER = "survey_id,ticket_id,submitted_at,csat,nps,complaint,comment\n"


def _ticket(tid: str, updated: dt.datetime, **overrides) -> dict:
    row = {f.name: None for f in TICKET.fields}
    row.update(
        ticket_id=tid, source_system="helpdesk", created_at=(updated - dt.timedelta(hours=5)).isoformat(),
        updated_at=updated.isoformat(), channel="chat", customer_id="C-1", category="access", priority="P2",
        team_id="tech_support", status="resolved", first_response_at=(updated - dt.timedelta(hours=4)).isoformat(),
        resolved_at=updated.isoformat(), reopen_count="0", reassignment_count="1", escalated="false",
    )  # fmt: skip
    row.update(overrides)
    return row


def _event(eid: str, tid: str, at: dt.datetime, event_type: str = "created") -> dict:
    row = {f.name: None for f in TICKET_EVENT.fields}
    row.update(event_id=eid, ticket_id=tid, occurred_at=at.isoformat(), event_type=event_type)
    return row


def _table(url: str, name: str, columns: list[str], rows: list[dict], watermark: str) -> None:
    """A helpdesk table of text columns (but the watermark): it hands over whatever text it holds."""
    types = {c: "timestamptz" if c == watermark else "text" for c in columns}
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(f"drop table if exists {name}")
        cur.execute(f"create table {name} ({', '.join(f'{c} {t}' for c, t in types.items())})")
        for r in rows:
            cur.execute(f"insert into {name} values ({', '.join(['%s'] * len(columns))})", [r.get(c) for c in columns])
        conn.commit()


def _tickets(url: str, rows: list[dict]) -> None:
    _table(url, "hd_tickets", TICKET.columns, rows, TICKET.watermark)


def _events(url: str, rows: list[dict]) -> None:
    _table(url, "hd_ticket_events", TICKET_EVENT.columns, rows, TICKET_EVENT.watermark)


def _ingest(url: str, entity: str, start=DAY1, end=DAY2, source: str = "helpdesk", **kw):
    with contextlib.closing(psycopg2.connect(url)) as conn:
        result = ingest_batch(conn, source, entity, start, end, source_dsn=url, **kw)
        conn.commit()
    return result


def _rows(url: str, sql: str, *args) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def _quarantined(url: str, table: str) -> dict[str, tuple[list[str], str]]:
    rows = _rows(url, f"select record ->> '{'ticket_id' if 'tickets' in table else 'event_id'}', failed_rules,"
                      f" status from quarantine.{table}")  # fmt: skip
    return {key: (sorted(rules), status) for key, rules, status in rows}


def test_time_key_and_cast_rules_quarantine_rows_with_their_names(fresh_db):
    at = DAY1 + dt.timedelta(hours=12)
    _tickets(
        fresh_db,
        [
            _ticket("HD-1", at),
            _ticket("HD-2", at, resolved_at=(at - dt.timedelta(hours=6)).isoformat()),
            _ticket("HD-3", at, closed_at=(at - dt.timedelta(hours=1)).isoformat()),
            _ticket("HD-4", at, first_response_at=(at - dt.timedelta(hours=9)).isoformat()),
            _ticket("HD-5", at, reopen_count="99999999999"),
            _ticket("HD-6", at, resolved_at="2099-01-01T00:00:00+00:00", closed_at="2099-01-02T00:00:00+00:00"),
            # Two versions of HD-7: the older one is a version, not a duplicate.
            _ticket("HD-7", at - dt.timedelta(hours=1), status="in_progress", resolved_at=None),
            _ticket("HD-7", at),
            # Two different records of HD-8 at the same latest version: neither can be trusted.
            _ticket("HD-8", at, priority="P1"),
            _ticket("HD-8", at, priority="P4"),
            # The same record twice is not a conflict.
            _ticket("HD-9", at),
            _ticket("HD-9", at),
        ],
    )
    result = _ingest(fresh_db, "tickets")
    got = _quarantined(fresh_db, "helpdesk__tickets")
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (12, 5, 7)
    assert got == {
        "HD-2": (["resolved_after_created", "resolved_after_first_response"], "quarantined"),
        "HD-3": (["closed_after_resolved"], "quarantined"),
        "HD-4": (["first_response_after_created"], "quarantined"),
        "HD-5": (["reopen_count_is_non_negative_integer"], "quarantined"),
        "HD-6": (["not_in_future"], "quarantined"),
        "HD-8": (["ticket_id_unique"], "quarantined"),
    }
    assert result.quarantine_reasons["ticket_id_unique"] == 2
    loaded = _rows(fresh_db, "select ticket_id, count(*) from raw.helpdesk__tickets group by 1 order by 1")
    assert loaded == [("HD-1", 1), ("HD-7", 2), ("HD-9", 2)]


def test_an_orphan_event_is_held_and_loaded_when_its_ticket_arrives(fresh_db):
    at = DAY1 + dt.timedelta(hours=9)
    _tickets(fresh_db, [])
    _events(
        fresh_db,
        [
            _event("HD-1-01", "HD-1", at),
            _event("HD-1-02", "HD-1", at + dt.timedelta(hours=1), "assigned"),
            # Before its ticket's created event: out of order, whatever the ticket.
            _event("HD-1-03", "HD-1", at - dt.timedelta(hours=1), "triaged"),
            _event("HD-2-01", "HD-2", at),
        ],
    )
    events = _ingest(fresh_db, "ticket_events")
    assert (events.rows_read, events.rows_loaded, events.rows_quarantined, events.rows_held) == (4, 0, 4, 3)
    assert _quarantined(fresh_db, "helpdesk__ticket_events")["HD-1-03"] == (
        ["events_ordered_per_ticket"],
        "quarantined",
    )
    # HD-1 arrives (HD-2 never does): its ticket batch releases HD-1's held events.
    _tickets(fresh_db, [_ticket("HD-1", at + dt.timedelta(hours=2))])
    tickets = _ingest(fresh_db, "tickets")
    assert tickets.rows_released == 2
    assert _rows(fresh_db, "select event_id, _batch_id from raw.helpdesk__ticket_events order by 1") == [
        ("HD-1-01", events.batch_id),
        ("HD-1-02", events.batch_id),
    ]
    assert _quarantined(fresh_db, "helpdesk__ticket_events") == {
        "HD-1-03": (["events_ordered_per_ticket"], "quarantined"),
        "HD-2-01": (["event_ticket_known"], "held"),
    }
    # The event batch's counts follow its rows: read = loaded + quarantined still.
    assert _rows(
        fresh_db,
        "select rows_read, rows_loaded, rows_quarantined from ops.batches where batch_id = %s",
        events.batch_id,
    ) == [(4, 2, 2)]
    # A rerun of the event batch now finds the ticket and gives the same raw layer.
    again = _ingest(fresh_db, "ticket_events")
    assert (again.rows_loaded, again.rows_quarantined, again.rows_held) == (2, 2, 1)


def _history(url: str, entity: str, counts: list[int]) -> None:
    from serviceloop import schema

    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        schema.ensure(conn)
        for i, n in enumerate(counts):
            end = DAY1 - dt.timedelta(days=i)
            cur.execute(
                """
                insert into ops.batches (batch_id, source, entity, interval_start, interval_end, window_start,
                    window_end, rows_read, rows_loaded, rows_quarantined)
                values (%s, 'helpdesk', %s, %s, %s, %s, %s, %s, %s, 0)
                """,
                (batch_id("helpdesk", entity, end), entity, end - dt.timedelta(days=1), end,
                 end - dt.timedelta(days=1), end, n, n),
            )  # fmt: skip
        conn.commit()


def test_a_row_count_collapse_stops_the_batch_and_loads_nothing(fresh_db):
    _history(fresh_db, "tickets", [100, 120, 90, 110])
    _tickets(fresh_db, [_ticket("HD-1", DAY1 + dt.timedelta(hours=3))])
    with pytest.raises(ContractError, match=r"helpdesk tickets batch .*row count collapsed: 1 rows read.*median"):
        _ingest(fresh_db, "tickets")
    assert _rows(fresh_db, "select count(*) from raw.helpdesk__tickets") == [(0,)]
    assert _rows(fresh_db, "select count(*) from ops.batches where batch_id = %s",
                 batch_id("helpdesk", "tickets", DAY2)) == [(0,)]  # fmt: skip
    assert _rows(fresh_db, "select count(*) from pg_tables where schemaname = 'landing'") == [(0,)]


def test_a_stale_batch_and_an_explosion_stop_it(fresh_db):
    _tickets(fresh_db, [_ticket("HD-1", DAY1 - dt.timedelta(days=5))])
    with pytest.raises(ContractError, match="stale: the newest record's updated_at is 2026-05-27"):
        _ingest(fresh_db, "tickets")
    _history(fresh_db, "tickets", [20, 21, 22])
    _tickets(fresh_db, [_ticket(f"HD-{i}", DAY1 + dt.timedelta(hours=3)) for i in range(300)])
    with pytest.raises(ContractError, match="row count exploded: 300 rows read"):
        _ingest(fresh_db, "tickets")


def test_replay_after_a_suite_fix_loads_what_passes_now(fresh_db, tmp_path, monkeypatch):
    at = DAY1 + dt.timedelta(hours=9)
    _tickets(fresh_db, [_ticket("HD-1", at), _ticket("HD-2", at)])
    _ingest(fresh_db, "tickets")
    folder = tmp_path / "surveys"
    folder.mkdir()
    (folder / "surveys_20260601.csv").write_text(
        SURVEY_HEADER
        + "S-1,HD-1,2026-06-01T10:00:00+00:00,7,9,false,scale of ten\n"
        + "S-2,HD-2,2026-06-01T11:00:00+00:00,9,11,false,\n"
        + "S-3,HD-3,2026-06-01T12:00:00+00:00,5,10,false,\n"
    )
    surveys = _ingest(fresh_db, "surveys", source="survey_drop", drop_root=tmp_path)
    assert (surveys.rows_loaded, surveys.rows_quarantined, surveys.rows_held) == (0, 3, 1)
    assert surveys.quarantine_reasons == {"csat_in_range": 2, "nps_in_range": 1, "survey_ticket_known": 1}
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        listed = quarantine.counts(conn, "survey_drop__surveys")
        shown = quarantine.rows(conn, "survey_drop__surveys", rule="csat_in_range")
        every = quarantine.rows(conn, "survey_drop__surveys")
    # A row kept for a broken rule is kept for that alone; only a row with no other fault is held.
    assert {r["record"]["survey_id"]: (r["failed_rules"], r["status"]) for r in every} == {
        "S-1": (["csat_in_range"], "quarantined"),
        "S-2": (["csat_in_range", "nps_in_range"], "quarantined"),
        "S-3": (["survey_ticket_known"], "held"),
    }
    assert ("survey_drop__surveys", "quarantined", "csat_in_range", 2) in listed
    assert ("survey_drop__surveys", "held", "survey_ticket_known", 1) in listed
    assert [r["origin"] for r in shown] and all(r["record"]["survey_id"] in ("S-1", "S-2") for r in shown)

    # The survey tool moved to a 1-10 scale: the suite is fixed, the quarantine replayed.
    suites = tmp_path / "expectations"
    shutil.copytree(validation.suite_path("surveys").parent, suites)
    text = (suites / "surveys.yml").read_text()
    (suites / "surveys.yml").write_text(
        text.replace("    - '5'\n  severity", "    - '5'\n    - '6'\n    - '7'\n  severity")
    )
    monkeypatch.setenv("SERVICELOOP_EXPECTATIONS_DIR", str(suites))
    validation.forget()
    try:
        with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
            replayed = quarantine.replay(conn, "survey_drop__surveys")
            conn.commit()
    finally:
        validation.forget()
    assert (replayed.rows_replayed, replayed.rows_loaded, replayed.rows_quarantined, replayed.rows_held) == (3, 1, 2, 1)
    assert replayed.still_failing == {"csat_in_range": 1, "nps_in_range": 1, "survey_ticket_known": 1}
    assert _rows(fresh_db, "select survey_id, csat, _batch_id from raw.survey_drop__surveys") == [
        ("S-1", 7, surveys.batch_id)
    ]
    assert _rows(fresh_db, "select rows_read, rows_loaded, rows_quarantined from ops.batches where batch_id = %s",
                 surveys.batch_id) == [(3, 1, 2)]  # fmt: skip


def test_data_docs_page_is_written_and_names_the_rules(fresh_db):
    _tickets(fresh_db, [_ticket("HD-1", DAY1 + dt.timedelta(hours=2), channel="fax")])
    result = _ingest(fresh_db, "tickets")
    assert result.data_docs and result.data_docs.endswith(".html")
    page = Path(result.data_docs).read_text(encoding="utf-8")
    assert "channel_in_vocabulary" in page or "channel" in page
    assert _rows(fresh_db, "select data_docs from ops.batches where batch_id = %s", result.batch_id) == [
        (result.data_docs,)
    ]


def test_data_docs_keep_the_latest_pages_of_each_suite(fresh_db, monkeypatch):
    monkeypatch.setattr(validation, "KEEP_RESULTS", 2)
    days = [DAY1 + dt.timedelta(days=i) for i in range(4)]
    pages = []
    for start, end in zip(days, days[1:], strict=False):
        _tickets(fresh_db, [_ticket("HD-1", start + dt.timedelta(hours=2), channel="fax")])
        pages.append(Path(_ingest(fresh_db, "tickets", start, end).data_docs))
    assert [p.is_file() for p in pages] == [False, True, True]
    suite_pages = pages[-1].parents[2]
    assert sorted(suite_pages.glob("*/*/*.html")) == sorted(pages[1:])
    assert not pages[0].parent.exists()  # no empty folders left behind
    results = validation.paths().data_docs.parent / "gx-validation-results" / "tickets"
    assert len(list(results.glob("*/*/*.json"))) == 2


def test_a_rule_gx_cannot_evaluate_fails_the_batch_naming_it(fresh_db, tmp_path, monkeypatch):
    suites = tmp_path / "expectations"
    shutil.copytree(validation.suite_path("tickets").parent, suites)
    text = (suites / "tickets.yml").read_text()
    (suites / "tickets.yml").write_text(text.replace("where ops.to_timestamptz(closed_at)", "where no_such_column >"))
    monkeypatch.setenv("SERVICELOOP_EXPECTATIONS_DIR", str(suites))
    validation.forget()
    _tickets(fresh_db, [_ticket("HD-1", DAY1 + dt.timedelta(hours=2))])
    try:
        with pytest.raises(validation.SuiteError, match="rule closed_after_resolved could not be evaluated"):
            _ingest(fresh_db, "tickets")
    finally:
        validation.forget()
    assert _rows(fresh_db, "select count(*) from raw.helpdesk__tickets") == [(0,)]
    assert _rows(fresh_db, "select count(*) from pg_tables where schemaname = 'landing'") == [(0,)]


def test_a_record_the_reader_could_not_parse_is_quarantined_as_parse_error_alone(db_with_tickets, tmp_path):
    folder = tmp_path / "surveys"
    folder.mkdir()
    (folder / "surveys_20260601.csv").write_text(
        SURVEY_HEADER
        + "S-1,HD-1,2026-06-01T10:00:00+00:00,5,9,false,fine\n"
        + "S-2,HD-1,2026-06-01T11:00:00+00:00,5,9,false,one,field,too,many\n"
    )
    result = _ingest(db_with_tickets, "surveys", source="survey_drop", drop_root=tmp_path)
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (2, 1, 1)
    assert result.quarantine_reasons == {"parse_error": 1}
    ((record, origin),) = _rows(db_with_tickets, "select record, origin from quarantine.survey_drop__surveys")
    assert origin == "surveys_20260601.csv:3" == record["_origin"]
    assert record["_parse_error"], "the reader's reason is kept with the record"


@pytest.fixture
def db_with_tickets(fresh_db):
    _tickets(fresh_db, [_ticket("HD-1", DAY1 + dt.timedelta(hours=9))])
    _ingest(fresh_db, "tickets")
    return fresh_db


def test_time_rules_read_timestamps_in_the_layout_the_castable_rules_accept():
    """``ops.to_timestamptz`` (which the time rules compare with) and every timestamp's castable
    rule accept one layout: a value one of them refuses is judged by the castable rule alone."""
    from serviceloop import schema
    from serviceloop.contract import ENTITIES, ISO_TIMESTAMP_RE, TIMESTAMP

    for entity in ENTITIES.values():
        rules = {r.kwargs["column"]: r for r in validation.load_suite(entity.name)
                 if r.type == "expect_column_values_to_be_castable"}  # fmt: skip
        for f in entity.fields:
            if f.type == TIMESTAMP:
                assert rules[f.name].kwargs == {"column": f.name, "type_name": "timestamptz", "regex": ISO_TIMESTAMP_RE}
    assert f"value ~ '{ISO_TIMESTAMP_RE}'" in schema.ddl()
