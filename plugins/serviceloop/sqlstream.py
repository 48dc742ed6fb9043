"""Stream a SQL source's records into a landing table as canonical text, without pandas.

The DataFrame reader (``serviceloop.extract.read_sql``) builds a pandas frame per chunk and
renders it; on a history of a million tickets that costs more than the rest of the load.
This path moves the same records from the source's cursor into the warehouse's
``COPY landing.<table> FROM STDIN`` in bounded blocks, and computes the canonical text form
on the way:

- **PostgreSQL**: the canonical text is computed by the source server itself, in one
  ``COPY (select ... where <window> order by <watermark>, <key>) TO STDOUT (FORMAT csv)``.
  A thread writes that stream into an OS pipe while the batch's connection reads it into the
  landing ``COPY``; the pipe's buffers are the only rows in this process (a few MB).
- **MySQL / MariaDB**: the rows come from an unbuffered (server-side) cursor a block at a
  time and are rendered per value by the same functions the DataFrame reader applies
  (``_text``, ``_bool_text``), written with the ``csv`` module.

The canonical text is the DataFrame reader's, value for value (``tests/test_sql_stream.py``
compares both paths on PostgreSQL and MariaDB): ISO 8601 UTC timestamps
(``YYYY-MM-DDTHH:MM:SS+00:00``, fractions dropped; a column without a zone holds UTC), booleans
``true``/``false`` (also from integers 1/0 and the words of ``BOOL_WORDS``), text stripped of
whitespace as Python's ``str.strip`` defines it, blank as NULL, the mapping's constants and
value maps. Where the DataFrame path is limited by pandas, the source's value is kept as it
did (a timestamp outside pandas' range 1677-09-21 .. 2262-04-11 keeps its ``str()`` form);
where it cannot read a value at all, this path still does: ``infinity`` and years outside
1..9999 are kept as PostgreSQL prints them (the DataFrame path fails the batch on them), and
validation rejects them either way. One difference is left: a boolean word with non-ASCII
letters in a PostgreSQL text column is lower-cased by the database's collation, not Python's
(it is rejected either way; only its quarantined text may differ).

This path serves the column types whose rendering it matches exactly. A timestamp field read
from a text column (pandas' lenient ISO 8601 parser decides what it means), a PostgreSQL
``real``/``double precision`` column (Python and PostgreSQL print floats differently), or a
type neither knows (JSON, arrays, intervals) make the batch use the DataFrame reader; the
log says which column.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import fcntl
import io
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from serviceloop.contract import BOOLEAN, TIMESTAMP, Entity
from serviceloop.extract import BOOL_WORDS, ContractError, _bool_text, _text, sql_columns, sql_engine
from serviceloop.sources import EntityMapping

log = logging.getLogger(__name__)

FETCH_ROWS = 10_000  # rows per fetch from an unbuffered MySQL cursor
BLOCK_BYTES = 1 << 20  # CSV text handed to COPY at a time
PIPE_BYTES = 1 << 20
# What Python's str.strip() removes (str.isspace), so that PostgreSQL's btrim strips the same.
WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
# pandas' datetime64[ns] range, to the microsecond: outside it the DataFrame reader keeps str(value).
PANDAS_MIN = dt.datetime(1677, 9, 21, 0, 12, 43, 145225)
PANDAS_MAX = dt.datetime(2262, 4, 11, 23, 47, 16, 854775)
CANONICAL_SQL = 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'

# Source column kinds, from SQLAlchemy's reflected types.
TEXTUAL, INTEGRAL, DECIMAL, FLOATING, LOGICAL, DATETIME, ZONED, DATE = (
    "text", "integer", "numeric", "float", "boolean", "datetime", "datetime with zone", "date",
)  # fmt: skip


class NeedsFrames(Exception):
    """This source's columns need the DataFrame reader (the message says which and why)."""


