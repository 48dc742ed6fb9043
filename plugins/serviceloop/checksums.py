"""Checksums of what the pipeline holds, to show that a rerun or a backfill changes nothing.

A table's checksum is its row count and the md5 of its rows as text, sorted, over its
*content* columns: what a row says, not when it was written. Left out everywhere:

- load and build times: raw's ``_loaded_at`` (the transaction time of the load: a rerun of
  an interval loads the same rows at a later time, and staging's incremental logic needs it
  to grow, so it is not made deterministic), ``sent_at``, ``opened_at``, ``evaluated_at`` ...;
- the marts' incremental bookkeeping (``built_through``, ``content_changed_through``,
  ``kpi_days_touched``, ``source_loaded_at``, ``loaded_at``, ``batch_id``): which run last
  rebuilt a row, not what it holds.

So raw's checksum covers the contract columns plus ``_batch_id``: the same interval read
again must give the same records in the same batch. ``snapshot`` gathers the five parts the
reliability invariants compare: raw, marts, drift findings, reviews and the alerts sent
(``monitoring.alerts`` and the bytes of every message in the outbox).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from psycopg2 import sql

# Columns that say when a row was written or rebuilt, in any schema.
VOLATILE = frozenset(
    {
        "_loaded_at",
        "loaded_at",
        "source_loaded_at",
        "quarantined_at",
        "seen_at",
        "evaluated_at",
        "opened_at",
        "added_at",
        "changed_at",
        "sent_at",
        "pinned_at",
        "applied_at",
    }
)
# The marts' incremental bookkeeping (see fct_tickets.sql and macros/kpi_rollup.sql).
MART_BOOKKEEPING = frozenset(
    {"built_through", "content_changed_through", "kpi_days_touched", "source_loaded_at", "loaded_at", "batch_id"}
)
# Per table, what else is volatile: a review's updated_at is the wall-clock time of its last change.
TABLE_VOLATILE = {
    "monitoring.improvement_reviews": frozenset({"updated_at"}),
}
REVIEW_TABLES = (
    "monitoring.improvement_reviews",
    "monitoring.review_evidence",
    "monitoring.review_history",
    "monitoring.review_effects",
    "monitoring.pinned_baselines",
)
FINDING_TABLES = ("monitoring.drift_runs", "monitoring.drift_findings")


def columns(cur, table: str) -> list[str]:
    schema_name, name = table.split(".")
    cur.execute(
        "select column_name from information_schema.columns"
        " where table_schema = %s and table_name = %s order by ordinal_position",
        (schema_name, name),
    )
    return [c for (c,) in cur.fetchall()]


def table_checksum(cur, table: str, exclude: frozenset[str] | set[str] = frozenset()) -> tuple[int, str]:
    """(rows, md5 of the sorted rows' text) over the table's columns but ``exclude`` and the volatile ones."""
    skip = VOLATILE | TABLE_VOLATILE.get(table, frozenset()) | set(exclude)
    kept = [c for c in columns(cur, table) if c not in skip]
    if not kept:
        raise LookupError(f"{table}: no such table, or no content columns")
    schema_name, name = table.split(".")
    row = sql.SQL("row({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in kept))
    cur.execute(
        sql.SQL("select count(*), md5(coalesce(string_agg(r, '|' order by r), '')) from (select {} as r from {}) as t")
        .format(row, sql.Identifier(schema_name, name))
    )  # fmt: skip
    count, digest = cur.fetchone()
    return int(count), digest


def tables_in(cur, schema_name: str) -> list[str]:
    cur.execute(
        "select table_name from information_schema.tables where table_schema = %s order by table_name",
        (schema_name,),
    )
    return [f"{schema_name}.{t}" for (t,) in cur.fetchall()]


def raw(cur) -> dict[str, tuple[int, str]]:
    """Every raw table: contract columns and ``_batch_id``."""
    return {t: table_checksum(cur, t) for t in tables_in(cur, "raw")}


def marts(cur) -> dict[str, tuple[int, str]]:
    """Every table and view in ``marts``, without the incremental bookkeeping."""
    return {t: table_checksum(cur, t, MART_BOOKKEEPING) for t in tables_in(cur, "marts")}


def findings(cur) -> dict[str, tuple[int, str]]:
    return {t: table_checksum(cur, t) for t in FINDING_TABLES}


def reviews(cur) -> dict[str, tuple[int, str]]:
    return {t: table_checksum(cur, t) for t in REVIEW_TABLES}


def alerts(cur, outbox: Path | None = None) -> dict[str, tuple[int, str]]:
    """The alerts recorded as sent, and the messages in the outbox (name and bytes of each)."""
    out = {"monitoring.alerts": table_checksum(cur, "monitoring.alerts")}
    if outbox is not None:
        files = sorted(p for p in Path(outbox).glob("*.eml") if p.is_file())
        digest = hashlib.md5()
        for path in files:
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        out["outbox"] = (len(files), digest.hexdigest())
    return out


def snapshot(conn, outbox: Path | None = None) -> dict[str, dict[str, tuple[int, str]]]:
    """The checksums of raw, marts, findings, reviews and alerts sent."""
    with conn.cursor() as cur:
        return {
            "raw": raw(cur),
            "marts": marts(cur),
            "findings": findings(cur),
            "reviews": reviews(cur),
            "alerts": alerts(cur, outbox),
        }
