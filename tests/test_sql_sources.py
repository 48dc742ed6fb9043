"""The SQL connector on real databases: an osTicket-like helpdesk on PostgreSQL and on MariaDB.

The helpdesk keeps its tickets under its own names (``ost_ticket.number``, ``lastupdate``,
``Emergency``/``High`` priorities, ...); ``sources.yml`` maps them onto the contract. Both
databases run the same test: batches are incremental by watermark with an overlap, a rerun of
an interval loads nothing twice, a late update shows after the next run, every row read is
loaded or quarantined, and rows are streamed through a server-side cursor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import tracemalloc

import psycopg2
import pytest
import sqlalchemy as sa

from serviceloop.ingest import batch_id, ingest_batch
from serviceloop.sources import SOURCES, load_sources

UTC = dt.UTC
DAY1 = dt.datetime(2026, 6, 1, tzinfo=UTC)
DAY2, DAY3, DAY4 = (DAY1 + dt.timedelta(days=n) for n in (1, 2, 3))

CONFIG = """
sources:
  osticket:
    kind: sql
    connection: {env: OSTICKET_URL}
    overlap: 1d
    entities:
      tickets:
        table: ost_ticket
        columns:
          ticket_id: number
          created_at: created
          updated_at: lastupdate
          channel: source
          customer_id: user_id
          category: topic
          team_id: dept
          agent_id: staff
          status: state
          first_response_at: firstresponse
          resolved_at: resolved
          closed_at: closed
          reopen_count: reopened_times
          reassignment_count: transfers
          escalated: isescalated
        constants: {source_system: osticket}
        values:
          channel: {Web: web, Email: email, Phone: phone, API: api}
          priority: {Emergency: P1, High: P2, Normal: P3, Low: P4}
          status: {open: in_progress, resolved: resolved, closed: closed}
"""
PRIORITIES = ("Emergency", "High", "Normal", "Low")


def _tables() -> tuple[sa.MetaData, sa.Table]:
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)  # timestamptz on PostgreSQL, DATETIME (UTC) on MariaDB
    ticket = sa.Table(
        "ost_ticket", md,
        sa.Column("number", sa.String(20), primary_key=True),
        sa.Column("user_id", sa.String(20)),
        sa.Column("source", sa.String(10)),
        sa.Column("topic", sa.String(40)),
        sa.Column("priority", sa.String(12)),
        sa.Column("dept", sa.String(40)),
        sa.Column("staff", sa.String(40)),
        sa.Column("state", sa.String(12)),
        sa.Column("created", ts),
        sa.Column("lastupdate", ts, index=True),
        sa.Column("firstresponse", ts),
        sa.Column("resolved", ts),
        sa.Column("closed", ts),
        sa.Column("reopened_times", sa.Integer),
        sa.Column("transfers", sa.Integer),
        sa.Column("isescalated", sa.Boolean),
    )  # fmt: skip
    return md, ticket


def _ticket(rng: random.Random, number: str, updated: dt.datetime, **overrides) -> dict:
    created = updated - dt.timedelta(hours=rng.randint(3, 20))
    state = rng.choice(("open", "resolved", "closed"))
    row = {
        "number": number, "user_id": f"U{rng.randint(1, 500)}", "source": rng.choice(("Web", "Email", "Phone")),
        "topic": rng.choice(("billing", "login", "hardware")), "priority": rng.choice(PRIORITIES),
        "dept": rng.choice(("billing", "tech_support")), "staff": f"s{rng.randint(1, 9)}", "state": state,
        "created": created, "lastupdate": updated, "firstresponse": created + dt.timedelta(minutes=30),
        "resolved": updated if state != "open" else None, "closed": updated if state == "closed" else None,
        "reopened_times": rng.randint(0, 1), "transfers": rng.randint(0, 2), "isescalated": rng.random() < 0.1,
    }  # fmt: skip
    row.update(overrides)
    return row


def _day(rng: random.Random, day: dt.datetime, n: int) -> list[dict]:
    """``n`` tickets updated during ``day``; two of them break the contract once mapped."""
    rows = [_ticket(rng, f"{day:%m%d}-{i:04d}", day + dt.timedelta(minutes=10 + i * 1400 // n)) for i in range(n)]
    rows[3]["priority"] = "Urgent"  # no mapping onto P1-P4: quarantined
    rows[7]["user_id"] = None  # no customer: quarantined
    return rows


class Helpdesk:
    """The osTicket-like database on one backend, written through SQLAlchemy."""

    def __init__(self, url: str):
        self.url = url
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.md, self.ticket = _tables()
        self.md.create_all(self.engine)
        self.naive = self.engine.dialect.name != "postgresql"

    def _ts(self, row: dict) -> dict:
        if not self.naive:
            return row
        return {k: v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, dt.datetime) else v for k, v in row.items()}

    def insert(self, rows: list[dict]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.ticket.insert(), [self._ts(r) for r in rows])

    def update(self, number: str, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.ticket.update().where(self.ticket.c.number == number).values(**self._ts(values)))

    def count(self, start: dt.datetime | None, end: dt.datetime) -> int:
        wm = self.ticket.c.lastupdate
        query = sa.select(sa.func.count()).where(wm < self._ts({"t": end})["t"])
        if start is not None:
            query = query.where(wm >= self._ts({"t": start})["t"])
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()


@pytest.fixture
def osticket(monkeypatch, tmp_path):
    path = tmp_path / "sources.yml"
    path.write_text(CONFIG)
    source = load_sources(path)["osticket"]
    # The pipeline's sources are those of the file; this test's file adds the osTicket one.
    monkeypatch.setitem(SOURCES, "osticket", source)
    return source


@pytest.fixture(params=["postgresql", "mariadb"])
def helpdesk(request, fresh_db):
    url = fresh_db if request.param == "postgresql" else request.getfixturevalue("mariadb_url")
    return Helpdesk(url)


def _ingest(warehouse: str, helpdesk: Helpdesk, start: dt.datetime, end: dt.datetime):
    with contextlib.closing(psycopg2.connect(warehouse)) as conn:
        result = ingest_batch(conn, "osticket", "tickets", start, end, source_dsn=helpdesk.url)
        conn.commit()
    return result


def _one(url: str, sql: str, *args):
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def _checksum(url: str, bid: str) -> tuple[int, str]:
    """The batch's raw rows: how many, and a digest of their content (load time aside)."""
    return _one(
        url,
        """
        select count(*), md5(coalesce(string_agg(r::text, '|' order by r::text), ''))
        from (select ticket_id, updated_at, status, priority, channel, customer_id, escalated, _batch_id
              from raw.osticket__tickets where _batch_id = %s) as r
        """,
        bid,
    )


