"""The SQL extract without pandas lands exactly the text the DataFrame reader lands.

A helpdesk table with awkward values (NULLs, blanks, Unicode whitespace, timestamps with
and without a zone, fractions of a second before 1970, years outside pandas' range, dates,
booleans as integers, text and real booleans, value maps, constants, quotes, commas, line
breaks, carriage returns, non-ASCII text) is extracted both ways, on PostgreSQL and on
MariaDB, into landing tables of the warehouse; the two tables must hold the same values,
row for row. The text stream is also shown to fail loudly when the source fails, and to
step aside for columns whose meaning only the DataFrame reader knows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
import time

import psycopg2
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from serviceloop import ingest, schema
from serviceloop.contract import ENTITIES
from serviceloop.extract import read_sql
from serviceloop.sources import load_sources
from serviceloop.sqlstream import SqlStream, stream_sql

UTC = dt.UTC
END = dt.datetime(2027, 1, 1, tzinfo=UTC)
TICKETS = ENTITIES["tickets"]

CONFIG = """
sources:
  awkward:
    kind: sql
    connection: {env: AWKWARD_URL}
    entities:
      tickets:
        table: awkward_ticket
        columns:
          ticket_id: number
          created_at: created
          updated_at: lastupdate
          channel: source
          customer_id: user_id
          category: topic
          subcategory: amount
          urgency: big
          team_id: dept
          agent_id: staff
          status: state
          first_response_at: firstresponse
          resolved_at: resolved_day
          closed_at: closed
          reopen_count: reopened_times
          reassignment_count: transfers_text
          escalated: esc_int
        constants: {source_system: ' osticket ', impact: high}
        values:
          channel: {Web: web, Email: email}
          priority: {Emergency: P1, High: P2}
          status: {open: in_progress, gone: ''}
