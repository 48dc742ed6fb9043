"""Load one batch: one source entity over one data interval, extracted, validated, loaded.

A batch is atomic and idempotent. Its id is derived from the source, the entity and the
interval, and everything it writes (raw rows, quarantined rows, its registry entry) is
replaced in one transaction, so a retry or a rerun of the interval gives the same raw layer
and nothing half-loaded is ever visible.

The extraction window is the watermark: it starts where the previous batch of the same
entity ended, minus the source's overlap (late updates committed after that batch read
the source), and ends at the interval's end. A rerun reuses the window it had the first
time. The first batch of an entity reads the source's whole history.

Validation runs where the data is. The extracted chunks are ``COPY``'d as text into an
unlogged table ``landing.<table>__<hash>`` (committed on a connection of its own, so that
Great Expectations, which opens its own, sees it); GX validates that table in PostgreSQL
(``serviceloop.validation``) and says which rules failed; the rows that break them are
found by SQL into a temporary table, and ``insert ... select`` moves the passing rows into
``raw`` and the others into ``quarantine`` in the batch's transaction. No batch is ever
held in pandas: a chunk at a time passes through on its way to ``landing``.

A row that breaks only a ``hold`` rule (an event or survey whose ticket has not arrived) is
quarantined as *held*; every later batch of its entity, and every ticket batch, checks the
held rows again and loads those whose ticket is now known, into their own batch (whose
counts move from quarantined to loaded), so read = loaded + quarantined stays true.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from serviceloop import schema
from serviceloop.contract import ENTITIES, Entity
from serviceloop.extract import ORIGIN, PARSE_ERROR, ContractError
from serviceloop.sources import SOURCES, raw_table
from serviceloop.sqlstream import SqlStream, copy_into_landing
from serviceloop.validation import (
    PARSE_ERROR_RULE,
    ROW_NUMBER,
    UNEXPECTED_ROWS,
    Verdict,
    load,
    render_query,
    sqlalchemy_url,
    validator,
)

log = logging.getLogger(__name__)

EXTRA_COLUMNS = (ORIGIN, PARSE_ERROR)


class BatchHealthError(ContractError):
    """The batch as a whole looks wrong (row count, freshness): nothing of it is loaded."""


@dataclass
class BatchResult:
    batch_id: str
    source: str
    entity: str
    window_start: str | None
    window_end: str
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    rows_held: int = 0
    rows_released: int = 0
    data_docs: str | None = None
    # Where the batch's time went: reading the source into its landing table; GX's verdict and
    # finding the rows it rejected; rendering its Data Docs page; moving the rows into raw and
    # quarantine (with the registry and the held rows' release).
    extract_seconds: float = 0.0
    validation_seconds: float = 0.0
    data_docs_seconds: float = 0.0
    load_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def batch_id(source: str, entity: str, interval_end: dt.datetime) -> str:
    return f"{source}__{entity}__{interval_end.astimezone(dt.UTC):%Y%m%dT%H%M%S}"


def landing_table(table: str, key: str) -> str:
    """The landing table of a batch (or a replay) of ``table``: a stable name, so a rerun
    finds and drops what a failed run left."""
    return f"{table[:40]}__{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _window_start(cur, bid: str, source, entity: str, interval_end: dt.datetime) -> dt.datetime | None:
    cur.execute("select window_start from ops.batches where batch_id = %s", (bid,))
    row = cur.fetchone()
    if row is not None:
        return row[0]
    cur.execute(
        "select max(window_end) from ops.batches where source = %s and entity = %s and window_end <= %s",
        (source.name, entity, interval_end),
    )
    (previous_end,) = cur.fetchone()
    return None if previous_end is None else previous_end - source.overlap


def _chunks(conn, source, entity_name: str, bid: str, window_start, window_end, source_dsn, drop_root):
    """The source's records for the window: a SQL source's text stream when its columns allow one,
    else its reader's DataFrames (a file drop records what it read in ``conn``'s transaction)."""
    stream = getattr(source, "stream", None)
    if stream is not None:
        text = stream(entity_name, window_start, window_end, connection=source_dsn)
        if text is not None:
            return text
    return source.read(
        entity_name, window_start, window_end,
        connection=source_dsn, drop_root=drop_root, warehouse=conn, batch_id=bid,
    )  # fmt: skip


# --- landing --------------------------------------------------------------------------------


@contextlib.contextmanager
def side_connection(conn):
    """A second connection to ``conn``'s database, for what must be committed on its own."""
    import psycopg2

    side = psycopg2.connect(**conn.get_dsn_parameters(), password=conn.info.password)
    try:
        yield side
    finally:
        side.close()