def _latest(url: str, ticket_id: str):
    return _one(
        url,
        "select status, updated_at from raw.osticket__tickets where ticket_id = %s"
        " order by updated_at desc, _loaded_at desc limit 1",
        ticket_id,
    )


def test_osticket_batches_are_incremental_idempotent_and_catch_late_updates(osticket, helpdesk, fresh_db):
    rng = random.Random(11)
    day1, day2 = _day(rng, DAY1, 40), _day(rng, DAY2, 40)
    helpdesk.insert(day1 + day2)

    # The first batch reads the whole history; every row read is loaded or quarantined.
    first = _ingest(fresh_db, helpdesk, DAY1, DAY2)
    assert first.window_start is None
    assert first.rows_read == helpdesk.count(None, DAY2) == 40
    assert (first.rows_loaded, first.rows_quarantined) == (38, 2)
    assert first.quarantine_reasons == {"customer_id_present": 1, "priority_in_vocabulary": 1}
    # The mapping put the helpdesk's names and values onto the contract's.
    row = _one(
        fresh_db,
        "select source_system, priority, channel, status, escalated from raw.osticket__tickets where ticket_id = %s",
        day1[0]["number"],
    )
    mapped_status = {"open": "in_progress", "resolved": "resolved", "closed": "closed"}[day1[0]["state"]]
    assert row == (
        "osticket", f"P{PRIORITIES.index(day1[0]['priority']) + 1}", day1[0]["source"].lower(), mapped_status,
        day1[0]["isescalated"],
    )  # fmt: skip

    # The next batch starts one day (the overlap) before the previous one ended.
    second = _ingest(fresh_db, helpdesk, DAY2, DAY3)
    assert second.window_start == DAY1.isoformat()
    assert second.rows_read == helpdesk.count(DAY1, DAY3) == 80
    assert second.rows_read == second.rows_loaded + second.rows_quarantined
    bid = batch_id("osticket", "tickets", DAY3)
    before = _checksum(fresh_db, bid)
    total = _one(fresh_db, "select count(*) from raw.osticket__tickets")[0]

    # Rerunning the interval replaces its batch: the same rows, nothing twice.
    rerun = _ingest(fresh_db, helpdesk, DAY2, DAY3)
    assert (rerun.window_start, rerun.rows_read, rerun.rows_loaded) == (
        second.window_start, second.rows_read, second.rows_loaded,
    )  # fmt: skip
    assert _checksum(fresh_db, bid) == before
    assert _one(fresh_db, "select count(*) from raw.osticket__tickets")[0] == total

    # After that batch ran: a loaded ticket changes, and a ticket stamped yesterday commits late.
    changed = day2[10]["number"]
    helpdesk.update(changed, state="closed", lastupdate=DAY3 + dt.timedelta(hours=2),
                    resolved=DAY3 + dt.timedelta(hours=1), closed=DAY3 + dt.timedelta(hours=2))  # fmt: skip
    late = _ticket(rng, "late-0001", DAY3 - dt.timedelta(hours=1), priority="High", user_id="U1")
    helpdesk.insert([late, *_day(rng, DAY3, 10)])
    third = _ingest(fresh_db, helpdesk, DAY3, DAY4)
    assert third.rows_read == helpdesk.count(DAY2, DAY4)
    assert third.rows_read == third.rows_loaded + third.rows_quarantined
    assert _latest(fresh_db, changed) == ("closed", DAY3 + dt.timedelta(hours=2))
    assert _latest(fresh_db, "late-0001")[1] == DAY3 - dt.timedelta(hours=1)
    batches = _one(
        fresh_db, "select count(*), sum(rows_read) - sum(rows_loaded) - sum(rows_quarantined) from ops.batches"
    )
    assert batches == (3, 0)


