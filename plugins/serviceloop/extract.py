"""Read records from source systems.

Every reader yields pandas DataFrames in the contract's *canonical text form*: one column
per contract field, every value a string (timestamps as ISO 8601 in UTC, booleans as
``true``/``false``) or None. Validation judges that form and ``COPY`` loads it, so a source
never needs to agree with the warehouse on types, and a value that cannot be read is kept
verbatim for the quarantine instead of being lost in a cast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from serviceloop.contract import BOOLEAN, TIMESTAMP, Entity

CANONICAL_TS = "%Y-%m-%dT%H:%M:%S+00:00"
CHUNK_ROWS = 50_000


class ContractError(ValueError):
    """A whole batch breaks the contract (e.g. a required column is missing): nothing is loaded."""


def to_canonical(frame: pd.DataFrame, entity: Entity, *, lenient_timestamps: bool = False) -> pd.DataFrame:
    """Render typed or textual columns in the canonical text form, in contract order.

    With ``lenient_timestamps`` (text sources), a timestamp that parses as ISO 8601 is
    normalised to UTC; one that does not is kept as it was, for validation to reject.
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
            rendered = _iso_utc(parsed)
            if lenient_timestamps:
                rendered = rendered.where(parsed.notna(), col.astype(object))
            col = rendered.where(col.notna(), None)
            col = col.astype(object).where(col.notna(), None)
            # Only a value kept as it was (lenient) can be blank; a rendered one never is.
            if lenient_timestamps:
                col = col.map(lambda v: None if isinstance(v, str) and v.strip() == "" else v)
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
    return col.map(_bool_text, na_action="ignore")


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _bool_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    return {"t": "true", "1": "true", "yes": "true", "f": "false", "0": "false", "no": "false"}.get(text, text)


def _require_columns(entity: Entity, present: list[str], where: str) -> None:
    missing = [c for c in entity.required if c not in present]
    if missing:
        raise ContractError(f"{where}: required column(s) {', '.join(missing)} missing for entity {entity.name}")


def read_sql(
    dsn: str,
    table: str,
    entity: Entity,
    window_start: dt.datetime | None,
    window_end: dt.datetime,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """Stream the records whose watermark falls in [window_start, window_end), in bounded memory."""
    import psycopg2

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", table):
        raise ContractError(f"not a table name: {table!r}")
    with contextlib.closing(psycopg2.connect(dsn)) as conn:
        with conn.cursor() as cur:
            cur.execute(f"select * from {table} limit 0")
            present = [d.name for d in cur.description]
        _require_columns(entity, present, f"table {table}")
        columns = [c for c in entity.columns if c in present]
        where = f"{entity.watermark} < %(end)s"
        if window_start is not None:
            where = f"{entity.watermark} >= %(start)s and {where}"
        query = f"select {', '.join(columns)} from {table} where {where} order by {entity.watermark}, {entity.key}"
        # A named cursor is server-side: rows arrive chunk by chunk, never all at once.
        with conn.cursor(name=f"extract_{table}") as cur:
            cur.itersize = chunk_rows
            cur.execute(query, {"start": window_start, "end": window_end})
            while rows := cur.fetchmany(chunk_rows):
                yield to_canonical(pd.DataFrame(rows, columns=columns), entity)


def drop_files(folder: Path, prefix: str, window_start: dt.datetime | None, window_end: dt.datetime) -> list[Path]:
    """The complete daily files of a drop whose day lies in the window, oldest first."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d{{8}})\.csv")
    chosen = []
    for path in sorted(folder.glob(f"{prefix}_*.csv")):
        m = pattern.fullmatch(path.name)
        if not m:
            continue
        day = dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.UTC)
        if day >= window_end or (window_start is not None and day < window_start):
            continue
        chosen.append(path)
    return chosen


def read_drop(
    folder: Path, prefix: str, entity: Entity, window_start: dt.datetime | None, window_end: dt.datetime
) -> Iterator[pd.DataFrame]:
    for path in drop_files(folder, prefix, window_start, window_end):
        # utf-8-sig reads plain UTF-8 and UTF-8 with a byte-order mark alike.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        _require_columns(entity, list(frame.columns), f"file {path.name}")
        if len(frame):
            yield to_canonical(frame, entity, lenient_timestamps=True)