def landing_columns(entity: Entity) -> list[str]:
    return [*entity.columns, *EXTRA_COLUMNS]


def create_landing(side, table: str, entity: Entity, extra: str = "", *, commit: bool = True) -> None:
    """A new landing table (unlogged: it is rebuilt from the source if lost). Without ``commit``,
    it stays in ``side``'s transaction, and ``stage`` fills it with ``COPY ... FREEZE``.

    A row's number is its place in the batch, from 0, drawn from the table's own sequence in
    the order ``stage``'s ``COPY`` brings the rows: a SQL source's in its order by watermark and
    key, a reader's in the order it read them. (A replay, which inserts, gives its own.)
    """
    cols = ", ".join(f"{c} text" for c in landing_columns(entity))
    number = f"{ROW_NUMBER} bigint generated by default as identity (minvalue 0 start with 0)"
    with side.cursor() as cur:
        cur.execute(f"drop table if exists landing.{table}")
        cur.execute(f"create unlogged table landing.{table} ({number}, {cols}{extra})")
    if commit:
        side.commit()


def stage(side, table: str, entity: Entity, chunks: Iterator[pd.DataFrame] | SqlStream) -> int:
    """``COPY`` the records into ``landing.<table>`` (created in ``side``'s open transaction,
    which numbers them as they arrive); commits, and returns how many.

    ``chunks`` is a reader's DataFrames, or a SQL source's ``SqlStream``, which copies its
    canonical text straight from the source.
    """
    if isinstance(chunks, SqlStream):
        with side.cursor() as cur:
            read = chunks.copy_into(cur, table)
        side.commit()
        return read
    columns = landing_columns(entity)
    read = 0
    with side.cursor() as cur:
        for chunk in chunks:
            if not len(chunk):
                continue
            frame = chunk.reindex(columns=columns)
            buf = io.StringIO()
            # Unquoted empty fields are NULL in COPY's csv format; None renders as one. \r\n ends
            # a record, so a value holding a bare \r is quoted (COPY refuses it unquoted).
            frame.to_csv(buf, index=False, header=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
            buf.seek(0)
            cur.copy_expert(copy_into_landing(table, columns), buf)
            read += len(frame)
    side.commit()
    return read


def drop_landing(conn, table: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"drop table if exists landing.{table}")


def discard_landing(side, table: str) -> None:
    """After a failed batch: drop its landing table if the connection still works.

    When the warehouse went away (a restart, a network cut) the batch's own error is what its
    log must show, not this cleanup's; the next run of the batch drops the table instead.
    """
    import psycopg2

    try:
        side.rollback()
        drop_landing(side, table)
        side.commit()
    except psycopg2.Error as exc:
        log.warning("landing.%s is left for the next run of the batch to drop: %s", table, exc)


# --- from verdict to rows -------------------------------------------------------------------


def collect_failures(cur, verdict: Verdict) -> dict[str, int]:
    """The failing rows of every failed rule into ``pg_temp.failed``; returns the warning counts.

    A record the reader could not parse is judged by that alone: the other rules' verdicts on
    its fields say nothing more.
    """
    cur.execute(
        "create temporary table if not exists failed (row_number bigint, rule text, severity text) on commit drop"
    )
    cur.execute("truncate failed")
    for f in verdict.failed:
        # The query is GX's or the suite's SQL text: a literal % in it is not a placeholder.
        query = f.query.replace("%", "%%")
        cur.execute(
            f"insert into failed select distinct broken.{ROW_NUMBER}, %s, %s from ({query}) as broken",
            (f.rule, f.severity),
        )
    cur.execute(
        "delete from failed where rule <> %s and row_number in (select row_number from failed where rule = %s)",
        (PARSE_ERROR_RULE, PARSE_ERROR_RULE),
    )
    cur.execute("select rule, count(*) from failed where severity = 'warning' group by rule order by rule")
    return dict(cur.fetchall())


def literal(value: str) -> str:
    """A SQL string literal, quoted by the driver."""
    from psycopg2.extensions import adapt

    return adapt(value).getquoted().decode()


def _casts(entity: Entity, alias: str) -> str:
    return ", ".join(f"{alias}.{f.name}::{f.type}" for f in entity.fields)


def _record_sql(alias: str) -> str:
    # The record as read: contract columns (nulls kept), origin and parse error when present.
    return (
        f"jsonb_strip_nulls(jsonb_build_object('{ORIGIN}', {alias}.{ORIGIN}, '{PARSE_ERROR}', {alias}.{PARSE_ERROR}))"
        f" || (to_jsonb({alias}) - '{ROW_NUMBER}' - '{ORIGIN}' - '{PARSE_ERROR}' - '_batch_id' - '_quarantined_row')"
    )


def rejected_any(cur) -> bool:
    """Whether an error or hold rule rejected any row (``pg_temp.failed``, see ``collect_failures``)."""
    cur.execute("select exists (select from failed where severity in ('error', 'hold'))")
    return cur.fetchone()[0]


def load_rows(cur, entity: Entity, table: str, landing: str, batch_expr: str, *, rejected: bool = True) -> int:
    """Insert the landing rows no error or hold rule rejected into ``raw``; returns how many.

    ``rejected=False`` (no row was) inserts them all without looking each up in ``failed``.
    """
    keep = f"""
        where not exists (
            select from failed
            where failed.row_number = staged.{ROW_NUMBER} and failed.severity in ('error', 'hold')
        )
    """
    cur.execute(
        f"""
        insert into raw.{table} ({", ".join(entity.columns)}, _batch_id, _loaded_at)
        select {_casts(entity, "staged")}, {batch_expr}, now()
        from landing.{landing} as staged
        {keep if rejected else ""}
        """
    )
    return cur.rowcount


def quarantine_rows(cur, table: str, landing: str, batch_expr: str, row_expr: str) -> None:
    """Insert the rejected landing rows into ``quarantine``: held if only ``hold`` rules failed.

    A row that breaks an error rule is kept for that; whether its ticket is known is asked
    again when it is replayed.
    """
    cur.execute(
        f"""
        insert into quarantine.{table} (batch_id, row_number, record, failed_rules, status, origin)
        select {batch_expr}, {row_expr}, {_record_sql("staged")}, rejected.rules,
            case when rejected.errors > 0 then 'quarantined' else 'held' end, staged.{ORIGIN}
        from landing.{landing} as staged
        inner join (
            select row_number,
                coalesce(
                    array_agg(rule order by rule) filter (where severity = 'error'), array_agg(rule order by rule)
                ) as rules,
                count(*) filter (where severity = 'error') as errors
            from failed
            where severity in ('error', 'hold')
            group by row_number
        ) as rejected on rejected.row_number = staged.{ROW_NUMBER}
        """
    )


def _reasons(cur, table: str, bid: str) -> tuple[dict[str, int], int, int]:
    cur.execute(
        f"""
        select rule, count(*) from quarantine.{table}, unnest(failed_rules) as rule
        where batch_id = %s group by rule order by rule
        """,
        (bid,),
    )
    reasons = dict(cur.fetchall())
    cur.execute(
        f"select count(*), count(*) filter (where status = 'held') from quarantine.{table} where batch_id = %s",
        (bid,),
    )
    quarantined, held = cur.fetchone()
    return reasons, quarantined, held


# --- batch health ---------------------------------------------------------------------------


def check_batch_health(cur, source: str, entity_name: str, bid: str, interval_end: dt.datetime, rows: int, landing):
    """Stop the batch if its row count or its newest record is out of line; the message says how."""
    checks = load(entity_name).batch
    where = f"{source} {entity_name} batch {bid}"
    cur.execute(
        """
        select count(*), percentile_cont(0.5) within group (order by rows_read)
        from (
            select rows_read from ops.batches
            where source = %s and entity = %s and batch_id <> %s and interval_end < %s
            order by interval_end desc limit %s
        ) as previous
        """,
        (source, entity_name, bid, interval_end, checks.trailing_batches),
    )
    history, median = cur.fetchone()
    if history >= checks.min_batches and median is not None and median >= checks.min_median:
        if rows < median * checks.collapse_below:
            raise BatchHealthError(
                f"{where}: row count collapsed: {rows} rows read, the median of the previous {history} batches"
                f" is {median:g} (below {checks.collapse_below:g} x stops the batch)"
            )
        if rows > median * checks.explode_above:
            raise BatchHealthError(
                f"{where}: row count exploded: {rows} rows read, the median of the previous {history} batches"
                f" is {median:g} (above {checks.explode_above:g} x stops the batch)"
            )
    if checks.freshness_column and rows:
        newest = _newest(cur, landing, checks.freshness_column)
        cur.execute("select %s::timestamptz - %s::interval", (interval_end, checks.max_age))
        (cutoff,) = cur.fetchone()
        if newest is not None and newest < cutoff:
            raise BatchHealthError(
                f"{where}: stale: the newest record's {checks.freshness_column} is {newest.isoformat()},"
                f" more than {checks.max_age}"
                f" before the interval's end {interval_end.isoformat()}"
            )


# A timestamp in the canonical text form; every reader renders the valid ones so.
CANONICAL_LIKE = "____-__-__T__:__:__+00:00"


def _newest(cur, landing: str, col: str):
    """The newest valid timestamp of a landing column.

    Casting every value (``ops.to_timestamptz``) cost seconds per million rows. Values in the
    canonical form sort as text in time order (fixed width, one offset), so their newest is
    their greatest in the "C" collation, checked once; only the other values are cast. If that
    greatest one is not a valid timestamp after all (``2026-13-45T...``), every value is cast.
    """
    cur.execute(
        f"""
        select max({col} collate "C") filter (where {col} like %(canonical)s),
            max(ops.to_timestamptz({col})) filter (where {col} not like %(canonical)s)
        from landing.{landing}
        """,
        {"canonical": CANONICAL_LIKE},
    )
    greatest, other = cur.fetchone()
    if greatest is None:
        return other
    cur.execute("select ops.to_timestamptz(%s)", (greatest,))
    (newest,) = cur.fetchone()
    if newest is None:
        cur.execute(f"select max(ops.to_timestamptz({col})) from landing.{landing}")
        return cur.fetchone()[0]
    return newest if other is None else max(newest, other)


# --- held rows ------------------------------------------------------------------------------


def held_lock(table: str) -> str:
    """The advisory lock of a table's held rows (its batches, releases and replays take it)."""
    return f"serviceloop.held.{table}"


def hold_rules(entity_name: str):
    suite = load(entity_name)
    return suite, [r for r in suite.rules if r.severity == "hold" and r.type == UNEXPECTED_ROWS]


def release_held(cur, source_name: str, entity_name: str) -> int:
    """Load the held rows of a table whose hold rules now pass; returns how many were loaded.

    The held records are checked on this connection, not through GX: a ticket batch calls
    this before it commits, and only its own transaction sees the tickets it has just loaded.
    """
    suite, rules = hold_rules(entity_name)
    if not rules:
        return 0
    entity = ENTITIES[entity_name]
    table = raw_table(source_name, entity_name)
    # Held rows are checked by one writer at a time, in the order their batches commit.
    cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (held_lock(table),))
    cur.execute(f"select count(*) from quarantine.{table} where status = 'held'")
    if cur.fetchone()[0] == 0:
        return 0
    cols = ", ".join(f"{c} text" for c in landing_columns(entity))
    cur.execute("drop table if exists pg_temp.held")
    cur.execute(
        f"""
        create temporary table held on commit drop as
        select q.batch_id as _batch_id, q.row_number as {ROW_NUMBER}, r.*
        from quarantine.{table} as q
        cross join lateral jsonb_to_record(q.record) as r ({cols})
        where q.status = 'held'
        """
    )
    still = " union ".join(
        f"select {ROW_NUMBER}, _batch_id from ({render_query(r, suite, 'held')}) as x" for r in rules
    )
    cur.execute(
        f"""
        create temporary table released on commit drop as
        select _batch_id, {ROW_NUMBER} from held
        except
        select _batch_id, {ROW_NUMBER} from ({still}) as still_held
        """
    )
    cur.execute(
        f"""
        insert into raw.{table} ({", ".join(entity.columns)}, _batch_id, _loaded_at)
        select {_casts(entity, "h")}, h._batch_id, now()
        from held as h
        inner join released as r on r._batch_id = h._batch_id and r.{ROW_NUMBER} = h.{ROW_NUMBER}
        """
    )
    n = cur.rowcount
    cur.execute(
        f"""
        delete from quarantine.{table} as q using released as r
        where q.batch_id = r._batch_id and q.row_number = r.{ROW_NUMBER}
        """
    )
    move_counts(cur, "released")
    cur.execute("drop table released")
    cur.execute("drop table held")
    if n:
        log.info("%s: %d held row(s) loaded, their ticket has arrived", table, n)
    return n


