"""The weekly service quality report, one per owner: each team's manager and the organisation.

A report covers one week (Monday to Sunday) and shows, in the owner's language (the team's
``language`` in the teams reference data; the organisation's is the one most teams use):

- the scorecard: each target of ``kpi_targets`` against the segment's week, red/amber/green;
- the trend of each headline KPI over the last 13 weeks, one small PNG chart each;
- the bottleneck of the week: where the cycle time of the tickets closed that week went;
- the top delay causes of the SLA breaches in the week's month;
- the drift findings of the week and the improvement reviews open at its end, with their age
  (on the data's clock: at the end of the week) and status.

The figures come from the KPI marts through ``serviceloop.quality`` (as the dashboard's do);
findings and reviews from ``monitoring``. Each report is a standalone HTML file (styles
inline, charts as PNG data URIs: nothing external) under ``reports/quality/<week>/``.

**Delivery.** By the owner's alert route (``serviceloop.notifiers``), as an HTML email with
a plain-text part, the charts inline, and the standalone file attached. Exactly once per
owner and week through the alerts' mechanism (``alerts.deliver``): the key
``report.<owner>.<week>`` is recorded in ``monitoring.alerts`` before anything is sent, so a
retried or rerun task sends nothing twice (and does not render what it will not send). A backfill renders past weeks' files and sends
only when asked (``send=True``); a week already sent is never sent again.

The organisation's report goes to the escalation contact the teams share (the service
director), by the route most teams use.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.utils import format_datetime
from pathlib import Path

from serviceloop import glossary, quality
from serviceloop.quality import e

log = logging.getLogger(__name__)

ORGANISATION = "organisation"
KIND = "weekly_report"
TREND_WEEKS = quality.TREND_LENGTH["week"]

_CSS = """
body { font-family: "Noto Sans", "Noto Sans CJK SC", "DejaVu Sans", Arial, sans-serif; margin: 1.2rem;
  color: #1b1f24; max-width: 62rem; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
p.meta { color: #57606a; margin: .2rem 0 .8rem; }
table { border-collapse: collapse; font-size: .9rem; } th, td { padding: .3rem .6rem; text-align: left; }
th { background: #f0f2f5; border-bottom: 1px solid #d0d7de; } td { border-bottom: 1px solid #eaeef2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bottleneck td { font-weight: 600; }
.charts img { margin: 0 .4rem .4rem 0; border: 1px solid #eaeef2; }
"""


@dataclass(frozen=True)
class Owner:
    """Who gets a report: a team's manager, or the organisation's director."""

    key: str  # team_id, or "organisation"
    team_id: str | None
    segment_name: str
    name: str
    email: str
    route: str
    language: str
    conn_id: str | None


@dataclass
class ReportResult:
    week: str
    rendered: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def report_week(day: dt.date) -> dt.date:
    """The Monday of the last whole week before ``day`` (a run on Monday reports the week before)."""
    return quality.period_start(day, "week") - dt.timedelta(weeks=1)


def data_week(conn) -> dt.date | None:
    """The last whole week the loaded data covers (ingest batches' end), or None."""
    with conn.cursor() as cur:
        cur.execute("select max(interval_end) from ops.batches")
        end = cur.fetchone()[0]
    return None if end is None else report_week(end.date())


def owners(conn) -> list[Owner]:
    """Every team's manager (the teams reference data), then the organisation."""
    with conn.cursor() as cur:
        cur.execute(
            "select team_id, team_name, owner_name, owner_email, alert_route, escalation_email, language, "
            "alert_conn_id from reference.teams order by team_id"
        )
        rows = cur.fetchall()
    out = [
        Owner(team, team, name or team, owner or team, email or "unrouted@localhost", route or "outbox",
              glossary.language(lang), conn_id)
        for team, name, owner, email, route, _esc, lang, conn_id in rows
    ]  # fmt: skip
    if rows:
        # The organisation's report: to the escalation contact, by the route and in the language most teams use.
        director = _most_common(r[5] for r in rows) or "unrouted@localhost"
        language = glossary.language(_most_common(r[6] for r in rows))
        out.append(
            Owner(ORGANISATION, None, glossary.phrase("report.organisation", language), director, director,
                  _most_common(r[4] for r in rows) or "outbox", language, _most_common(r[7] for r in rows))
        )  # fmt: skip
    return out


def _most_common(values) -> str | None:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


# --- what a report says ----------------------------------------------------------------------


def gather(conn, owner: Owner, week: dt.date) -> dict:
    """Everything the owner's report for ``week`` shows, read from the marts and monitoring."""
    from serviceloop.reviews import CLOSED

    end = quality.period_end(week, "week")
    month = quality.period_start(week, "month")
    with conn.cursor() as cur:
        data = {
            "owner": owner,
            "week": week,
            "end": end,
            "month": month,
            "scorecard": quality.scorecard(cur, owner.team_id, "week", week),
            "trend": quality.trend(cur, owner.team_id, "week", week),
            "targets": {t["metric"]: t["target"] for t in quality.targets(cur) if t["priority"] == "all"},
            "stages": quality.stage_breakdown(cur, owner.team_id, "week", week),
            "causes": quality.delay_causes(cur, owner.team_id, month),
        }
        team_filter = "and segment = %s" if owner.team_id else ""
        team_args = (owner.team_id,) if owner.team_id else ()
        # A metric found drifting on several days of the week is one line: first and last day, latest figures.
        cur.execute(
            f"""
            select segment, metric, min(as_of), max(as_of), count(*),
                (array_agg(reference_value order by as_of desc))[1], (array_agg(current_value order by as_of desc))[1],
                (array_agg(effect order by as_of desc))[1], (array_agg(effect_unit order by as_of desc))[1]
            from monitoring.drift_findings
            where is_finding and segment_type = 'team' and as_of between %s and %s {team_filter}
            group by segment, metric order by min(as_of), segment, metric
            """,
            (week, end, *team_args),
        )
        data["findings"] = [
            dict(
                zip(
                    ("team", "metric", "first", "last", "days", "reference", "current", "effect", "unit"),
                    r,
                    strict=True,
                )
            )
            for r in cur.fetchall()
        ]
        # Open at the week's end (a past week's review may be verified since); shown with its status today.
        cur.execute(
            f"""
            select review_id, segment, metric, status, severity, detected_on, due_date
            from monitoring.improvement_reviews
            where detected_on <= %s {team_filter}
                and (status <> all(%s) or (status = 'verified' and verified_on > %s))
            order by detected_on, review_id
            """,
            (end, *team_args, list(CLOSED), end),
        )
        data["reviews"] = [
            dict(zip(("review_id", "team", "metric", "status", "severity", "detected_on", "due"), r, strict=True))
            for r in cur.fetchall()
        ]
    return data


def charts(data: dict) -> dict[str, bytes]:
    """One small PNG per headline KPI: its last 13 weeks, the target dashed."""
    from serviceloop import charts as png

    trend = data["trend"]
    return {
        metric: png.trend_chart(
            metric,
            trend["periods"],
            trend[metric],
            target=data["targets"].get(metric),
            percent=metric not in quality.HOURS,
            lang=data["owner"].language,
        )
        for metric in quality.HEADLINE
    }


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(data: dict, images: dict[str, bytes], image_src: Callable[[str, bytes], str] | None = None) -> str:
    """The report as one HTML document; ``image_src`` maps a chart to its ``src`` (a data URI by default)."""
    image_src = image_src or (lambda _name, png: data_uri(png))
    owner, lang = data["owner"], data["owner"].language

    def p(key: str, **values) -> str:
        return e(glossary.phrase(key, lang, **values))

    title = f"{glossary.phrase('report.title', lang)}: {owner.segment_name}"
    body = [
        f"<h1>{e(title)}</h1>",
        f'<p class="meta" data-week="{e(data["week"])}">'
        f"{p('report.intro', segment=owner.segment_name, start=data['week'], end=data['end'])}</p>",
        f'<h2 id="scorecard">{p("report.scorecard")}</h2>',
        quality.scorecard_table(data["scorecard"], lang),
        f'<h2 id="trends">{p("report.trends")}</h2><div class="charts">',
        *(
            f'<img src="{image_src(metric, png)}" alt="{e(glossary.kpi(metric, lang))}" data-metric="{e(metric)}" '
            f'width="300" height="164">'
            for metric, png in images.items()
        ),
        "</div>",
        f'<h2 id="bottleneck">{p("report.bottleneck")}</h2>',
        _bottleneck_text(data, lang, html=True),
        quality.stage_table(data["stages"], lang) if data["stages"] else "",
        f'<h2 id="causes">{p("report.causes", month=data["month"].strftime("%Y-%m"))}</h2>',
        _table(
            [glossary.phrase(k, lang) for k in ("report.cause", "report.breaches", "report.breach_share")],
            [
                [e(glossary.cause(c["cause"], lang)), str(c["breaches"]), e(quality.fmt("share", c["share"]))]
                for c in data["causes"]
            ],
            lang,
            numeric=(1, 2),
            row_attr="cause",
            keys=[c["cause"] for c in data["causes"]],
        ),
        f'<h2 id="findings">{p("report.findings")}</h2>',
        _table(
            [glossary.phrase(k, lang) for k in ("report.day", "report.team", "report.metric", "report.change")],
            [
                [e(_days(f)), e(f["team"]), e(glossary.metric(f["metric"], lang)), e(_change(f, lang))]
                for f in data["findings"]
            ],
            lang,
        ),
        f'<h2 id="reviews">{p("report.reviews")}</h2>',
        _table(
            [
                glossary.phrase(k, lang)
                for k in ("review", "report.team", "report.metric", "report.status_now", "report.age", "report.due")
            ],
            [
                [
                    e(r["review_id"]),
                    e(r["team"]),
                    e(glossary.metric(r["metric"], lang)),
                    e(glossary.status(r["status"], lang)),
                    e(glossary.phrase("report.days", lang, days=_age(r, data))),
                    e(r["due"]),
                ]
                for r in data["reviews"]
            ],
            lang,
            numeric=(4,),
        ),
        f"<p>{p('signature')}</p>",
    ]
    html_lang = "zh-Hans" if lang == "zh" else "en"
    return (
        f'<!DOCTYPE html>\n<html lang="{html_lang}"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def render_text(data: dict) -> str:
    """The plain-text part: the same sections, without the charts."""
    owner, lang = data["owner"], data["owner"].language

    def p(key: str, **values) -> str:
        return glossary.phrase(key, lang, **values)

    none = p("report.none")
    lines = [
        f"{p('report.title')}: {owner.segment_name}",
        p("report.week", start=data["week"], end=data["end"]),
        "",
        f"{p('report.scorecard')}:",
        *(
            f"  {glossary.kpi(s.metric, lang)} ({s.priority}): {quality.fmt(s.metric, s.actual)}"
            f" / {'>=' if s.direction == 'at_least' else '<='} {quality.fmt(s.metric, s.target)}"
            f"  [{glossary.rag(s.status, lang)}]"
            for s in data["scorecard"]
        ),
        "",
        f"{p('report.trends')}:",
        *(
            f"  {glossary.kpi(m, lang)}: " + ", ".join(quality.fmt(m, v) for v in data["trend"][m])
            for m in quality.HEADLINE
        ),
        "",
        f"{p('report.bottleneck')}: {_bottleneck_text(data, lang)}",
        "",
        f"{p('report.causes', month=data['month'].strftime('%Y-%m'))}:",
        *(
            f"  {glossary.cause(c['cause'], lang)}: {c['breaches']} ({quality.fmt('share', c['share'])})"
            for c in data["causes"]
        ),
        *([] if data["causes"] else [f"  {none}"]),
        "",
        f"{p('report.findings')}:",
        *(
            f"  {_days(f)} {f['team']} {glossary.metric(f['metric'], lang)}: {_change(f, lang)}"
            for f in data["findings"]
        ),
        *([] if data["findings"] else [f"  {none}"]),
        "",
        f"{p('report.reviews')}:",
        *(
            f"  {r['review_id']}: {glossary.status(r['status'], lang)}, "
            f"{p('report.age')} {p('report.days', days=_age(r, data))}, {p('report.due')} {r['due']}"
            for r in data["reviews"]
        ),
        *([] if data["reviews"] else [f"  {none}"]),
        "",
        p("report.attached"),
        "",
        p("signature"),
        "",
    ]
    return "\n".join(lines)


def _bottleneck_text(data: dict, lang: str, html: bool = False) -> str:
    top = next((s for s in data["stages"] if s.is_bottleneck), None)
    if top is None:
        text = glossary.phrase("report.none", lang)
    else:
        stage = glossary.stage(glossary.PROCESS_STAGES.get(top.process_stage, top.process_stage), lang)
        text = glossary.phrase(
            "report.bottleneck_detail", lang, step=glossary.cycle_step(top.stage, lang), stage=stage,
            share=quality.fmt("share", top.share),
        )  # fmt: skip
    return f'<p class="bottleneck" data-stage="{e(top.stage if top else "")}">{e(text)}</p>' if html else text


def _days(finding: dict) -> str:
    first, last = finding["first"], finding["last"]
    return str(first) if first == last else f"{first} – {last}"


def _change(finding: dict, lang: str) -> str:
    from serviceloop.alerts import describe_change

    return describe_change(
        finding["metric"], finding["reference"], finding["current"], finding["effect"], lang, finding.get("unit")
    )


def _age(review: dict, data: dict) -> int:
    """Days since detection, on the data's clock: at the end of the report's week."""
    return (data["end"] - review["detected_on"]).days


def _table(headers: list[str], rows: list[list[str]], lang: str, numeric: tuple[int, ...] = (), row_attr: str = "",
           keys: list[str] | None = None) -> str:  # fmt: skip
    if not rows:
        return f"<p>{e(glossary.phrase('report.none', lang))}</p>"
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        (f'<tr data-{row_attr}="{e(keys[n])}">' if row_attr and keys else "<tr>")
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for n, r in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- files and delivery ----------------------------------------------------------------------


def report_path(reports_root: Path, owner: Owner, week: dt.date) -> Path:
    return reports_root / "quality" / week.isoformat() / f"{owner.key}.html"


def message_key(owner: Owner, week: dt.date) -> str:
    return f"report.{owner.key}.{week.isoformat()}"


def compose(data: dict, images: dict[str, bytes], standalone: str):
    """The owner's report as a message: HTML with the charts inline, plain text, the file attached."""
    from serviceloop import notifiers

    owner, week = data["owner"], data["week"]
    key = message_key(owner, week)
    cids = {metric: f"{metric}@serviceloop" for metric in images}
    body_html = render_html(data, images, image_src=lambda metric, _png: f"cid:{cids[metric]}")
    subject = glossary.phrase("subject.weekly_report", owner.language, segment=owner.segment_name, week=week)
    message = notifiers.Message(
        key=key,
        subject=subject,
        text=render_text(data),
        html=body_html,
        recipient=owner.email,
        # Derived from the owner and week, so a message written again after a crash is the same message.
        message_id=f"<{key}@serviceloop.localhost>",
        date=format_datetime(dt.datetime.combine(data["end"] + dt.timedelta(days=1), dt.time(), dt.UTC)),
        headers={"X-ServiceLoop-Report": f"{owner.key}/{week.isoformat()}", "X-ServiceLoop-Event": KIND},
        fields={
            "kind": KIND,
            "owner": owner.key,
            "week": week.isoformat(),
            "segment": owner.segment_name,
            "scorecard": [asdict(s) for s in data["scorecard"]],
            "language": owner.language,
        },
        images={cids[metric]: png for metric, png in images.items()},
        attachments=[
            (f"serviceloop-quality-{owner.key}-{week.isoformat()}.html", "text/html", standalone.encode("utf-8"))
        ],
    )
    return message


def render(conn, owner: Owner, week: dt.date, reports_root: Path) -> tuple[dict, dict[str, bytes], str, Path]:
    """Gather, chart and write one owner's standalone report; returns (data, charts, html, path)."""
    from serviceloop.files import write_atomically

    data = gather(conn, owner, week)
    images = charts(data)
    standalone = render_html(data, images)
    path = report_path(reports_root, owner, week)
    write_atomically(path, standalone.encode("utf-8"))
    return data, images, standalone, path


def weekly_reports(
    conn,
    week: dt.date,
    *,
    reports_root: Path,
    outbox: Path,
    send: bool = True,
    connections=None,
    only: str | None = None,
) -> ReportResult:
    """Render every owner's report of ``week``; send each once when ``send`` (see the module doc)."""
    from serviceloop import alerts, notifiers

    week = quality.period_start(week, "week")
    result = ReportResult(week.isoformat())
    everyone = owners(conn)
    if not everyone:
        raise RuntimeError("reference.teams is empty: load the teams seed (`serviceloop dbt seed`) first")
    if only and only not in {o.key for o in everyone}:
        raise ValueError(f"no owner {only!r}; owners: {', '.join(o.key for o in everyone)}")
    done = _already_sent(conn, [message_key(o, week) for o in everyone]) if send else set()
    for owner in everyone:
        if only and owner.key != only:
            continue
        if message_key(owner, week) in done:
            # Sent (or being sent) by an earlier try: neither rendered nor sent again.
            result.skipped.append(message_key(owner, week))
            continue
        data, images, standalone, path = render(conn, owner, week, reports_root)
        result.rendered.append(str(path))
        if not send:
            continue
        route = notifiers.resolve(owner.route, owner.email, owner.language, owner.conn_id, connections)
        message = compose(data, images, standalone)
        status, location = alerts.deliver(conn, None, KIND, route, message, outbox=outbox, connections=connections)
        {"sent": result.sent, "skipped": result.skipped, "failed": result.failed}[status].append(
            location or message.key
        )
    return result


def _already_sent(conn, keys: list[str]) -> set[str]:
    """The keys an earlier run claimed and did not fail (``alerts.deliver`` decides for sure)."""
    with conn.cursor() as cur:
        cur.execute("select alert_key from monitoring.alerts where alert_key = any(%s) and status <> 'failed'", (keys,))
        return {key for (key,) in cur.fetchall()}


def screenshot(html_path: Path, png_path: Path, width: int = 1100) -> str | None:
    """A PNG of the page in headless Chromium: None when done, else why not (no Chromium, or it failed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        return "no Chromium on this machine (`make browser` installs it)"
    # Tall enough for the whole report: the sections are fixed, only the tables grow.
    height = 1300 + 30 * html_path.read_text(encoding="utf-8").count("<tr")
    args = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--window-size={width},{height}", f"--screenshot={png_path}", html_path.resolve().as_uri(),
    ]  # fmt: skip
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Chromium failed: {exc}"
    if done.returncode != 0 or not png_path.exists():
        return f"Chromium failed ({done.returncode}): {done.stderr.strip()[-300:]}"
    return None


def sample(conn, reports_root: Path) -> tuple[Path, Path | None, str | None]:
    """The organisation's report of the last whole week of data, and its screenshot (``make run``)."""
    week = data_week(conn)
    if week is None:
        raise RuntimeError("nothing has been loaded yet: no week to report on")
    organisation = next(o for o in owners(conn) if o.key == ORGANISATION)
    _data, _images, _html, path = render(conn, organisation, week, reports_root)
    png = path.with_suffix(".png")
    png.unlink(missing_ok=True)  # a screenshot of an earlier run would not show this report
    note = screenshot(path, png)
    return path, None if note else png, note


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser) -> None:
    from serviceloop.cli import _date

    parser.add_argument(
        "--week", type=_date, help="a day of the week to report on (default: the last whole week of data)"
    )
    parser.add_argument(
        "--send", action="store_true", help="also send each report (once per owner and week; default: render only)"
    )
    parser.add_argument("--owner", help=f"only this owner: a team id or '{ORGANISATION}'")


def run(args) -> int:
    """``serviceloop report``: render (and with --send, send) the weekly reports."""
    from serviceloop import warehouse
    from serviceloop.settings import paths

    warehouse.start()
    p = paths()
    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn:
        week = args.week or data_week(conn)
        if week is None:
            raise RuntimeError("nothing has been loaded yet: run `serviceloop run` first")
        # From the command line a report goes to the outbox; the DAG sends by the Airflow connections.
        result = weekly_reports(conn, week, reports_root=p.reports, outbox=p.outbox, send=args.send, only=args.owner)
    print(f"week of {result.week}: {len(result.rendered)} reports")
    for path in result.rendered:
        print(f"  {path}")
    if args.send:
        for label, items in (("sent", result.sent), ("already sent", result.skipped), ("failed", result.failed)):
            for item in items:
                print(f"  {label}: {item}")
    return 1 if result.failed else 0
