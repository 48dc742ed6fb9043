"""``serviceloop reviews``: where a manager lists, reads and acts on improvement reviews.

    serviceloop reviews list [--status STATUS] [--team TEAM]
    serviceloop reviews show REVIEW_ID
    serviceloop reviews ack REVIEW_ID [--note TEXT]
    serviceloop reviews plan REVIEW_ID --note TEXT
    serviceloop reviews implemented REVIEW_ID --on YYYY-MM-DD [--note TEXT]
    serviceloop reviews dismiss REVIEW_ID --reason TEXT [--note TEXT]

A transition the lifecycle does not allow ends with a message naming what is allowed, and
changes nothing. Every action is recorded in the review's history with its note.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys

from rich.console import Console
from rich.table import Table

# Piped output gets a width that fits the tables instead of rich's 80.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from serviceloop.reviews import STATUSES

    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="reviews with status, owner, age and report")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--team", help="only this team's reviews")
    p = sub.add_parser("show", help="one review: evidence, effect, alerts and full history")
    p.add_argument("review_id")
    for name, help_text in (
        ("ack", "acknowledge a review"),
        ("plan", "record the action planned (needs --note)"),
        ("implemented", "record that the change took effect (needs --on)"),
        ("dismiss", "a false alarm: dismiss with --reason"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("review_id")
        p.add_argument("--note", help="what was decided or done")
        p.add_argument("--as", dest="actor", default=None, help="who acts (default: the login name)")
        if name == "implemented":
            p.add_argument("--on", type=_date, required=True, help="the day the change took effect")
        if name == "dismiss":
            p.add_argument("--reason", required=True, help="why it is a false alarm")


def run(args) -> int:
    from serviceloop import reviews, warehouse

    warehouse.start()
    actor = getattr(args, "actor", None) or getpass.getuser()
    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn:
        if args.action == "list":
            _print_list(reviews.list_reviews(conn, args.status, args.team))
            return 0
        if args.action == "show":
            _print_review(reviews.get(conn, args.review_id))
            return 0
        if args.action == "ack":
            before = reviews.acknowledge(conn, args.review_id, args.note, actor=actor)
        elif args.action == "plan":
            before = reviews.plan(conn, args.review_id, args.note, actor=actor)
        elif args.action == "implemented":
            before = reviews.implemented(conn, args.review_id, args.on, args.note, actor=actor)
        else:
            before = reviews.dismiss(conn, args.review_id, args.reason, args.note, actor=actor)
        status = reviews.get(conn, args.review_id)["status"]
    console.print(f"{args.review_id}: {before} -> {status}")
    return 0


def _print_list(rows: list[dict]) -> None:
    if not rows:
        console.print("No reviews.")
        return
    table = Table(title="Improvement reviews")
    for col in ("review", "status", "severity", "team", "metric", "owner", "detected", "due", "evidence", "report"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["review_id"], r["status"], r["severity"], r["segment"], r["metric"], r["owner_name"] or "",
            str(r["detected_on"]), str(r["due_date"]), str(r["evidence"]), r["report_path"] or "",
        )  # fmt: skip
    console.print(table)


def _print_review(r: dict) -> None:
    from serviceloop.alerts import describe_change

    console.print(f"[bold]{r['review_id']}[/bold]  {r['status']}  ({r['severity']})")
    change = describe_change(
        r["metric"], r["reference_value"], r["current_value"], r["effect"], unit=r.get("effect_unit")
    )
    causes = ", ".join(f"{c['cause']} ({c['tickets']})" for c in r.get("top_causes") or []) or "none recorded"
    for label, value in (
        ("team", r["segment"]),
        ("metric", f"{r['metric']}: {change}"),
        ("stage", r.get("stage") or ""),
        ("since", f"{r['since']} (detected {r['detected_on']})"),
        ("owner", f"{r['owner_name']} <{r['owner_email']}>"),
        ("due", str(r["due_date"])),
        ("top delay causes", causes),
        ("report", r["report_path"] or ""),
        ("implemented on", str(r.get("implemented_on") or "")),
        ("dismissed because", r.get("dismiss_reason") or ""),
    ):
        if value:
            console.print(f"  {label + ':':<19}{value}")
    for e in r["effects"]:
        console.print(
            f"  effect ({e['post_start']}..{e['post_end']}, {e['post_n']} tickets): vs drift "
            f"{e['effect_vs_drift']:+.3f} [{e['effect_vs_drift_low']:+.3f}, {e['effect_vs_drift_high']:+.3f}], "
            f"vs baseline {e['effect_vs_baseline']:+.3f} [{e['effect_vs_baseline_low']:+.3f}, "
            f"{e['effect_vs_baseline_high']:+.3f}]; within tolerance {e['days_within_tolerance']} days"
        )
    console.print(f"  evidence: {len(r['evidence'])} findings")
    console.print("  history:")
    for h in r["history"]:
        step = f"{h['from_status']} -> {h['status']}" if h["from_status"] else h["status"]
        effective = f", effective {h['effective_on']}" if h["effective_on"] else ""
        console.print(
            f"    {h['changed_at']:%Y-%m-%d %H:%M}  {step}  by {h['actor'] or '?'}{effective}: {h['note'] or ''}"
        )
    if r["alerts"]:
        alerts = Table(title="Alerts")
        for col in ("key", "route", "to", "status", "attempts", "error"):
            alerts.add_column(col, overflow="fold")
        for a in r["alerts"]:
            alerts.add_row(
                a["alert_key"], a["route"], a["recipient"], a["status"], str(a["attempts"]), a["last_error"] or ""
            )
        console.print(alerts)