def column_kind(sa_type) -> str | None:
    import sqlalchemy as sa

    for cls, kind in (
        (sa.Boolean, LOGICAL), (sa.Integer, INTEGRAL), (sa.Float, FLOATING), (sa.Numeric, DECIMAL),
        (sa.DateTime, DATETIME), (sa.Date, DATE), (sa.String, TEXTUAL), (sa.Uuid, TEXTUAL),
    ):  # fmt: skip
        if isinstance(sa_type, cls):
            return ZONED if kind == DATETIME and getattr(sa_type, "timezone", False) else kind
    return None


def _supported(field_type: str, kind: str | None, dialect: str) -> bool:
    if kind is None:
        return False
    if field_type == TIMESTAMP:
        return kind in (DATETIME, ZONED, DATE)
    if kind in (DATETIME, ZONED, DATE):
        return False
    # PostgreSQL prints floats in a form of its own; in Python the MySQL path renders them as pandas does.
    return not (kind == FLOATING and dialect == "postgresql")


@dataclass
class Plan:
    """What one window's extract selects: each contract field from a source column, or a constant."""

    table: str
    schema: str | None
    selected: list[tuple[object, str, str]]  # (contract field, actual source column, its kind)
    constants: dict[str, str | None]  # contract field -> its canonical value
    watermark: str
    key: str

    @property
    def columns(self) -> list[str]:
        """The landing columns the stream fills, in its order (the landing numbers the rows)."""
        return [*(f.name for f, _, _ in self.selected), *self.constants]


def plan(conn, table: str, entity: Entity, mapping: EntityMapping) -> Plan:
    """Resolve the mapping against the source table's columns; ``NeedsFrames`` if a type is not served."""
    import sqlalchemy as sa

    from serviceloop.extract import map_to_contract

    schema_name, _, name = table.rpartition(".")
    try:
        reflected = sa.inspect(conn).get_columns(name, schema_name or None)
    except sa.exc.NoSuchTableError:
        raise ContractError(f"table {table}: not found in the source database") from None
    types = {c["name"]: c["type"] for c in reflected}
    present = {c["name"].lower(): c["name"] for c in reflected}
    fields, watermark, key = sql_columns(entity, mapping, table, present)
    dialect = conn.dialect.name
    selected = []
    for f, actual in fields:
        kind = column_kind(types[actual])
        if not _supported(f.type, kind, dialect):
            raise NeedsFrames(
                f"table {table}: column {actual} ({types[actual]}) for the {f.type} field {f.name}"
                " is read through the DataFrame reader"
            )
        selected.append((f, actual, kind))
    constants = {}
    if mapping.constants:
        import pandas as pd

        # The constants' canonical form, as the DataFrame reader renders and maps them (once per batch).
        one = map_to_contract(pd.DataFrame(index=[0]), entity, mapping).iloc[0]
        constants = {f: (None if one[f] is None or one[f] == "" else one[f]) for f in mapping.constants}
    return Plan(name, schema_name or None, selected, constants, watermark, key)


