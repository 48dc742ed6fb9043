"""Read records from source systems.

Every reader yields pandas DataFrames in the contract's *canonical text form*: one column
per contract field, every value a string (timestamps as ISO 8601 in UTC, booleans as
``true``/``false``) or None. Validation judges that form and ``COPY`` loads it, so a source
never needs to agree with the warehouse on types, and a value that cannot be read is kept
verbatim for the quarantine instead of being lost in a cast.

File drops (CSV, JSON Lines, Parquet) add two columns to that form: ``_origin`` (file and
line of each record) and ``_parse_error`` (why a record could not be parsed, else None).
A malformed record is yielded, not dropped, so validation can quarantine it with its reason.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import difflib
import hashlib
import json
import logging
import operator
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serviceloop.contract import BOOLEAN, TIMESTAMP, Entity
from serviceloop.sources import DROP_FORMATS, DROP_SETTLE, IDENTIFIER, EntityMapping

log = logging.getLogger(__name__)

CANONICAL_TS = "%Y-%m-%dT%H:%M:%S+00:00"
CHUNK_ROWS = 50_000
# How sources spell booleans, in the canonical form.
BOOL_WORDS = {
    "true": "true", "t": "true", "1": "true", "yes": "true",
    "false": "false", "f": "false", "0": "false", "no": "false",
}  # fmt: skip


class ContractError(ValueError):
    """A whole batch breaks the contract (e.g. a required column is missing): nothing is loaded."""


class DropClaimError(RuntimeError):
    """Two batches of a drop claimed the same file at once: the later one fails, its retry skips it."""


def to_canonical(frame: pd.DataFrame, entity: Entity, *, lenient_timestamps: bool = False) -> pd.DataFrame:
    """Render typed or textual columns in the canonical text form, in contract order.

    With ``lenient_timestamps`` (text sources, and databases that keep timestamps in text
    columns), a timestamp that parses as ISO 8601 is normalised to UTC; one that does not is
    kept as it was, for validation to reject.
    Blank text becomes None. The common column types are rendered column-wise (this runs on
    every record ingested); anything else goes value by value through ``_text`` and
    ``_bool_text``, which strip what they render.
    """
    out = {}
    for f in entity.fields:
        if f.name not in frame.columns:
            out[f.name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
            continue
        col = frame[f.name]
        if f.type == TIMESTAMP:
            parsed = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
            if _is_text(col):
                # pandas also reads the words "now" and "today" as the current time; a timestamp
                # in an ISO 8601 layout starts with its year.
                dated = col.str.lstrip().str[:1].str.isdigit().eq(True)
                parsed = parsed.where(dated | parsed.isna())
            rendered = _iso_utc(parsed)
            kept = parsed.isna() & col.notna()
            if lenient_timestamps and kept.any():
                # Only a value kept as it was can be blank; a rendered one never is.
                original = col[kept].astype(str).str.strip()
                rendered[kept] = original.where(original.ne(""), None)
            col = rendered.where(col.notna(), None)
            col = col.astype(object).where(col.notna(), None)
        else:
            col = _render_bool(col) if f.type == BOOLEAN else _render_text(col)
            col = col.astype(object).where(col.notna(), None)
            # Rendered text is stripped already: blank means empty.
            col = col.where(col.ne(""), None)
        out[f.name] = col
    return pd.DataFrame(out, index=frame.index)


def _iso_utc(parsed: pd.Series) -> pd.Series:
    """UTC timestamps as ``CANONICAL_TS`` text (NaN where missing), formatted in numpy, not per value."""
    naive = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    text = np.char.add(np.datetime_as_string(naive, unit="s"), "+00:00").astype(object)
    text[np.isnat(naive)] = np.nan
    return pd.Series(text, index=parsed.index, dtype=object)


def _is_text(col: pd.Series) -> bool:
    return col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) in ("string", "empty")


def _render_text(col: pd.Series) -> pd.Series:
    if _is_text(col):
        return col.str.strip()
    if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_extension_array_dtype(col.dtype):
        return col.astype(str).astype(object)
    return col.map(_text, na_action="ignore")


def _render_bool(col: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(col.dtype) and not pd.api.types.is_extension_array_dtype(col.dtype):
        return pd.Series(np.where(col.to_numpy(), "true", "false"), index=col.index, dtype=object)
    if _is_text(col):
        text = col.str.strip().str.lower()
        return text.map(BOOL_WORDS).where(lambda mapped: mapped.notna(), text)
    return col.map(_bool_text, na_action="ignore")


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _bool_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        # An integer column with NULLs reaches pandas as floats: 1.0 is the 1 the source holds.
        value = int(value)
    text = str(value).strip().lower()
    return BOOL_WORDS.get(text, text)


def _require_columns(entity: Entity, present: list[str], where: str) -> None:
    missing = [c for c in entity.required if c not in present]
    if missing:
        raise ContractError(f"{where}: required column(s) {', '.join(missing)} missing for entity {entity.name}")


# A PostgreSQL source's session clock: timestamps come back in UTC, a `timestamp` column is
# compared with the window as UTC wall-clock time.
PG_UTC = "-c TimeZone=UTC"


def sql_engine(url: str):
    """An SQLAlchemy engine without a pool for a source database, its session clock in UTC.

    ``url`` is an SQLAlchemy URL (``mysql://`` and ``mariadb://`` without a driver use PyMySQL)
    or a libpq DSN (``host=... dbname=...``), read with psycopg2.
    """
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    if "://" not in url:
        return sa.create_engine(
            "postgresql+psycopg2://", connect_args={"dsn": url, "options": PG_UTC}, poolclass=NullPool
        )
    parsed = sa.engine.make_url(url)
    if parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    connect_args = {}
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # DATETIME has no zone and TIMESTAMP is shown in the session's: both read as UTC.
        connect_args["init_command"] = "SET time_zone = '+00:00'"
    elif parsed.get_backend_name() == "postgresql" and parsed.get_dialect().driver in ("psycopg2", "psycopg"):
        connect_args["options"] = " ".join(filter(None, (parsed.query.get("options"), PG_UTC)))
    return sa.create_engine(parsed, connect_args=connect_args, poolclass=NullPool)


def read_sql(
    dsn: str,
    table: str,
    entity: Entity,
    window_start: dt.datetime | None,
    window_end: dt.datetime,
    chunk_rows: int = CHUNK_ROWS,
    *,
    mapping: EntityMapping | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream the records whose watermark falls in [window_start, window_end), in bounded memory.

    ``mapping`` says which source column holds each contract field, which fields are constants
    and how source values map onto the contract's vocabulary (by default: columns named as the
    fields). The query runs on a server-side cursor (SQLAlchemy's ``stream_results``: a named
    cursor on PostgreSQL, an unbuffered one on MySQL/MariaDB), so rows arrive ``chunk_rows`` at a
    time, never all at once, ordered by watermark and key.
    """
    import sqlalchemy as sa

    mapping = mapping or EntityMapping(entity.name, table=table)
    schema_name, _, name = table.rpartition(".")
    if not all(IDENTIFIER.fullmatch(p) for p in table.split(".")) or table.count(".") > 1:
        raise ContractError(f"not a table name: {table!r}")
    engine = sql_engine(dsn)
    try:
        with engine.connect() as conn:
            try:
                present = {
                    c["name"].lower(): c["name"] for c in sa.inspect(conn).get_columns(name, schema_name or None)
                }
            except sa.exc.NoSuchTableError:
                raise ContractError(f"table {table}: not found in the source database") from None
            query, labels = _sql_query(entity, mapping, table, present, window_start)
            params = {"start": window_start, "end": window_end}
            if conn.dialect.name != "postgresql":
                # Columns without a zone hold UTC (see sql_engine): compare with UTC wall-clock values.
                params = {k: v.astimezone(dt.UTC).replace(tzinfo=None) for k, v in params.items() if v is not None}
            result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(query, params)
            for rows in result.partitions(chunk_rows):
                # Values as the driver gave them: inferring dtypes would turn an integer column
                # with NULLs into floats, and a bigint beyond 2**53 into another number.
                frame = pd.DataFrame([tuple(r) for r in rows], columns=labels, dtype=object)
                yield map_to_contract(frame, entity, mapping)
    finally:
        engine.dispose()


def sql_columns(entity: Entity, mapping: EntityMapping, table: str, present: dict[str, str]):
    """The source columns a window selects: (field, column) pairs, the watermark and the key column.

    ``present`` maps the table's column names, lower-cased, to their actual names. A required
    field, or one the mapping names, whose column is missing fails the batch, naming the column
    it was probably renamed to.
    """
    mapped = {mapping.source_column(f.name).lower() for f in entity.fields} | {mapping.watermark_column.lower()}
    unmapped = [actual for lower, actual in present.items() if lower not in mapped]

    def column(source_name: str, what: str) -> str:
        actual = present.get(source_name.lower())
        if actual is None:
            renamed = _renamed_to(source_name, unmapped)
            hint = f" (renamed to {renamed}?)" if renamed else ""
            raise ContractError(f"table {table}: column {source_name} ({what}) missing for entity {entity.name}{hint}")
        return actual

    selected = []
    for f in entity.fields:
        if f.name in mapping.constants:
            continue
        source_name = mapping.source_column(f.name)
        if source_name.lower() in present:
            selected.append((f, column(source_name, f"contract field {f.name}")))
        elif f.required or f.name in mapping.columns:
            column(source_name, f"contract field {f.name}")
        else:
            # An optional field the table lacks (dropped, or renamed) reads as null.
            log.warning("table %s: no column %s (optional contract field %s): read as null", table, source_name, f.name)
    watermark = column(mapping.watermark_column, "the watermark")
    key = column(mapping.source_column(entity.key), f"contract field {entity.key}")
    return selected, watermark, key


def _sql_query(entity: Entity, mapping: EntityMapping, table: str, present: dict[str, str], window_start):
    """The select of one window, its columns labelled with the contract's field names."""
    import sqlalchemy as sa

    fields, watermark, key = sql_columns(entity, mapping, table, present)
    selected = [sa.column(actual).label(f.name) for f, actual in fields]
    schema_name, _, name = table.rpartition(".")
    query = sa.select(*selected).select_from(sa.table(name, schema=schema_name or None))
    query = query.where(sa.column(watermark) < sa.bindparam("end"))
    if window_start is not None:
        query = query.where(sa.column(watermark) >= sa.bindparam("start"))
    return query.order_by(sa.column(watermark), sa.column(key)), [c.name for c in selected]


def map_to_contract(frame: pd.DataFrame, entity: Entity, mapping: EntityMapping) -> pd.DataFrame:
    """A frame whose columns carry the contract's names, in the canonical text form.

    Adds the mapping's constants and maps the source's values onto the contract's vocabulary;
    a value without a mapping is kept as it is, for validation to judge. Extra columns
    (``_origin``, ``_parse_error``) are kept.
    """
    extra = [c for c in frame.columns if c.startswith("_")]
    for f, value in mapping.constants.items():
        frame[f] = value
    out = to_canonical(frame, entity, lenient_timestamps=True)
    for f, table in mapping.values.items():
        out[f] = out[f].map(lambda v, t=table: t.get(v, v) if v is not None else None)
    for c in extra:
        out[c] = frame[c]
    return out


# --- File drops ---------------------------------------------------------------------------
#
# A drop is a folder a tool exports into, one file per day: ``<prefix>_YYYYMMDD.<format>``.
# What a batch reads from it, and why:
#
# - Complete files only. Hidden names (``.surveys_20260601.csv.tmp``) and partial suffixes
#   (``.part``) never match the pattern, so a writer that renames into place is never read
#   half-written. A writer that writes in place is caught by the settle rule: a file changed
#   less than ``settle`` ago is looked at again once it is that old, and left for a later
#   batch (the source's overlap re-reads its day) if its size or mtime moved meanwhile.
# - Each file once. The manifest (``ops.drop_manifest``, written in the batch's transaction)
#   keys files by the SHA-256 of their bytes: a file that another batch loaded, under this
#   name or another, is skipped and recorded as a duplicate. A rerun of the batch that first
#   loaded a file forgets its own entries first, so it loads the file again. Of two batches
#   that claim the same content at once, the second waits for the first to commit and then
#   fails (``DropClaimError``, or the unique index for another name); its retry skips it.
# - Encodings line by line: a line is UTF-8 (a byte-order mark at the start is dropped) when
#   its bytes are valid UTF-8, else GB18030 (the superset of GBK that Chinese service desks
#   export). Deciding per line reads a file made of both (exports concatenated) correctly,
#   where deciding per file would turn one half into mojibake; the file's manifest entry
#   records the mix as a warning. A line that is neither is kept with its bytes escaped and
#   its record is a parse error: one bad line does not cost the rest of the file.
# - A record that cannot be parsed is kept, not dropped: it is yielded with the fields it has
#   and ``_parse_error`` says why; validation quarantines it. Every record carries ``_origin``
#   (``file:line``, the record's first line; for Parquet the 1-based row number).
# - What cannot be read as records at all fails the batch with ``ContractError``: an empty
#   file, a header without a required column, a contract column under another name, a
#   header that is one column because the delimiter is wrong, an unreadable Parquet file.
#   An extra column the contract does not know is ignored and recorded as a warning (the
#   contract names the fields a source maps onto; a source may carry more).

ORIGIN = "_origin"
PARSE_ERROR = "_parse_error"
# A quoted CSV field may span this many lines; beyond it the opening quote is taken as a
# stray one, its line is a parse error and reading resumes on the next line.
MAX_RECORD_LINES = 10_000
MAX_RECORD_CHARS = 64 * 1024 * 1024
# A chunk is cut at CHUNK_ROWS records or at this many characters, whichever comes first.
CHUNK_CHARS = 64 * 1024 * 1024
SNIPPET = 200


@dataclass(frozen=True)
class RemoteFile:
    """A file of an fsspec filesystem (``memory://``, ``s3://``, ``file://`` ...), as a drop reads a ``Path``."""

    fs: Any
    path: str

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def open(self, mode: str = "rb"):
        return self.fs.open(self.path, mode)

    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def stat(self):
        """Size and modification time (ns; None when the filesystem keeps none) as ``os.stat`` names them."""
        info = self.fs.info(self.path)
        when = info.get("mtime", info.get("LastModified", info.get("created")))
        if isinstance(when, dt.datetime):
            when = when.timestamp()
        return _Stat(info.get("size"), None if when is None else int(float(when) * 1e9))

    def __lt__(self, other: RemoteFile) -> bool:
        return self.path < other.path


@dataclass(frozen=True)
class _Stat:
    st_size: int | None
    st_mtime_ns: int | None


def is_url(folder) -> bool:
    """A drop folder given as an fsspec URL (``memory://drops``, ``s3://bucket/exports``), not a local path."""
    return isinstance(folder, str) and "://" in folder


def _drop_entries(folder: Path | str, prefix: str) -> list:
    """The files of a drop folder whose name starts with the prefix: Paths, or RemoteFiles for a URL."""
    if not is_url(folder):
        return sorted(Path(folder).glob(f"{prefix}_*"))
    import fsspec

    fs, root = fsspec.core.url_to_fs(folder)
    return sorted(RemoteFile(fs, p) for p in fs.glob(f"{root.rstrip('/')}/{glob_escape(prefix)}_*"))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", text)


def drop_files(
    folder: Path | str,
    prefix: str,
    window_start: dt.datetime | None,
    window_end: dt.datetime,
    *,
    formats: tuple[str, ...] = DROP_FORMATS,
    settle: dt.timedelta = DROP_SETTLE,
) -> list:
    """The complete daily files of a drop (a local folder or an fsspec URL) whose day lies in the window, oldest first."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d{{8}})\.({'|'.join(map(re.escape, formats))})")
    chosen = []
    for path in _drop_entries(folder, prefix):
        m = pattern.fullmatch(path.name)
        if not m or not path.is_file():
            continue
        day = dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.UTC)
        if day >= window_end or (window_start is not None and day < window_start):
            continue
        chosen.append(path)
    return _settled(chosen, settle)


def _settled(paths: list, settle: dt.timedelta) -> list:
    """The files not being written: unchanged for ``settle``, waiting (once, at most that long) for the young ones.

    A file whose filesystem keeps no modification time counts as young: it is looked at again
    after ``settle`` and left for a later batch if its size moved meanwhile.
    """
    seen = {p: _stat(p) for p in paths}
    wait = settle.total_seconds()
    now = time.time()
    young = [p for p, st in seen.items() if st is None or st[1] is None or now - st[1] / 1e9 < wait]
    if young:
        # An mtime in the future (a writer's clock ahead of ours) waits no longer than settle.
        newest = max((seen[p][1] / 1e9 for p in young if seen[p] is not None and seen[p][1] is not None), default=now)
        time.sleep(min(wait, max(0.0, newest + wait - now)))
    out = []
    for p in paths:
        if p in young and (seen[p] is None or _stat(p) != seen[p]):
            log.warning("%s is still being written: left for a later batch", p.name)
            continue
        out.append(p)
    return out


def _stat(path) -> tuple[int, int | None] | None:
    """Size and mtime (ns) of a file, None if it is gone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class DropManifest:
    """The drop files a batch read, by checksum, written in the batch's own transaction."""

    conn: Any
    source: str
    batch_id: str

    def forget_batch(self) -> None:
        """A rerun starts over: what this batch read before is read again."""
        with self.conn.cursor() as cur:
            cur.execute(
                "delete from ops.drop_manifest where source = %s and batch_id = %s", (self.source, self.batch_id)
            )

    def names(self) -> set[str]:
        """Every file name of the drop that some batch has seen."""
        with self.conn.cursor() as cur:
            cur.execute("select distinct file_name from ops.drop_manifest where source = %s", (self.source,))
            return {name for (name,) in cur.fetchall()}

    def loaded_as(self, checksum: str) -> str | None:
        """The name under which a file with this content was loaded, if it was."""
        with self.conn.cursor() as cur:
            cur.execute(
                "select file_name from ops.drop_manifest where source = %s and checksum = %s and duplicate_of is null",
                (self.source, checksum),
            )
            row = cur.fetchone()
        return None if row is None else row[0]

    def claim(self, name: str, checksum: str, size: int) -> None:
        """This batch loads the file; a claim by a batch running at the same time fails it."""
        with self.conn.cursor() as cur:
            # A file recorded as a duplicate becomes the original once that one is forgotten.
            cur.execute(
                """
                insert into ops.drop_manifest (source, file_name, checksum, size_bytes, batch_id)
                values (%s, %s, %s, %s, %s)
                on conflict (source, file_name, checksum) do update
                    set batch_id = excluded.batch_id, duplicate_of = null, seen_at = now()
                    where ops.drop_manifest.duplicate_of is not null
                returning batch_id
                """,
                (self.source, name, checksum, size, self.batch_id),
            )
            if cur.fetchone() is None:
                raise DropClaimError(
                    f"file {name}: another batch of {self.source} loaded it while this one ran; a retry skips it"
                )

    def duplicate(self, name: str, checksum: str, size: int, of: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                """
                insert into ops.drop_manifest (source, file_name, checksum, size_bytes, batch_id, duplicate_of)
                values (%s, %s, %s, %s, %s, %s) on conflict (source, file_name, checksum) do nothing
                """,
                (self.source, name, checksum, size, self.batch_id, of),
            )

    def finish(self, name: str, checksum: str, report: FileReport) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                """
                update ops.drop_manifest set rows_read = %s, encodings = %s, warnings = %s
                where source = %s and file_name = %s and checksum = %s
                """,
                (report.rows, sorted(report.encodings), report.warnings, self.source, name, checksum),
            )


