"""Load one batch: one source entity over one data interval, extracted, validated, loaded.

A batch is atomic and idempotent. Its id is derived from the source, the entity and the
interval, and everything it writes (raw rows, quarantined rows, its registry entry) is
replaced in one transaction, so a retry or a rerun of the interval gives the same raw layer
and nothing half-loaded is ever visible.

The extraction window is the watermark: it starts where the previous batch of the same
entity ended, minus the source's overlap (late updates committed after that batch read
the source), and ends at the interval's end. A rerun reuses the window it had the first
time. The first batch of an entity reads the source's whole history.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from serviceloop import schema
from serviceloop.contract import ENTITIES, TIMESTAMP
from serviceloop.extract import read_drop, read_sql
from serviceloop.sources import SOURCES, FileDropSource, raw_table
from serviceloop.validation import Validator

log = logging.getLogger(__name__)


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

    def as_dict(self) -> dict:
        return asdict(self)


def batch_id(source: str, entity: str, interval_end: dt.datetime) -> str:
    return f"{source}__{entity}__{interval_end.astimezone(dt.UTC):%Y%m%dT%H%M%S}"


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


def _copy(cur, table: str, columns: list[str], frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    # Unquoted empty fields are NULL in COPY's csv format; None renders as one.
    frame.to_csv(buf, index=False, header=False, quoting=csv.QUOTE_MINIMAL)
    buf.seek(0)
    cur.copy_expert(f"copy {table} ({', '.join(columns)}) from stdin with (format csv)", buf)


def _chunks(source, entity_name: str, window_start, window_end, source_dsn: str | None, drop_root: Path | None):
    entity = ENTITIES[entity_name]
    if isinstance(source, FileDropSource):
        if drop_root is None:
            raise ValueError(f"source {source.name} is a file drop: give its folder")
        return read_drop(drop_root / source.folder, source.prefix, entity, window_start, window_end)
    if source_dsn is None:
        raise ValueError(f"source {source.name} is a database: give its connection")
    return read_sql(source_dsn, source.tables[entity_name], entity, window_start, window_end)


def ingest_batch(
    conn,
    source_name: str,
    entity_name: str,
    interval_start: dt.datetime,
    interval_end: dt.datetime,
    *,
    source_dsn: str | None = None,
    drop_root: Path | None = None,
) -> BatchResult:
    """Extract, validate and load one batch inside the caller's transaction on ``conn``."""
    source = SOURCES[source_name]
    entity = ENTITIES[entity_name]
    table = raw_table(source_name, entity_name)
    bid = batch_id(source_name, entity_name, interval_end)
    loaded_at = dt.datetime.now(dt.UTC).isoformat()
    validator = Validator(entity_name)
    schema.ensure(conn)
    with conn.cursor() as cur:
        # Two runs of the same batch (a retry racing a manual rerun) must not interleave.
        cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (bid,))
        window_start = _window_start(cur, bid, source, entity_name, interval_end)
        result = BatchResult(
            bid, source_name, entity_name, window_start.isoformat() if window_start else None, interval_end.isoformat()
        )
        cur.execute(f"delete from raw.{table} where _batch_id = %s", (bid,))
        cur.execute(f"delete from quarantine.{table} where batch_id = %s", (bid,))
        reasons: Counter[str] = Counter()
        warnings: Counter[str] = Counter()
        max_watermark = None
        chunks: Iterator[pd.DataFrame] = _chunks(source, entity_name, window_start, interval_end, source_dsn, drop_root)
        for chunk in chunks:
            offset = result.rows_read
            result.rows_read += len(chunk)
            outcome = validator.validate(chunk)
            warnings.update(outcome.warnings)
            if len(outcome.valid):
                valid = outcome.valid.assign(_batch_id=bid, _loaded_at=loaded_at)
                _copy(cur, f"raw.{table}", [*entity.columns, "_batch_id", "_loaded_at"], valid)
                if entity.field(entity.watermark).type == TIMESTAMP:
                    chunk_max = pd.to_datetime(outcome.valid[entity.watermark], utc=True).max()
                    max_watermark = chunk_max if max_watermark is None else max(max_watermark, chunk_max)
            if len(outcome.rejected):
                rejected = pd.DataFrame(
                    {
                        "batch_id": bid,
                        "row_number": outcome.rejected.index + offset,
                        "record": [json.dumps(r, ensure_ascii=False) for r in outcome.rejected.to_dict("records")],
                        "failed_rules": ["{" + ",".join(outcome.failed_rules[i]) + "}" for i in outcome.rejected.index],
                    }
                )
                _copy(cur, f"quarantine.{table}", list(rejected.columns), rejected)
                for i in outcome.rejected.index:
                    reasons.update(outcome.failed_rules[i])
            result.rows_loaded += len(outcome.valid)
            result.rows_quarantined += len(outcome.rejected)
        if result.rows_read != result.rows_loaded + result.rows_quarantined:
            raise AssertionError(f"{bid}: read {result.rows_read} != loaded + quarantined")
        result.quarantine_reasons = dict(reasons)
        result.warnings = dict(warnings)
        cur.execute(
            """
            insert into ops.batches (batch_id, source, entity, interval_start, interval_end, window_start,
                window_end, rows_read, rows_loaded, rows_quarantined, max_watermark, loaded_at)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
            on conflict (batch_id) do update set
                rows_read = excluded.rows_read, rows_loaded = excluded.rows_loaded,
                rows_quarantined = excluded.rows_quarantined, max_watermark = excluded.max_watermark,
                loaded_at = excluded.loaded_at
            """,
            (
                bid, source_name, entity_name, interval_start, interval_end, window_start, interval_end,
                result.rows_read, result.rows_loaded, result.rows_quarantined,
                None if max_watermark is None else max_watermark.to_pydatetime(),
            ),
        )  # fmt: skip
    log.info(
        "%s: read %d, loaded %d, quarantined %d %s",
        bid, result.rows_read, result.rows_loaded, result.rows_quarantined, dict(reasons) or "",
    )  # fmt: skip
    return result