# --- PostgreSQL: the source renders, a pipe carries ---------------------------------------


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pg_expression(field, column: str, kind: str) -> str:
    """The canonical text of one source column for one contract field, in PostgreSQL SQL."""
    x = column
    if field.type == TIMESTAMP:
        utc = f"({x} at time zone 'UTC')" if kind == ZONED else x
        if kind == DATE:
            low, high, outside = "'1677-09-22'::date", "'2262-04-11'::date", f"to_char({x}, 'YYYY-MM-DD')"
        else:
            low, high = (f"{_literal(str(b))}::timestamp" for b in (PANDAS_MIN, PANDAS_MAX))
            # str(datetime): microseconds only when there are some; an offset when it has a zone.
            outside = (
                f"to_char({utc}, 'YYYY-MM-DD HH24:MI:SS')"
                f" || case when to_char({utc}, 'US') <> '000000' then to_char({utc}, '.US') else '' end"
            )
            if kind == ZONED:
                outside += " || '+00:00'"
        # An infinite value fails the range test; it is told apart only then, so the common case costs less.
        return (
            f"case when {utc} between {low} and {high} then to_char({utc}, {_literal(CANONICAL_SQL)})"
            f" when not isfinite({x}) then {x}::text else {outside} end"
        )
    if kind == LOGICAL:
        yes, no = ("'true'", "'false'") if field.type == BOOLEAN else ("'True'", "'False'")
        return f"case when {x} then {yes} when not {x} then {no} end"
    if kind == TEXTUAL:
        text = _stripped(f"{x}::text")
        if field.type == BOOLEAN:
            lowered = f"lower({text})"
            words = " ".join(f"when {_literal(k)} then {_literal(v)}" for k, v in BOOL_WORDS.items())
            return f"nullif(case {lowered} {words} else {lowered} end, '')"
        return _stripped(f"{x}::text", blank_is_null=True)
    text = f"{x}::text" if kind == INTEGRAL else f"case when {x} = 'NaN' then null else {x}::text end"
    if field.type == BOOLEAN:
        return f"case {text} when '1' then 'true' when '0' then 'false' else {text} end"
    return text


def _stripped(x: str, *, blank_is_null: bool = False) -> str:
    """``x`` stripped as ``str.strip`` strips (and NULL if that leaves nothing, with ``blank_is_null``).

    Trimming with all of Unicode's spaces costs a comparison per space and end; a value that
    starts and ends in printable ASCII (nearly all) has nothing to trim and is not blank, which
    its first character and its last byte tell. This runs on every text value of every row
    extracted, so each is read once (``between`` would evaluate its operand twice), and the end
    is read as the last byte, which costs less than the last character taken with ``right``
    (a PostgreSQL server encoding is ASCII-safe: a byte below 128 is an ASCII character, never
    part of another). The first test keeps an empty value away from the second, whose byte
    offset would be -1.
    """
    trimmed = f"btrim({x}, {_literal(WHITESPACE)})"
    if blank_is_null:
        trimmed = f"nullif({trimmed}, '')"
    return (
        f"case when not {_printable(f'ascii({x})')} then {trimmed}"
        f" when {_printable(f'get_byte(textsend({x}), octet_length({x}) - 1)')} then {x} else {trimmed} end"
    )


def _printable(code: str) -> str:
    """Whether a character code is printable ASCII (33 to 126), with ``code`` evaluated once."""
    return f"(abs({code} * 2 - 159) <= 93)"


def _mapped(expr: str, table: dict[str, str]) -> str:
    if not table:
        return expr
    cases = " ".join(f"when {_literal(k)} then {_literal(v)}" for k, v in table.items())
    # A mapped value that is empty reads back as NULL, as it does through the DataFrame reader's CSV.
    return f"nullif(case {expr} {cases} else {expr} end, '')"


def _pg_select(p: Plan, mapping: EntityMapping, window_start, window_end, quote) -> str:
    exprs = []
    for f, actual, kind in p.selected:
        exprs.append(_mapped(_pg_expression(f, quote(actual), kind), mapping.values.get(f.name, {})))
    exprs.extend("null::text" if v is None else _literal(v) for v in p.constants.values())
    order = f"{quote(p.watermark)}, {quote(p.key)}"
    where = f"{quote(p.watermark)} < {window_end}"
    if window_start is not None:
        where += f" and {quote(p.watermark)} >= {window_start}"
    table = f"{quote(p.schema)}.{quote(p.table)}" if p.schema else quote(p.table)
    # No row_number() here: a window over the rows would render them in one process, where
    # without it PostgreSQL's parallel workers can render their share before the ordered merge.
    return f"select {', '.join(exprs)} from {table} where {where} order by {order}"


