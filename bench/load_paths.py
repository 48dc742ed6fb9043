"""Ways to load the helpdesk's ticket events into the warehouse, side by side with the anchor.

The load row of the bench compares ServiceLoop's batch with ``psql \\copy`` of a file. This
script takes the same source rows along each way a load could go, one after another and
``--rounds`` times, so what each part costs shows in one run on one machine:

- the anchor: ``\\copy`` of the rows, in the canonical text, from a CSV file into a typed table;
- ServiceLoop's two writes: its stream into a text landing table, then ``insert ... select``
  with the casts into a table like raw (the batch's extract and its move into raw, without
  validation);
- one write, with ServiceLoop's stream (its rendering of the source's values, ordered by
  watermark and key) straight into a typed table;
- one write, with the same query ordered and unordered, then with the plain columns (no
  rendering) ordered and unordered, and ordered in binary ``COPY``, each a psql piped into a
  psql.

Run it on the bench's state folder after a bench run (the rows are the helpdesk as the bench
left it; 1M tickets make about 6.8 million events)::

    SERVICELOOP_HOME=.serviceloop/bench .venv/bin/python bench/load_paths.py --rounds 2

It starts that folder's embedded PostgreSQL, leaves the warehouse's raw and landing tables
as they were (its own tables are in the ``bench`` schema and are dropped), and stops the
server if it started it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import tempfile
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

from serviceloop import bench, ingest, sqlstream, warehouse
from serviceloop.contract import ENTITIES
from serviceloop.settings import HELPDESK_DB
from serviceloop.sources import SCHEDULED

ENTITY = ENTITIES["ticket_events"]
COLUMNS = ", ".join(ENTITY.columns)
TABLES = ("paths_copy", "paths_raw", "paths_pipe")  # in the bench schema
START, END = dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


def execute(url: str, statement: str) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(statement)
        conn.commit()


def typed_table_sql(name: str, schema: str = "bench") -> str:
    """(Re)creates an empty table with raw's column types for the contract's columns."""
    return (
        f"drop table if exists {schema}.{name}; create table {schema}.{name} as"
        f" select {COLUMNS} from raw.helpdesk__ticket_events with no data"
    )


def typed_table(wh: str, name: str) -> None:
    execute(wh, typed_table_sql(name))


def piped(hd: str, query: str, wh: str, fmt: str) -> float:
    """The source's ``COPY (query) TO STDOUT`` piped into a typed table's ``COPY FROM STDIN``."""
    typed_table(wh, "paths_pipe")
    copy_out = f"copy ({query}) to stdout (format {fmt})"
    return bench._psql_pipe(hd, copy_out, wh, f"copy bench.paths_pipe ({COLUMNS}) from stdin (format {fmt})")["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds

    was_running = warehouse.is_external() or warehouse.status().running
    warehouse.start()
    try:
        wh, hd = warehouse.url(), warehouse.url(HELPDESK_DB)
        source = next(s for s in SCHEDULED.values() if s.kind == "sql" and "ticket_events" in s.mappings)
        mapping = source.mappings["ticket_events"]

        def stream():
            return source.stream("ticket_events", START, END, connection=hd)

        probe = stream()
        with contextlib.closing(psycopg2.connect(hd)) as raw:
            rendered = sqlstream._pg_select(
                probe.plan, mapping, sql.Literal(START).as_string(raw), sql.Literal(END).as_string(raw),
                lambda name: sql.Identifier(name).as_string(raw),
            )  # fmt: skip
        unordered = rendered.rsplit(" order by ", 1)[0]
        plain = f"select {COLUMNS} from {bench._helpdesk_table('ticket_events')}"
        order = f" order by {probe.plan.watermark}, {probe.plan.key}"
        probe.close()
        execute(wh, "create schema if not exists bench")

        with tempfile.TemporaryDirectory() as folder:
            csv = Path(folder) / "ticket_events.csv"
            bench.measured(
                bench._psql_args(hd, f"\\copy ({bench._canonical_sql(ENTITY)}) to '{csv}' with (format csv)")
            )

            with contextlib.closing(psycopg2.connect(hd)) as conn, conn.cursor() as cur:
                cur.execute(f"select count(*) from {bench._helpdesk_table('ticket_events')}")
                print(f"ticket events in the helpdesk: {cur.fetchone()[0]:,}")

            def anchor() -> float:
                typed_table(wh, "paths_copy")
                copy_in = f"\\copy bench.paths_copy ({COLUMNS}) from '{csv}' with (format csv)"
                return bench.measured(bench._psql_args(wh, copy_in))["seconds"]

            def two_writes() -> tuple[float, float]:
                with contextlib.closing(psycopg2.connect(wh)) as conn:
                    ingest.create_landing(conn, "paths_text", ENTITY, commit=False)
                    began = time.perf_counter()
                    ingest.stage(conn, "paths_text", ENTITY, stream())
                    extracted = time.perf_counter() - began
                    with conn.cursor() as cur:
                        cur.execute(
                            "drop table if exists bench.paths_raw;"
                            " create table bench.paths_raw (like raw.helpdesk__ticket_events including all)"
                        )
                        conn.commit()
                        began = time.perf_counter()
                        cur.execute(  # with the casts the batch's move into raw makes (ingest.load_rows)
                            f"insert into bench.paths_raw ({COLUMNS}, _batch_id, _loaded_at)"
                            f" select {ingest._casts(ENTITY, 'staged')}, 'paths', now() from landing.paths_text as staged"
                        )
                        conn.commit()
                        moved = time.perf_counter() - began
                    ingest.drop_landing(conn, "paths_text")
                    conn.commit()
                return extracted, moved

            def one_write() -> float:
                with contextlib.closing(psycopg2.connect(wh)) as conn:
                    with conn.cursor() as cur:  # created in the COPY's transaction, as a landing table is
                        cur.execute(typed_table_sql("paths_typed", "landing"))
                    began = time.perf_counter()
                    ingest.stage(conn, "paths_typed", ENTITY, stream())
                    seconds = time.perf_counter() - began
                    ingest.drop_landing(conn, "paths_typed")
                    conn.commit()
                return seconds

            for number in range(1, rounds + 1):
                copy = anchor()
                extracted, moved = two_writes()
                ways = {
                    "ServiceLoop: its stream into the text landing, then insert into raw": extracted + moved,
                    "one write: ServiceLoop's stream straight into a typed table": one_write(),
                    "one write: ServiceLoop's query, ordered (psql | psql)": piped(hd, rendered, wh, "csv"),
                    "one write: ServiceLoop's query, unordered (psql | psql)": piped(hd, unordered, wh, "csv"),
                    "one write: the plain columns, ordered (psql | psql)": piped(hd, plain + order, wh, "csv"),
                    "one write: the plain columns, unordered (psql | psql)": piped(hd, plain, wh, "csv"),
                    "one write: the plain columns, ordered, binary COPY": piped(hd, plain + order, wh, "binary"),
                }
                print(f"round {number}: anchor, psql \\copy of the CSV file into a typed table: {copy:.1f} s")
                print(f"  of ServiceLoop's two writes: extract {extracted:.1f} s, move into raw {moved:.1f} s")
                for way, seconds in ways.items():
                    print(f"  {way}: {seconds:.1f} s, {copy / seconds:.2f}x of the anchor's throughput")
        for table in TABLES:
            execute(wh, f"drop table if exists bench.{table}")
    finally:
        if not was_running:
            warehouse.stop()


if __name__ == "__main__":
    main()