def move_counts(cur, moved: str) -> None:
    """Rows of ``moved`` (``_batch_id``) went from quarantine to raw: their batches' counts follow."""
    cur.execute(
        f"""
        update ops.batches as b
        set rows_loaded = b.rows_loaded + m.n, rows_quarantined = b.rows_quarantined - m.n
        from (select _batch_id, count(*) as n from {moved} group by _batch_id) as m
        where b.batch_id = m._batch_id
        """
    )


def release_children(cur, source_name: str, entity_name: str) -> int:
    """After tickets were loaded: release what every other table held for want of them."""
    if entity_name != "tickets":
        return 0
    released = 0
    for source in SOURCES.values():
        for entity in source.entities:
            if entity.name != "tickets":
                released += release_held(cur, source.name, entity.name)
    return released


# --- the batch ------------------------------------------------------------------------------


def ingest_batch(
    conn,
    source_name: str,
    entity_name: str,
    interval_start: dt.datetime,
    interval_end: dt.datetime,
    *,
    source_dsn: str | None = None,
    drop_root: Path | None = None,
    batch_key: str | None = None,
) -> BatchResult:
    """Extract, validate and load one batch inside the caller's transaction on ``conn``.

    ``batch_key`` names a batch that is not an interval's (an import, by its file's checksum):
    loading the same key again replaces that batch, as a rerun of an interval does.

    The landing table is created and filled on a second connection (committed, so GX sees
    it) and dropped in ``conn``'s transaction; if that rolls back, the next run of the batch
    drops it.
    """
    source = SOURCES[source_name]
    entity = ENTITIES[entity_name]
    table = raw_table(source_name, entity_name)
    bid = batch_id(source_name, entity_name, interval_end) if batch_key is None else f"{table}__{batch_key}"
    landing = landing_table(table, bid)
    with side_connection(conn) as side:
        # The schema is committed on its own: GX's connection reads the tables it creates.
        schema.ensure(side)
        side.commit()
        with conn.cursor() as cur:
            # Two runs of the same batch (a retry racing a manual rerun) must not interleave.
            cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (bid,))
            if hold_rules(entity_name)[1]:
                # Held rows are checked by one writer at a time: taken before this batch writes
                # anything, so a ticket batch releasing them never waits on a row this one holds.
                cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (held_lock(table),))
            window_start = _window_start(cur, bid, source, entity_name, interval_end)
        result = BatchResult(
            bid, source_name, entity_name, window_start.isoformat() if window_start else None, interval_end.isoformat()
        )
        create_landing(side, landing, entity, commit=False)
        started = time.perf_counter()
        try:
            chunks = _chunks(conn, source, entity_name, bid, window_start, interval_end, source_dsn, drop_root)
            result.rows_read = stage(side, landing, entity, chunks)
            if getattr(source, "checks_batch_health", True):
                with side.cursor() as cur:
                    check_batch_health(cur, source_name, entity_name, bid, interval_end, result.rows_read, landing)
            side.commit()
            result.extract_seconds = time.perf_counter() - started
            verdict, validated = Verdict(), 0.0
            if result.rows_read:
                started = time.perf_counter()
                batch_validator = validator(entity_name, sqlalchemy_url(conn))
                built = time.perf_counter()
                verdict = batch_validator.validate(landing, bid)
                # Validation is building the validator (importing GX, once per process), GX's
                # verdict and finding the rows it rejected; rendering the Data Docs page is not.
                validated = built - started + verdict.seconds
                result.data_docs_seconds = time.perf_counter() - built - verdict.seconds
        except BaseException:
            discard_landing(side, landing)
            raise
    result.data_docs = str(verdict.data_docs) if verdict.data_docs else None
    with conn.cursor() as cur:
        started = time.perf_counter()
        result.warnings = collect_failures(cur, verdict)
        result.validation_seconds = validated + time.perf_counter() - started
        started = time.perf_counter()
        cur.execute(f"delete from raw.{table} where _batch_id = %s", (bid,))
        cur.execute(f"delete from quarantine.{table} where batch_id = %s", (bid,))
        rejected = rejected_any(cur)
        result.rows_loaded = load_rows(cur, entity, table, landing, literal(bid), rejected=rejected)
        if rejected:
            quarantine_rows(cur, table, landing, literal(bid), f"staged.{ROW_NUMBER}")
        result.quarantine_reasons, result.rows_quarantined, result.rows_held = _reasons(cur, table, bid)
        if result.rows_read != result.rows_loaded + result.rows_quarantined:
            raise AssertionError(f"{bid}: read {result.rows_read} != loaded + quarantined")
        cur.execute(f"select max({entity.watermark}) from raw.{table} where _batch_id = %s", (bid,))
        (max_watermark,) = cur.fetchone()
        if not isinstance(max_watermark, dt.datetime):
            max_watermark = None
        cur.execute(
            """
            insert into ops.batches (batch_id, source, entity, interval_start, interval_end, window_start,
                window_end, rows_read, rows_loaded, rows_quarantined, max_watermark, loaded_at, data_docs)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s)
            on conflict (batch_id) do update set
                rows_read = excluded.rows_read, rows_loaded = excluded.rows_loaded,
                rows_quarantined = excluded.rows_quarantined, max_watermark = excluded.max_watermark,
                loaded_at = excluded.loaded_at, data_docs = excluded.data_docs
            """,
            (
                bid, source_name, entity_name, interval_start, interval_end, window_start, interval_end,
                result.rows_read, result.rows_loaded, result.rows_quarantined, max_watermark, result.data_docs,
            ),
        )  # fmt: skip
        drop_landing(conn, landing)
        # Held rows (of earlier batches, or this one's if their ticket arrived meanwhile) and
        # other tables' rows held for the tickets this batch loaded get their chance here.
        result.rows_released = release_held(cur, source_name, entity_name) + release_children(
            cur, source_name, entity_name
        )
        result.load_seconds = time.perf_counter() - started
    log.info(
        "%s: read %d, loaded %d, quarantined %d (held %d) %s; released %d held row(s);"
        " extract %.1f s, validation %.1f s, Data Docs %.1f s, load %.1f s",
        bid, result.rows_read, result.rows_loaded, result.rows_quarantined, result.rows_held,
        result.quarantine_reasons or "", result.rows_released,
        result.extract_seconds, result.validation_seconds, result.data_docs_seconds, result.load_seconds,
    )  # fmt: skip
    if result.data_docs:
        log.info("%s: Great Expectations Data Docs: %s", bid, result.data_docs)
    return result