"""


def _table(md: sa.MetaData) -> sa.Table:
    zoned = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    naive = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    return sa.Table(
        "awkward_ticket", md,
        sa.Column("number", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40)),
        sa.Column("source", sa.String(10)),
        sa.Column("topic", sa.Text),
        sa.Column("amount", sa.Numeric(10, 2)),
        sa.Column("big", sa.BigInteger),
        sa.Column("priority", sa.String(12)),
        sa.Column("dept", sa.String(40)),
        sa.Column("staff", sa.String(40)),
        sa.Column("state", sa.String(12)),
        sa.Column("created", zoned),
        sa.Column("lastupdate", zoned, nullable=False),
        sa.Column("firstresponse", naive),
        sa.Column("resolved_day", sa.Date),
        sa.Column("closed", zoned),
        sa.Column("reopened_times", sa.Integer),
        sa.Column("transfers_text", sa.String(10)),
        sa.Column("esc_int", sa.Integer),
        sa.Column("esc_bool", sa.Boolean(create_constraint=False)),
        sa.Column("esc_text", sa.String(12)),
        sa.Column("when_text", sa.String(40)),
    )  # fmt: skip


def _at(*args, tz=UTC, **kw) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz, **kw)


PLUS2 = dt.timezone(dt.timedelta(hours=2))
BASE = {
    "user_id": "U1", "source": "Web", "topic": "billing", "amount": None, "big": None, "priority": "High",
    "dept": "billing", "staff": "s1", "state": "open", "created": _at(2026, 6, 1, 8), "firstresponse": None,
    "resolved_day": None, "closed": None, "reopened_times": 0, "transfers_text": "0", "esc_int": 0,
    "esc_bool": False, "esc_text": "no", "when_text": None,
}  # fmt: skip
AWKWARD = [
    # NULLs, blanks and whitespace (Python's, not only spaces), in text, integers and booleans.
    {"user_id": None, "esc_int": None, "esc_bool": None, "esc_text": None, "reopened_times": None},
    {"user_id": "", "dept": "   ", "staff": "\u3000s2\u00a0", "esc_text": "", "transfers_text": " 2 "},
    {"user_id": " U3\t", "topic": "\n billing \r\n", "esc_text": "  ", "transfers_text": ""},
    # Booleans as integers, as words, as booleans; counts as text.
    {"esc_int": 1, "esc_bool": True, "esc_text": " Yes ", "transfers_text": "two"},
    {"esc_int": 2, "esc_text": "T", "reopened_times": 3},
    {"esc_int": 0, "esc_text": "FALSE"},
    {"esc_int": 1, "esc_text": "maybe"},
    # Value maps: mapped, kept, mapped to nothing; a value map's key with whitespace around it.
    {"source": "Email", "priority": "Emergency", "state": "gone"},
    {"source": "Fax", "priority": "Urgent", "state": " open "},
    # Text with quotes, commas, line breaks, carriage returns, backslashes; non-ASCII.
    {"topic": 'He said "hi", then left', "staff": "a,b"},
    {"topic": "line one\r\nline two\rline three", "dept": "tab\there"},
    {"topic": "账单 / Ærø / ü", "user_id": "客户-7", "staff": "\\N"},
    {"topic": '"', "dept": ","},
    # Timestamps: a zone other than UTC, fractions, before 1970, without a zone, dates.
    {"created": _at(2026, 6, 1, 10, 0, 0, 999999, tz=PLUS2), "firstresponse": dt.datetime(2026, 6, 1, 10, 30)},
    {"created": _at(1969, 12, 31, 23, 59, 59, 500000), "resolved_day": dt.date(2026, 6, 2)},
    {"firstresponse": dt.datetime(2026, 6, 1, 9, 15, 0, 123456), "closed": _at(2026, 6, 3, 0, 0, 0, 1)},
    # Outside pandas' datetime range: the DataFrame reader keeps str(value), so does the stream.
    {"created": _at(1500, 1, 1, 12, 0, 0, 250000), "closed": _at(3000, 1, 1), "resolved_day": dt.date(1600, 1, 1)},
    {"firstresponse": dt.datetime(1650, 5, 5, 5, 5, 5), "created": None},
    # Numbers as text fields.
    {"amount": 12.5, "big": 9_007_199_254_740_993},
    {"amount": -0.05, "big": -1},
    # Ends that look printable byte by byte, or are not spaces to SQL: one character, a last
    # character of two bytes, a unit separator (Python strips it), DEL (it does not).
    {"user_id": "x", "topic": "café", "dept": "billing\x1f", "staff": "\x7fs3"},
]


def _rows() -> list[dict]:
    rows = []
    for i, overrides in enumerate(AWKWARD):
        row = {**BASE, "number": f"T-{i:03d}", "lastupdate": _at(2026, 6, 1, 12) + dt.timedelta(minutes=i // 3)}
        rows.append(row | overrides)
    # Rows with the same watermark come in key order.
    rows.append({**BASE, "number": "T-000b", "lastupdate": _at(2026, 6, 1, 12)})
    return rows


def _naive_utc(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        out[k] = v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, dt.datetime) and v.tzinfo else v
    return out


@pytest.fixture(params=["postgresql", "mariadb"])
def source(request, fresh_db):
    url = fresh_db if request.param == "postgresql" else request.getfixturevalue("mariadb_url")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    md = sa.MetaData()
    table = _table(md)
    md.create_all(engine)
    rows = _rows() if request.param == "postgresql" else [_naive_utc(r) for r in _rows()]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    engine.dispose()
    return url


@pytest.fixture
def warehouse(fresh_db):
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        schema.ensure(conn)
        conn.commit()
    return fresh_db


def _mapping(tmp_path, **columns):
    path = tmp_path / "sources.yml"
    path.write_text(CONFIG)
    mapping = load_sources(path)["awkward"].mappings["tickets"]
    return dataclasses.replace(mapping, columns={**mapping.columns, **columns})


def _narrow_mapping(tmp_path):
    """Three columns of a source table; the other required fields constants."""
    constants = {
        "source_system": "s", "created_at": "2026-06-01T00:00:00+00:00", "channel": "web", "customer_id": "c",
        "priority": "P3", "team_id": "t", "status": "new", "reopen_count": "0", "reassignment_count": "0",
        "escalated": "false",
    }  # fmt: skip
    path = tmp_path / "sources.yml"
    path.write_text(
        "sources:\n  s:\n    kind: sql\n    connection: {env: X}\n    entities:\n      tickets:\n"
        "        table: awkward_ticket\n"
        "        columns: {ticket_id: number, updated_at: lastupdate, category: topic}\n"
        f"        constants: {constants}\n"
    )
    return load_sources(path)["s"].mappings["tickets"]


def _land(warehouse: str, name: str, records) -> list[tuple]:
    """Stage ``records`` (DataFrames or a stream) as a batch does; the landing table's rows."""
    with contextlib.closing(psycopg2.connect(warehouse)) as side:
        ingest.create_landing(side, name, TICKETS, commit=False)
        n = ingest.stage(side, name, TICKETS, records)
        with side.cursor() as cur:
            cur.execute(f"select * from landing.{name} order by _row_number")
            rows = cur.fetchall()
    assert n == len(rows)
    return rows


