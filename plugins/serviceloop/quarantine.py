"""What validation kept out of ``raw``, and replaying it after a fix.

``list`` counts the quarantined rows by table, status (``quarantined`` for a broken rule,
``held`` for a row waiting for its ticket) and rule, and shows rows with their origin.
``replay`` sends the selected rows through the same validation again (the entity's suite,
run by GX on the rows staged in ``landing``): after a fix to the suite, or to the data in the
quarantine itself, the rows that now pass are loaded into ``raw`` under their own batch id,
leave the quarantine, and their batch's counts move from quarantined to loaded, so read =
loaded + quarantined holds for every batch. A fix in the source is picked up by rerunning the
batch's interval instead (``airflow dags test``), which extracts again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from serviceloop.contract import ENTITIES
from serviceloop.sources import SOURCES, raw_table


@dataclass
class ReplayResult:
    table: str
    rows_replayed: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_held: int = 0
    still_failing: dict[str, int] = field(default_factory=dict)
    data_docs: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def tables() -> dict[str, tuple[str, str]]:
    """Every quarantine table, with its source and entity."""
    return {raw_table(s.name, e.name): (s.name, e.name) for s in SOURCES.values() for e in s.entities}


def _chosen(table: str | None) -> dict[str, tuple[str, str]]:
    known = tables()
    if table is None:
        return known
    if table not in known:
        raise ValueError(f"no quarantine table {table!r}; one of: {', '.join(sorted(known))}")
    return {table: known[table]}


def _filters(rule: str | None, batch: str | None, status: str | None) -> tuple[str, list]:
    where, args = ["true"], []
    if rule:
        where.append("%s = any(failed_rules)")
        args.append(rule)
    if batch:
        where.append("batch_id = %s")
        args.append(batch)
    if status:
        where.append("status = %s")
        args.append(status)
    return " and ".join(where), args


def counts(conn, table: str | None = None) -> list[tuple[str, str, str, int]]:
    """(table, status, rule, rows) for every rule that keeps rows in quarantine."""
    out = []
    with conn.cursor() as cur:
        for name in _chosen(table):
            cur.execute(
                f"""
                select status, rule, count(*) from quarantine.{name}, unnest(failed_rules) as rule
                group by status, rule order by status, count(*) desc, rule
                """
            )
            out += [(name, status, rule, n) for status, rule, n in cur.fetchall()]
    return out


def rows(conn, table: str | None = None, *, rule=None, batch=None, status=None, limit: int = 20) -> list[dict]:
    """Quarantined rows, newest batch first: where each came from and why it is kept out."""
    where, args = _filters(rule, batch, status)
    out = []
    with conn.cursor() as cur:
        for name in _chosen(table):
            cur.execute(
                f"""
                select batch_id, row_number, status, failed_rules, origin, record
                from quarantine.{name} where {where}
                order by batch_id desc, row_number limit %s
                """,
                [*args, limit],
            )
            cols = [d.name for d in cur.description]
            out += [{"table": name, **dict(zip(cols, r, strict=True))} for r in cur.fetchall()]
    return out


def replay(conn, table: str, *, rule: str | None = None, batch: str | None = None) -> ReplayResult:
    """Validate the selected quarantined rows of ``table`` again; load those that pass.

    Runs in ``conn``'s transaction (the caller commits); the rows are staged on a connection
    of their own, for GX to read.
    """
    from serviceloop import ingest
    from serviceloop.validation import ROW_NUMBER, sqlalchemy_url, validator

    source_name, entity_name = _chosen(table)[table]
    entity = ENTITIES[entity_name]
    result = ReplayResult(table)
    where, args = _filters(rule, batch, None)
    landing = ingest.landing_table(table, f"{table}__replay")
    cols = ", ".join(f"{c} text" for c in ingest.landing_columns(entity))
    with conn.cursor() as cur:
        # One replay of a table at a time, and not while its batches write.
        cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (ingest.held_lock(table),))
    with ingest.side_connection(conn) as side:
        ingest.create_landing(
            side, landing, entity, extra=", _batch_id text not null, _quarantined_row bigint not null"
        )
        with side.cursor() as cur:
            cur.execute(
                f"""
                insert into landing.{landing}
                select row_number() over (order by q.batch_id, q.row_number) - 1, r.*, q.batch_id, q.row_number
                from quarantine.{table} as q
                cross join lateral jsonb_to_record(q.record) as r ({cols})
                where {where}
                """,
                args,
            )
            result.rows_replayed = cur.rowcount
        side.commit()
    try:
        verdict = None
        if result.rows_replayed:
            verdict = validator(entity_name, sqlalchemy_url(conn)).validate(
                landing, f"replay__{table}__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
            )
        with conn.cursor() as cur:
            if verdict is None:
                return result
            result.data_docs = str(verdict.data_docs) if verdict.data_docs else None
            ingest.collect_failures(cur, verdict)
            # The replayed rows leave the quarantine; those that fail again come back with
            # the rules they break now.
            cur.execute(
                f"""
                delete from quarantine.{table} as q using landing.{landing} as staged
                where q.batch_id = staged._batch_id and q.row_number = staged._quarantined_row
                """
            )
            result.rows_loaded = ingest.load_rows(cur, entity, table, landing, "staged._batch_id")
            ingest.quarantine_rows(cur, table, landing, "staged._batch_id", "staged._quarantined_row")
            cur.execute(
                f"""
                create temporary table moved on commit drop as
                select staged._batch_id from landing.{landing} as staged
                where not exists (
                    select from failed
                    where failed.row_number = staged.{ROW_NUMBER} and failed.severity in ('error', 'hold')
                )
                """
            )
            ingest.move_counts(cur, "moved")
            cur.execute("drop table moved")
            cur.execute(
                f"""
                select count(*) filter (where status = 'quarantined'), count(*) filter (where status = 'held')
                from quarantine.{table} as q
                where exists (select from landing.{landing} as staged
                              where staged._batch_id = q.batch_id and staged._quarantined_row = q.row_number)
                """
            )
            result.rows_quarantined, result.rows_held = cur.fetchone()
            result.rows_quarantined += result.rows_held
            cur.execute(
                "select rule, count(distinct row_number) from failed where severity in ('error', 'hold') group by rule"
            )
            result.still_failing = dict(cur.fetchall())
        if result.rows_replayed != result.rows_loaded + result.rows_quarantined:
            raise AssertionError(f"{table}: replayed {result.rows_replayed} != loaded + quarantined")
        return result
    finally:
        from psycopg2.extensions import TRANSACTION_STATUS_INERROR

        # After an error the caller rolls back; the next replay of the table drops the leftover.
        if conn.get_transaction_status() != TRANSACTION_STATUS_INERROR:
            ingest.drop_landing(conn, landing)


# --- the `serviceloop quarantine` command --------------------------------------------------


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="counts by table, status and rule; with --rows, the rows too")
    p.add_argument("--table", help="one table, e.g. helpdesk__tickets (default: all)")
    p.add_argument("--rule", help="only rows that broke this rule")
    p.add_argument("--batch", help="only rows of this batch id")
    p.add_argument("--status", choices=["quarantined", "held"], help="only rows with this status")
    p.add_argument("--rows", type=int, default=0, metavar="N", help="also show up to N rows per table")
    p = sub.add_parser("replay", help="validate quarantined rows again; load those that pass now")
    p.add_argument("--table", help="one table (default: every table)")
    p.add_argument("--rule", help="only rows that broke this rule")
    p.add_argument("--batch", help="only rows of this batch id")


def run(args) -> int:
    import json
    import sys

    from rich.console import Console
    from rich.table import Table

    from serviceloop import warehouse

    # Piped output keeps each row on one line.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
    warehouse.start()
    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn:
        if args.action == "list":
            table = Table(title="Quarantine: rows kept out of raw, by rule")
            for col in ("table", "status", "rule", "rows"):
                table.add_column(col, justify="right" if col == "rows" else "left")
            for name, status, rule, n in counts(conn, args.table):
                if (args.rule and rule != args.rule) or (args.status and status != args.status):
                    continue
                table.add_row(name, status, rule, str(n))
            console.print(table)
            if args.rows:
                for r in rows(conn, args.table, rule=args.rule, batch=args.batch, status=args.status, limit=args.rows):
                    record = json.dumps(r["record"], ensure_ascii=False)
                    console.print(
                        f"{r['table']} {r['batch_id']} row {r['row_number']} [{r['status']}]"
                        f" {','.join(r['failed_rules'])} {r['origin'] or ''}\n    {record[:300]}",
                        markup=False,
                    )
            return 0
        total_in = total_loaded = total_kept = 0
        for name in _chosen(args.table):
            result = replay(conn, name, rule=args.rule, batch=args.batch)
            conn.commit()
            if not result.rows_replayed:
                continue
            total_in += result.rows_replayed
            total_loaded += result.rows_loaded
            total_kept += result.rows_quarantined
            failing = ", ".join(f"{rule} {n}" for rule, n in sorted(result.still_failing.items()))
            console.print(
                f"{name}: replayed {result.rows_replayed}, loaded {result.rows_loaded}, still quarantined"
                f" {result.rows_quarantined} (held {result.rows_held}){': ' + failing if failing else ''}",
                markup=False,
            )
            if result.data_docs:
                console.print(f"  Data Docs: {result.data_docs}", markup=False)
        console.print(f"replayed {total_in} = loaded {total_loaded} + still quarantined {total_kept}", markup=False)
    return 0