@dataclass
class FileReport:
    """What reading one file found besides its records."""

    rows: int = 0
    encodings: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def read_drop(
    folder: Path | str,
    prefix: str,
    entity: Entity,
    window_start: dt.datetime | None,
    window_end: dt.datetime,
    *,
    formats: tuple[str, ...] = DROP_FORMATS,
    settle: dt.timedelta = DROP_SETTLE,
    manifest: DropManifest | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """Stream a drop's files in the window as canonical chunks with ``_origin`` and ``_parse_error``.

    Without a manifest every file in the window is read (a one-off import); with one, each
    file's content is read by one batch only.
    """
    files = drop_files(folder, prefix, window_start, window_end, formats=formats, settle=settle)
    if manifest is not None:
        manifest.forget_batch()
        if window_start is not None:
            # A file delivered after its day's window had passed (the export ran late, a
            # transfer was retried) is read by the next batch instead of never.
            known = manifest.names()
            late = [
                p for p in drop_files(folder, prefix, None, window_start, formats=formats, settle=settle)
                if p.name not in known
            ]  # fmt: skip
            for path in late:
                log.warning("%s arrived after its day's window: read by batch %s", path.name, manifest.batch_id)
            files = late + files
    for path in files:
        checksum, size = _sha256(path)
        if manifest is not None:
            loaded_as = manifest.loaded_as(checksum)
            if loaded_as is not None:
                if loaded_as != path.name:
                    manifest.duplicate(path.name, checksum, size, of=loaded_as)
                    log.warning("%s has the same content as %s, loaded before: skipped", path.name, loaded_as)
                continue
            manifest.claim(path.name, checksum, size)
        report = FileReport()
        yield from read_drop_file(path, entity, report, chunk_rows=chunk_rows)
        if len(report.encodings) > 1:
            report.warnings.append(f"mixed encodings: lines in {' and '.join(sorted(report.encodings))}")
        for warning in report.warnings:
            log.warning("%s: %s", path.name, warning)
        if manifest is not None:
            manifest.finish(path.name, checksum, report)


def read_drop_file(
    path: Path | RemoteFile, entity: Entity, report: FileReport | None = None, *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """One drop file (a ``Path`` or a ``RemoteFile``) as canonical chunks; the format is the file's suffix."""
    report = report if report is not None else FileReport()
    fmt = path.suffix.lstrip(".").lower()
    if fmt == "parquet":
        yield from _read_parquet(path, entity, report, chunk_rows)
        return
    if fmt == "csv":
        records = _csv_records(path, entity, report)
    elif fmt == "jsonl":
        records = _jsonl_records(path, entity, report)
    else:
        raise ContractError(f"file {path.name}: unknown format {fmt!r} (one of {', '.join(DROP_FORMATS)})")
    columns = next(records)
    for frame in _chunked(records, columns, entity, chunk_rows):
        report.rows += len(frame)
        yield frame


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


# One record on its way to a chunk: its values (in the file's contract columns), its origin,
# why it did not parse (or None), and its size in characters. A reader yields its contract
# columns first, then its records.
Record = tuple[Sequence[str | None], str, str | None, int]


def _chunked(records: Iterator[Record], columns: list[str], entity: Entity, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Records as canonical DataFrames of at most ``chunk_rows`` rows (and about CHUNK_CHARS)."""
    rows: list[Sequence[str | None]] = []
    origins: list[str] = []
    errors: list[str | None] = []
    chars = 0
    for values, origin, error, size in records:
        rows.append(values)
        origins.append(origin)
        errors.append(error)
        chars += size
        if len(rows) >= chunk_rows or chars >= CHUNK_CHARS:
            yield _frame(rows, columns, origins, errors, entity)
            rows, origins, errors, chars = [], [], [], 0
    if rows:
        yield _frame(rows, columns, origins, errors, entity)


def _frame(
    rows: list, columns: list[str], origins: list[str], errors: list[str | None], entity: Entity
) -> pd.DataFrame:
    frame = to_canonical(pd.DataFrame.from_records(rows, columns=columns), entity, lenient_timestamps=True)
    frame[ORIGIN] = origins
    frame[PARSE_ERROR] = pd.Series(errors, index=frame.index, dtype=object)
    return frame


def _check_columns(columns: list[str], entity: Entity, where: str) -> list[str]:
    """Judge a file's columns against the contract; return the warnings (extra columns)."""
    if not columns:
        raise ContractError(f"{where}: no header (the file is empty)")
    if columns == [""]:
        raise ContractError(f"{where}: no header (the first line is blank)")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ContractError(f"{where}: column(s) {', '.join(duplicated)} appear more than once in the header")
    known = set(entity.columns)
    unknown = [c for c in columns if c not in known]
    missing = [c for c in entity.columns if c not in columns]
    if len(columns) == 1 and unknown:
        delimiter = next((d for d in ";\t|" if d in columns[0]), None)
        if delimiter is not None:
            raise ContractError(
                f"{where}: the header is one column {columns[0][:SNIPPET]!r}: "
                f"the fields are separated by {delimiter!r}, expected ','"
            )
    renamed = {c: _close_match(c, missing) for c in unknown}
    renamed = {c: m for c, m in renamed.items() if m is not None}
    if renamed:
        pairs = ", ".join(f"{c!r} (contract field {m!r})" for c, m in renamed.items())
        raise ContractError(f"{where}: column(s) {pairs} not in the contract for entity {entity.name}: renamed?")
    _require_columns(entity, columns, where)
    extra = [c for c in unknown if c not in renamed]
    return [f"column(s) {', '.join(extra)} not in the contract: ignored"] if extra else []


def _renamed_to(name: str, columns: list[str]) -> str | None:
    """The column of a source table that most likely is ``name`` renamed, if any."""

    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    by_norm = {norm(c): c for c in columns}
    match = difflib.get_close_matches(norm(name), list(by_norm), n=1, cutoff=0.75)
    if match:
        return by_norm[match[0]]
    # A qualified name (`ticket_priority`, `updated_at_utc`) that contains the column's.
    return next((c for c in columns if len(name) > 3 and norm(name) in norm(c)), None)


def _close_match(name: str, candidates: list[str]) -> str | None:
    """The contract field an unknown column name most likely renames, if any."""

    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    by_norm = {norm(c): c for c in candidates}
    match = difflib.get_close_matches(norm(name), list(by_norm), n=1, cutoff=0.75)
    if match:
        return by_norm[match[0]]
    # A qualified name (`csat_score`, `survey_ticket_id`) that contains the field's name.
    return next((c for c in candidates if len(c) > 3 and norm(c) in norm(name)), None)


class _RunawayRecord(Exception):
    """A quoted field ran on past MAX_RECORD_LINES / MAX_RECORD_CHARS."""


class _Lines:
    """A file's physical lines, decoded one by one, with the lines of the current record kept.

    The CSV parser pulls from it. After each record the caller calls ``start_record``; when a
    record fails, ``resume_after_first`` puts the record's later lines back so that a stray
    quote costs one line, not the rest of the file.
    """

    def __init__(self, raw_lines: Iterator[bytes], report: FileReport):
        self._raw = raw_lines
        self._report = report
        self._read = 0
        self._pending: deque[tuple[int, str, str | None]] = deque()
        self.record: list[tuple[int, str, str | None]] = []
        self._record_chars = 0
        self.ended_with_newline = True

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._pending:
            item = self._pending.popleft()
        else:
            raw = next(self._raw)
            self._read += 1
            self.ended_with_newline = raw.endswith(b"\n")
            item = (self._read, *_decode_line(raw, self._read == 1, self._report))
        self.record.append(item)
        self._record_chars += len(item[1])
        if len(self.record) > MAX_RECORD_LINES or self._record_chars > MAX_RECORD_CHARS:
            raise _RunawayRecord
        return item[1]

    def start_record(self) -> None:
        self.record = []
        self._record_chars = 0

    @property
    def record_chars(self) -> int:
        return self._record_chars

    def resume_after_first(self) -> None:
        self._pending.extendleft(reversed(self.record[1:]))
        self.record = self.record[:1]

    @property
    def lines_read(self) -> int:
        return self._read

    @property
    def first_line(self) -> int:
        return self.record[0][0] if self.record else self._read

    def line_errors(self) -> list[str]:
        return [err for _, _, err in self.record if err]


def _decode_line(raw: bytes, first: bool, report: FileReport) -> tuple[str, str | None]:
    """A line's text (ending in ``\\n``), and what is wrong with its bytes if anything."""
    if first and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    if raw.endswith(b"\r\n"):
        raw = raw[:-2] + b"\n"
    error = None
    try:
        text = raw.decode("utf-8")
        if not raw.isascii():
            report.encodings.add("UTF-8")
    except UnicodeDecodeError:
        try:
            text = raw.decode("gb18030")
            report.encodings.add("GB18030")
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8", errors="backslashreplace")
            error = f"bytes that are neither UTF-8 nor GB18030 at offset {exc.start}"
    if "\x00" in text:
        text = _escape_nul(text)
        error = "NUL byte"
    if not text.endswith("\n"):
        text += "\n"
    return text, error


def _csv_records(path: Path, entity: Entity, report: FileReport) -> Iterator[Record]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_CHARS))
    with path.open("rb") as fh:
        lines = _Lines(iter(fh), report)
        reader = csv.reader(lines, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            header = []
        except (csv.Error, _RunawayRecord) as exc:
            raise ContractError(f"file {path.name}: the header line cannot be parsed ({exc})") from None
        if lines.line_errors():
            raise ContractError(f"file {path.name}: the header line has {lines.line_errors()[0]}")
        report.warnings.extend(_check_columns(header, entity, f"file {path.name}"))
        wanted = [i for i, c in enumerate(header) if c in set(entity.columns)]
        # Every entity requires several columns, so itemgetter returns a tuple, never one value.
        pick = operator.itemgetter(*wanted)
        yield [header[i] for i in wanted]
        while True:
            lines.start_record()
            try:
                fields, error = next(reader), None
            except StopIteration:
                return
            except (csv.Error, _RunawayRecord) as exc:
                reason = "a quoted field runs on too long" if isinstance(exc, _RunawayRecord) else str(exc)
                error = f"bad quoting ({reason})"
                if len(lines.record) > 1:
                    error = f"bad quoting: a quote opened on this line runs on to line {lines.record[-1][0]} ({reason})"
                    lines.resume_after_first()
                fields = _lenient_fields(lines.record[0][1])
            if not fields and error is None:
                continue  # a blank line is not a record
            line = lines.first_line
            error = error or next(iter(lines.line_errors()), None)
            if error is None and len(fields) != len(header):
                error = f"{len(fields)} fields where the header has {len(header)}"
                if not lines.ended_with_newline and lines.record[-1][0] == lines.lines_read:
                    error += " (the file ends mid-line: truncated?)"
            values = pick(fields) if error is None else [fields[i] if i < len(fields) else None for i in wanted]
            yield values, f"{path.name}:{line}", None if error is None else f"line {line}: {error}", lines.record_chars


def _lenient_fields(text: str) -> list[str]:
    """The fields of one line as well as they can be told apart, for the quarantined record."""
    try:
        return next(csv.reader([text], strict=False), [])
    except csv.Error:
        return text.rstrip("\n").split(",")


def _json_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return _text(value)
    return json.dumps(value, ensure_ascii=False)


def _jsonl_records(path: Path, entity: Entity, report: FileReport) -> Iterator[Record]:
    known = set(entity.columns)
    extra: set[str] = set()
    yield entity.columns
    nothing = [None] * len(entity.columns)
    with path.open("rb") as fh:
        lines = _Lines(iter(fh), report)
        while True:
            lines.start_record()
            try:
                text = next(lines)
            except StopIteration:
                break
            line, _, decode_error = lines.record[0]
            origin = f"{path.name}:{line}"
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                reason = f"line {line}: invalid JSON at column {exc.colno} ({exc.msg}): {text[:SNIPPET]!r}"
                yield nothing, origin, reason, len(text)
                continue
            if not isinstance(obj, dict):
                yield nothing, origin, f"line {line}: not a JSON object: {text[:SNIPPET]!r}", len(text)
                continue
            values = [_json_text(obj.get(c)) for c in entity.columns]
            unknown = [k for k in obj if k not in known]
            renamed = {k: m for k in unknown if (m := _close_match(k, [c for c in entity.columns if c not in obj]))}
            extra.update(k for k in unknown if k not in renamed)
            error = decode_error
            if "\\u0000" in text:
                values = [_escape_nul(v) for v in values]
                error = "NUL character"
            if renamed:
                error = "key(s) " + ", ".join(f"{k!r} (contract field {m!r})" for k, m in renamed.items())
                error += " not in the contract: renamed?"
            yield values, origin, None if error is None else f"line {line}: {error}", len(text)
    if extra:
        report.warnings.append(f"key(s) {', '.join(sorted(extra))} not in the contract: ignored")
    if lines.lines_read == 0:
        # No header to miss: an empty JSON Lines file is zero records, but worth a look.
        report.warnings.append("empty file")


def _escape_nul(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL: keep it visible, escaped, in the quarantined record.
    return value.replace("\x00", "\\x00") if value else value


def _read_parquet(path: Path, entity: Entity, report: FileReport, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path if isinstance(path, Path) else path.open("rb"))
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"file {path.name}: not a readable Parquet file ({exc})") from None
    columns = list(pf.schema_arrow.names)
    report.warnings.extend(_check_columns(columns, entity, f"file {path.name}"))
    present = [c for c in entity.columns if c in columns]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=present):
            frame = to_canonical(batch.to_pandas(), entity, lenient_timestamps=True)
            frame[ORIGIN] = [f"{path.name}:{row + i + 1}" for i in range(len(frame))]
            frame[PARSE_ERROR] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
            nul = pd.Series(False, index=frame.index)
            for c in entity.columns:
                nul |= frame[c].str.contains("\x00", regex=False, na=False)
            if nul.any():
                frame.loc[nul, entity.columns] = frame.loc[nul, entity.columns].map(_escape_nul)
                frame.loc[nul, PARSE_ERROR] = [f"row {row + i + 1}: NUL character" for i in np.flatnonzero(nul)]
            row += len(frame)
            report.rows += len(frame)
            yield frame
    except pa.ArrowException as exc:
        raise ContractError(f"file {path.name}: Parquet data unreadable after row {row} ({exc})") from None