@pytest.mark.parametrize("escalated", ["esc_int", "esc_bool", "esc_text"])
def test_the_stream_lands_what_the_dataframe_reader_lands(source, warehouse, tmp_path, escalated):
    mapping = _mapping(tmp_path, escalated=escalated)
    frames = read_sql(source, "awkward_ticket", TICKETS, None, END, mapping=mapping)
    stream = stream_sql(source, "awkward_ticket", TICKETS, None, END, mapping=mapping)
    assert isinstance(stream, SqlStream), "typed columns are streamed, not read into DataFrames"
    by_frames = _land(warehouse, "by_frames", frames)
    by_stream = _land(warehouse, "by_stream", stream)
    assert len(by_stream) == len(_rows())
    for a, b in zip(by_frames, by_stream, strict=True):
        assert a == b

    # And the values are the canonical ones (the comparison above could pass on two wrong paths).
    columns = ["_row_number", *TICKETS.columns, "_origin", "_parse_error"]
    got = {r[columns.index("ticket_id")]: dict(zip(columns, r, strict=True)) for r in by_stream}
    assert [r[1] for r in by_stream][:2] == ["T-000", "T-000b"], "ordered by watermark, then key"
    assert got["T-000"]["customer_id"] is None and got["T-001"]["customer_id"] is None
    assert got["T-001"]["agent_id"] == "s2" and got["T-002"]["customer_id"] == "U3"
    assert got["T-001"]["reassignment_count"] == "2" and got["T-000"]["reopen_count"] is None
    assert got["T-000"]["source_system"] == "osticket" and got["T-000"]["impact"] == "high"
    assert (got["T-007"]["channel"], got["T-007"]["priority"], got["T-007"]["status"]) == ("email", "P1", None)
    t8 = got["T-008"]
    assert (t8["channel"], t8["priority"], t8["status"]) == ("Fax", "Urgent", "in_progress")
    assert got["T-010"]["category"] == "line one\r\nline two\rline three"
    assert got["T-011"]["category"] == "账单 / Ærø / ü" and got["T-011"]["agent_id"] == "\\N"
    assert got["T-013"]["created_at"] == "2026-06-01T08:00:00+00:00"
    assert got["T-013"]["first_response_at"] == "2026-06-01T10:30:00+00:00"
    assert got["T-014"]["created_at"] == "1969-12-31T23:59:59+00:00"
    assert got["T-014"]["resolved_at"] == "2026-06-02T00:00:00+00:00"
    assert got["T-016"]["resolved_at"] == "1600-01-01"
    assert got["T-018"]["subcategory"] == "12.50" and got["T-018"]["urgency"] == "9007199254740993"
    t20 = got["T-020"]
    assert (t20["customer_id"], t20["category"], t20["team_id"], t20["agent_id"]) == ("x", "café", "billing", "\x7fs3")
    expected_escalated = {
        "esc_int": {"T-000": None, "T-003": "true", "T-004": "2", "T-005": "false"},
        "esc_bool": {"T-000": None, "T-003": "true", "T-005": "false"},
        "esc_text": {"T-000": None, "T-001": None, "T-003": "true", "T-004": "true", "T-005": "false",
                     "T-006": "maybe"},
    }[escalated]  # fmt: skip
    assert {k: got[k]["escalated"] for k in expected_escalated} == expected_escalated