def _pg_copy(raw, p: Plan, mapping: EntityMapping, window_start, window_end) -> Callable:
    from psycopg2 import sql

    def quote(name: str) -> str:
        return sql.Identifier(name).as_string(raw)

    def stamp(value):
        return sql.Literal(value).as_string(raw)  # a timestamptz literal

    start = stamp(window_start) if window_start is not None else None
    query = _pg_select(p, mapping, start, stamp(window_end), quote)
    copy_out = f"copy ({query}) to stdout (format csv, encoding 'UTF8')"

    def copy_into(cur, landing: str) -> int:
        read_end, write_end = os.pipe()
        with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups between the two COPYs
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        failure: list[BaseException] = []
        # Set when the landing COPY failed: the source's own failure that follows is only its echo.
        stopping = threading.Event()

        def produce():
            out = os.fdopen(write_end, "wb", buffering=BLOCK_BYTES)
            try:
                with raw.cursor() as src:
                    src.copy_expert(copy_out, out, size=BLOCK_BYTES)
            except BaseException as exc:
                if not stopping.is_set():
                    failure.append(exc)  # recorded before the pipe closes and the consumer sees its end
            finally:
                with contextlib.suppress(OSError):
                    out.close()

        producer = threading.Thread(target=produce, name=f"copy-out-{p.table}", daemon=True)
        producer.start()
        source, landed = os.fdopen(read_end, "rb", buffering=BLOCK_BYTES), None
        try:
            cur.copy_expert(copy_into_landing(landing, p.columns), source, size=BLOCK_BYTES)
        except BaseException as exc:
            landed = exc
            stopping.set()
            with contextlib.suppress(Exception):
                raw.cancel()  # a source still computing its rows stops now, not when it next writes
        finally:
            source.close()  # a producer blocked on the full pipe gets EPIPE and ends
        producer.join()
        if failure:
            # The source failed: whatever the landing COPY made of the end of its data, the
            # batch must not go on (and a truncated stream is not an empty window).
            raise failure[0] from landed
        if landed is not None:
            raise landed
        return cur.rowcount

    return copy_into


def copy_into_landing(landing: str, columns: list[str]) -> str:
    """The ``COPY`` of CSV text into a landing table created in the same transaction.

    FREEZE writes the rows as already visible to everyone: validation and the move into raw
    read them without setting hint bits on every page first.
    """
    return f"copy landing.{landing} ({', '.join(columns)}) from stdin (format csv, encoding 'UTF8', freeze)"


# --- MySQL / MariaDB: the unbuffered cursor, rendered by the DataFrame reader's functions --


def _is_nan(value) -> bool:
    return (isinstance(value, float) and math.isnan(value)) or (isinstance(value, decimal.Decimal) and value.is_nan())


def _py_text(value) -> str | None:
    if value is None or _is_nan(value):
        return None
    return _text(value) or None


def _py_bool(value) -> str | None:
    if value is None or _is_nan(value):
        return None
    return _bool_text(value) or None


def _py_timestamp(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        # What the driver could not read as a date (MySQL's zero dates): kept for validation.
        return value.strip() or None
    utc = value if isinstance(value, dt.datetime) else dt.datetime(value.year, value.month, value.day)
    if utc.tzinfo is not None:
        utc = utc.astimezone(dt.UTC).replace(tzinfo=None)
    if not PANDAS_MIN <= utc <= PANDAS_MAX:
        return str(value)
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}+00:00"


def _renderer(field, mapping: EntityMapping) -> Callable:
    render = {TIMESTAMP: _py_timestamp, BOOLEAN: _py_bool}.get(field.type, _py_text)
    table = mapping.values.get(field.name)
    if not table:
        return render

    def mapped(value, render=render, table=table):
        text = render(value)
        return None if text is None else (table.get(text, text) or None)

    return mapped