def _peak(fn) -> tuple[object, int]:
    """What ``fn`` returns, and the peak of memory allocated while it ran (bytes)."""
    tracemalloc.start()
    try:
        value = fn()
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_rows_stream_through_a_server_side_cursor(osticket, helpdesk):
    """The reader holds one chunk at a time, not the result: its memory does not grow with the table."""
    from serviceloop.extract import read_sql

    rng = random.Random(3)
    n = 20_000
    base = [_ticket(rng, f"S{i:06d}", DAY1 + dt.timedelta(seconds=i)) for i in range(n)]
    helpdesk.insert(base)
    # The reference: the same rows fetched the ordinary way, all at once.
    with helpdesk.engine.connect() as conn:
        everything, buffered = _peak(lambda: conn.execute(sa.select(helpdesk.ticket)).fetchall())
    assert len(everything) == n
    del everything

    chunks = read_sql(
        helpdesk.url,
        "ost_ticket",
        osticket.entities[0],
        None,
        DAY2,
        chunk_rows=500,
        mapping=osticket.mappings["tickets"],
    )
    try:
        first, streamed = _peak(lambda: next(chunks))
        assert len(first) == 500
        assert first["ticket_id"].tolist() == [r["number"] for r in base[:500]], "ordered by watermark and key"
        assert streamed < buffered / 4, f"first chunk took {streamed} bytes, the whole result {buffered}"
        if helpdesk.engine.dialect.name == "postgresql":
            # A named cursor: the reader's session fetches from it, chunk by chunk.
            with helpdesk.engine.connect() as conn:
                open_query = conn.execute(
                    sa.text(
                        "select query from pg_stat_activity where datname = current_database() and query like 'FETCH%'"
                    )
                ).scalar()
            assert open_query is not None and "FETCH FORWARD" in open_query
        sizes = [len(first)] + [len(c) for c in chunks]
    finally:
        chunks.close()
    assert sum(sizes) == n and max(sizes) == 500


def test_an_airflow_connection_becomes_the_url_the_reader_uses(osticket, fresh_db):
    """The embedded PostgreSQL's connection (host: its unix socket folder), as the helpdesk's is defined."""
    from airflow.sdk import Connection
    from sqlalchemy.engine import make_url

    from serviceloop.tasks import _sqlalchemy_url

    u = make_url(fresh_db)
    helpdesk = Helpdesk(fresh_db)
    helpdesk.insert(_day(random.Random(5), DAY1, 12))
    conn = Connection(
        conn_id="osticket_db", conn_type="postgres", host=u.host or u.query["host"], port=u.port or 5432,
        login=u.username, password=u.password, schema=u.database,
    )  # fmt: skip
    url = _sqlalchemy_url("osticket", conn)
    assert url.startswith("postgresql+psycopg2://")
    chunks = list(osticket.read("tickets", None, DAY2, connection=url))
    assert sum(len(c) for c in chunks) == 12
    # A type the connector has no driver for says what to set.
    with pytest.raises(ValueError, match="connection odbc_db is of type 'odbc'; set its extra \"sqlalchemy_driver\""):
        _sqlalchemy_url("osticket", Connection(conn_id="odbc_db", conn_type="odbc", host="h"))