def test_a_timestamp_kept_as_text_is_left_to_the_dataframe_reader(source, tmp_path):
    """pandas' lenient ISO 8601 parser decides what a timestamp in a text column means."""
    mapping = _mapping(tmp_path, closed_at="when_text")
    assert stream_sql(source, "awkward_ticket", TICKETS, None, END, mapping=mapping) is None


def test_a_failing_source_fails_the_copy_instead_of_landing_nothing(fresh_db, warehouse, tmp_path):
    """A source that errors mid-query must not look like an empty window."""
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn, conn.cursor() as cur:
        cur.execute("create table awkward_base (number text primary key, lastupdate timestamptz not null, n int)")
        cur.execute(
            "insert into awkward_base select 'T-' || i, timestamptz '2026-06-01' + i * interval '1 s', i"
            " from generate_series(1, 1000) as i"
        )
        # Division by zero on the 500th row, inside the source's own query.
        cur.execute(
            "create view awkward_ticket as select number, lastupdate, (100 / (500 - n))::text as topic from awkward_base"
        )
        conn.commit()
    mapping = _narrow_mapping(tmp_path)
    stream = stream_sql(fresh_db, "awkward_ticket", TICKETS, None, END, mapping=mapping)
    assert stream is not None
    with pytest.raises(psycopg2.errors.DivisionByZero):
        _land(warehouse, "failed_source", stream)


def test_a_failing_landing_copy_stops_the_source_stream(fresh_db, warehouse, tmp_path):
    """The producer thread ends when the consumer fails: nothing hangs on a full pipe."""
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn, conn.cursor() as cur:
        cur.execute(
            "create table awkward_ticket as select 'T-' || i as number, timestamptz '2026-06-01' + i * interval '1 s'"
            " as lastupdate, repeat('x', 200) as topic from generate_series(1, 200000) as i"
        )
        conn.commit()
    mapping = _narrow_mapping(tmp_path)
    stream = stream_sql(fresh_db, "awkward_ticket", TICKETS, None, END, mapping=mapping)
    before = threading.active_count()
    with contextlib.closing(psycopg2.connect(warehouse)) as side:
        # A landing table without the columns the stream fills: its COPY fails at once.
        with side.cursor() as cur:
            cur.execute("create table landing.too_narrow (_row_number bigint)")
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.UndefinedColumn):
            ingest.stage(side, "too_narrow", TICKETS, stream)
    assert time.monotonic() - started < 60
    assert threading.active_count() <= before


def test_timestamps_the_dataframe_reader_cannot_read_are_kept_for_validation(fresh_db, warehouse, tmp_path):
    """``infinity`` and years past 9999 stop the DataFrame reader; the stream keeps them as text."""
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn, conn.cursor() as cur:
        cur.execute(
            "create table awkward_ticket (number text, lastupdate timestamptz, closed timestamptz);"
            "insert into awkward_ticket values ('T-1', '2026-06-01', 'infinity'), ('T-2', '2026-06-02', '12026-01-01');"
        )
        conn.commit()
    narrow = _narrow_mapping(tmp_path)
    mapping = dataclasses.replace(
        narrow,
        columns={"ticket_id": "number", "updated_at": "lastupdate", "closed_at": "closed"},
        constants={**narrow.constants, "category": "c"},
    )
    with pytest.raises(Exception, match="(?i)infinity|year"):
        list(read_sql(fresh_db, "awkward_ticket", TICKETS, None, END, mapping=mapping))
    rows = _land(warehouse, "beyond", stream_sql(fresh_db, "awkward_ticket", TICKETS, None, END, mapping=mapping))
    closed = TICKETS.columns.index("closed_at") + 1
    assert [r[closed] for r in rows] == ["infinity", "12026-01-01 00:00:00+00:00"]