class _Blocks(io.RawIOBase):
    """A file whose reads return the bytes of an iterator of blocks: what COPY FROM reads."""

    def __init__(self, blocks: Iterator[bytes]):
        self._blocks = blocks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            self._pending = next(self._blocks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _mysql_blocks(raw, query: str, params: dict, renderers: list[Callable], constants: list) -> Iterator[bytes]:
    import pymysql.cursors

    out = io.StringIO()
    # \r\n ends a record, so a field holding either character is quoted (COPY refuses a bare \r).
    writer = csv.writer(out, lineterminator="\r\n")
    with contextlib.closing(raw.cursor(pymysql.cursors.SSCursor)) as cur:
        cur.execute(query, params)
        while rows := cur.fetchmany(FETCH_ROWS):
            for row in rows:
                writer.writerow([*(r(v) for r, v in zip(renderers, row, strict=True)), *constants])
            if out.tell() >= BLOCK_BYTES:
                yield out.getvalue().encode("utf-8")
                out.seek(0)
                out.truncate()
    if out.tell():
        yield out.getvalue().encode("utf-8")


def _mysql_copy(raw, p: Plan, mapping: EntityMapping, window_start, window_end) -> Callable:
    def quote(name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    table = f"{quote(p.schema)}.{quote(p.table)}" if p.schema else quote(p.table)
    cols = ", ".join(quote(actual) for _, actual, _ in p.selected)
    where = f"{quote(p.watermark)} < %(end)s"
    # Columns without a zone hold UTC (the session's zone is UTC): compare with UTC wall-clock values.
    params = {"end": window_end.astimezone(dt.UTC).replace(tzinfo=None)}
    if window_start is not None:
        where += f" and {quote(p.watermark)} >= %(start)s"
        params["start"] = window_start.astimezone(dt.UTC).replace(tzinfo=None)
    query = f"select {cols} from {table} where {where} order by {quote(p.watermark)}, {quote(p.key)}"
    renderers = [_renderer(f, mapping) for f, _, _ in p.selected]
    constants = list(p.constants.values())

    def copy_into(cur, landing: str) -> int:
        blocks = _mysql_blocks(raw, query, params, renderers, constants)
        cur.copy_expert(copy_into_landing(landing, p.columns), _Blocks(blocks), size=BLOCK_BYTES)
        return cur.rowcount

    return copy_into


# --- the stream -----------------------------------------------------------------------------


def _psycopg2(dsn: str) -> str:
    """The URL with psycopg2 as the PostgreSQL driver: its ``copy_expert`` streams to a file."""
    from sqlalchemy.engine import make_url

    if "://" not in dsn:
        return dsn
    url = make_url(dsn)
    if url.get_backend_name() != "postgresql" or url.drivername.endswith("+psycopg2"):
        return dsn
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


class SqlStream:
    """One window of a SQL source, ready to ``COPY`` into a landing table (``copy_into``), then closed."""

    def __init__(self, dsn: str, table: str, entity: Entity, window_start, window_end, mapping: EntityMapping):
        self.engine = sql_engine(_psycopg2(dsn))
        self.conn = self.engine.connect()
        try:
            self.plan = plan(self.conn, table, entity, mapping)
            raw = self.conn.connection.dbapi_connection
            if self.conn.dialect.name == "postgresql":
                self._copy = _pg_copy(raw, self.plan, mapping, window_start, window_end)
            elif self.conn.dialect.name in ("mysql", "mariadb"):
                self._copy = _mysql_copy(raw, self.plan, mapping, window_start, window_end)
            else:
                raise NeedsFrames(f"a {self.conn.dialect.name} source is read through the DataFrame reader")
        except BaseException:
            self.close()
            raise

    @property
    def columns(self) -> list[str]:
        return self.plan.columns

    def copy_into(self, cur, landing: str) -> int:
        """``COPY`` the window's records into ``landing.<landing>`` on ``cur``; how many rows."""
        try:
            return self._copy(cur, landing)
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        self.engine.dispose()


def stream_sql(dsn: str, table: str, entity: Entity, window_start, window_end, *, mapping: EntityMapping):
    """The window as a ``SqlStream``, or None when the source's column types need the DataFrame reader."""
    try:
        return SqlStream(dsn, table, entity, window_start, window_end, mapping)
    except NeedsFrames as why:
        log.info("%s", why)
        return None
