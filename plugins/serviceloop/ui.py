"""The "Improvement reviews" pages of the Airflow UI: every review, its evidence, report and history.

A FastAPI app that Airflow's API server mounts under ``URL_PREFIX`` (registered by
``plugins/serviceloop_ui_plugin.py``), with a nav entry in Airflow's UI that shows it in a
frame. Read-only: owners act with ``serviceloop reviews``, whose commands the pages show.

- ``/reviews``: the list (status, severity, team, metric, owner, age, due date, evidence and
  report links), optionally one status (``?status=open``);
- ``/reviews/{review_id}``: one review with its figures, evidence, measured effect, alerts
  and the history of its status changes (who, when, note);
- ``/reviews/{review_id}/report`` and ``/reviews/{review_id}/evidence/{day}/report``: the
  Evidently HTML report, looked up in the warehouse, never taken from the URL: only a file
  the drift monitor recorded, inside the state folder's reports, is served.

Airflow does not authenticate the apps plugins mount, so every route here requires a user
logged in to Airflow (its JWT, from the UI's cookie or a bearer header) with access to the
UI; a browser without one is sent to Airflow's login. Every value is HTML-escaped (notes are
free text), times are shown in UTC, and ages and deadlines run on the data's clock (the last
day the drift monitor evaluated), as the reviews' reminders do.

The "Service quality" page (``/quality``) is the managers' dashboard: the scorecard of a
segment (the organisation or a team) for a week or a month against the targets, the trend of
the headline KPIs, where the cycle time goes stage by stage, and links to the segment's
reviews and their drift reports. Its figures come from the small KPI marts
(``serviceloop.quality``) read as the read-only ``analyst`` role; charts are inline SVG.

Importing this module is cheap (Airflow imports plugins in every process): FastAPI, the
warehouse and the review logic are imported when the app is first built.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path
from urllib.parse import quote, urlencode

from serviceloop.quality import e

URL_PREFIX = "/serviceloop"
TITLE = "Improvement reviews"
QUALITY_TITLE = "Service quality"

_CSS = """
body { font-family: "Noto Sans", "Noto Sans CJK SC", "DejaVu Sans", sans-serif; margin: 1.2rem; color: #1b1f24; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
p.meta { color: #57606a; margin: .2rem 0 .8rem; }
table { border-collapse: collapse; font-size: .9rem; } th, td { padding: .3rem .6rem; text-align: left; }
th { background: #f0f2f5; border-bottom: 1px solid #d0d7de; } td { border-bottom: 1px solid #eaeef2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: .25rem 1rem; margin: 0; } dt { color: #57606a; }
.status { padding: .05rem .45rem; border-radius: .6rem; font-size: .8rem; background: #eaeef2; white-space: nowrap; }
.status-open { background: #ffd8b5; } .status-acknowledged { background: #fff1b3; }
.status-action_planned { background: #cfe2ff; } .status-implemented { background: #d0f0ff; }
.status-verified { background: #c8f0c8; } .status-dismissed { background: #e1e4e8; color: #57606a; }
.overdue { color: #b42318; font-weight: 600; } .sev-high { color: #b42318; font-weight: 600; }
nav a { margin-right: .7rem; } code { background: #f6f8fa; padding: .05rem .3rem; }
form.pick { margin: .4rem 0 .8rem; } form.pick label { margin-right: .8rem; }
.charts svg { margin: 0 .6rem .6rem 0; border: 1px solid #eaeef2; } tr.bottleneck td { font-weight: 600; }
"""

# The pages load nothing but themselves (no scripts); the Airflow UI may frame them.
_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'self'"
# Evidently's report runs its own scripts; a sandbox gives it an origin of its own, so they
# cannot call Airflow's API with the viewer's login.
_REPORT_CSP = "sandbox allow-scripts allow-popups"
_HTML_LANG = {"zh": "zh-Hans"}


def utc(ts: dt.datetime | None) -> str:
    """A timestamp in UTC, marked as such, with the machine-readable value beside it."""
    if ts is None:
        return ""
    ts = ts.astimezone(dt.UTC) if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
    return f'<time datetime="{ts.isoformat()}">{ts:%Y-%m-%d %H:%M} UTC</time>'


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)} - ServiceLoop</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def status_badge(status: str) -> str:
    from serviceloop import glossary

    return f'<span class="status status-{e(status)}">{e(glossary.status(status, "en"))}</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _review_href(review_id: str, suffix: str = "") -> str:
    # Relative to the list (``.../reviews``) and to a review (``.../reviews/<id>``) alike, so
    # the links hold under any prefix the API server is served at.
    return f"{quote(review_id, safe='')}{suffix}"


def render_list(reviews: list[dict], data_today: dt.date | None, status: str | None, statuses: tuple[str, ...]) -> str:
    """The list page: open work first, newest first."""
    evaluated = data_today is not None
    today = data_today or dt.datetime.now(dt.UTC).date()
    from serviceloop import glossary
    from serviceloop.reviews import AWAITING_PLAN, CLOSED

    filters = " ".join(
        f'<a href="reviews?{urlencode({"status": s})}">{e(glossary.status(s, "en"))}</a>' for s in statuses
    )
    nav = f'<nav>Show: <a href="reviews">all</a> {filters}</nav>'
    ordered = sorted(reviews, key=lambda r: (r["status"] in CLOSED, -r["detected_on"].toordinal(), r["review_id"]))
    rows = []
    for r in ordered:
        href = _review_href(r["review_id"])
        overdue = r["status"] in AWAITING_PLAN and r["due_date"] < today
        due = f'<span class="overdue">{e(r["due_date"])} (overdue)</span>' if overdue else e(r["due_date"])
        report = (
            f'<a href="reviews/{href}/report" target="_blank" rel="noopener">report</a>' if r["report_path"] else ""
        )
        rows.append(
            [
                f'<a href="reviews/{href}">{e(r["review_id"])}</a>',
                status_badge(r["status"]),
                f'<span class="sev-{e(r["severity"])}">{e(r["severity"])}</span>',
                e(r["segment"]),
                e(glossary.metric(r["metric"], "en")),
                e(r["owner_name"]),
                f"{(today - r['detected_on']).days} d",
                due,
                f'<a href="reviews/{href}#evidence">{e(r["evidence"])} findings</a>',
                report,
            ]
        )
    heading = TITLE + (f": {glossary.status(status, 'en')}" if status else "")
    meta = (
        f"{len(reviews)} reviews. Age and due dates on the data's clock: the drift monitor last evaluated "
        f"{e(today)}. Act on a review with <code>serviceloop reviews</code>."
        if evaluated
        else "The drift monitor has not evaluated any day yet."
    )
    table = (
        _table(
            ["review", "status", "severity", "team", "metric", "owner", "age", "due", "evidence", "report"], rows, (6,)
        )
        if rows
        else "<p>No reviews.</p>"
    )
    return page(heading, f"<h1>{e(heading)}</h1><p class='meta'>{meta}</p>{nav}<br>{table}")


def render_review(r: dict, today: dt.date, language: str) -> str:
    """One review: what moved, the evidence, the measured effect, alerts and its history."""
    from serviceloop import glossary
    from serviceloop.alerts import describe_change
    from serviceloop.reviews import CLOSED

    rid = r["review_id"]
    causes = r.get("top_causes") or []
    change = describe_change(
        r["metric"], r["reference_value"], r["current_value"], r["effect"], unit=r.get("effect_unit")
    )
    facts = [
        ("team", e(r["segment"])),
        ("metric", e(glossary.metric(r["metric"], "en"))),
        ("change", e(change)),
        ("stage", e(r.get("stage"))),
        ("since", f"{e(r['since'])} (detected {e(r['detected_on'])})"),
        ("severity", f'<span class="sev-{e(r["severity"])}">{e(r["severity"])}</span>'),
        ("owner", f"{e(r['owner_name'])} &lt;{e(r['owner_email'])}&gt;"),
        ("escalation", e(r.get("escalation_email"))),
        ("due", e(r["due_date"])),
        ("age", f"{(today - r['detected_on']).days} days (data's clock: {e(today)})"),
        ("top delay causes", e(", ".join(f"{glossary.cause(c['cause'], 'en')} ({c['tickets']})" for c in causes))),
        ("implemented on", e(r.get("implemented_on"))),
        ("verified on", e(r.get("verified_on"))),
        ("dismissed because", e(r.get("dismiss_reason"))),
        ("opened", utc(r.get("opened_at"))),
        ("last change", utc(r.get("updated_at"))),
    ]
    if r["report_path"]:
        link = f'<a href="{_review_href(rid, "/report")}" target="_blank" rel="noopener">Evidently report</a>'
        facts.append(("report", link))
    lang = glossary.language(language)
    if lang != "en":
        # The owner's alerts speak this language: the same words, from the glossary.
        owner_change = describe_change(
            r["metric"], r["reference_value"], r["current_value"], r["effect"], lang, r.get("effect_unit")
        )
        words = f"{glossary.metric(r['metric'], lang)}: {owner_change} · {glossary.status(r['status'], lang)}"
        facts.insert(3, ("in the owner's language", f'<span lang="{_HTML_LANG[lang]}">{e(words)}</span>'))
    facts_html = "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts if v) + "</dl>"

    evidence = [
        [
            e(f["as_of"]),
            f"{f['reference_value']:.3g}",
            f"{f['current_value']:.3g}",
            f"{f['effect']:+.3g}",
            "" if f["p_value"] is None else f"{f['p_value']:.2g}",
            f'<a href="{_review_href(rid, "/evidence/" + quote(str(f["as_of"])) + "/report")}" target="_blank" '
            'rel="noopener">report</a>'
            if f["report_path"]
            else "",
        ]
        for f in r["evidence"]
    ]
    effects = [
        [
            e(x["measured_on"]),
            f"{e(x['post_start'])} to {e(x['post_end'])}",
            e(x["post_n"]),
            f"{x['effect_vs_drift']:+.3f} [{x['effect_vs_drift_low']:+.3f}, {x['effect_vs_drift_high']:+.3f}]",
            f"{x['effect_vs_baseline']:+.3f} [{x['effect_vs_baseline_low']:+.3f}, {x['effect_vs_baseline_high']:+.3f}]",
            e(x["days_within_tolerance"]),
            "yes" if x["verified"] else "no",
        ]
        for x in r["effects"]
    ]
    history = [
        [
            utc(h["changed_at"]),
            f"{status_badge(h['from_status'])} &rarr; {status_badge(h['status'])}"
            if h["from_status"]
            else status_badge(h["status"]),
            e(h["actor"]),
            e(h["effective_on"]),
            e(h["note"]),
        ]
        for h in r["history"]
    ]
    alerts = [
        [e(a["kind"]), e(a["route"]), e(a["recipient"]), e(a["status"]), e(a["attempts"]), utc(a["sent_at"]),
         e(a["last_error"])]
        for a in r["alerts"]
    ]  # fmt: skip
    actions = (
        ""
        if r["status"] in CLOSED
        else "".join(
            f"<li><code>{e(cmd.format(review_id=rid))}</code>: {e(what['en'])}</li>" for cmd, what in glossary.ACTIONS
        )
    )
    body = [
        '<nav><a href="../reviews">&larr; all reviews</a></nav>',
        f"<h1>{e(rid)} {status_badge(r['status'])}</h1>",
        facts_html,
        '<h2 id="evidence">Evidence</h2>',
        _table(["day", "reference", "current", "effect", "p-value", "report"], evidence, (1, 2, 3, 4))
        if evidence
        else "<p>No findings recorded.</p>",
    ]
    if effects:
        body += [
            "<h2>Measured effect</h2>",
            _table(
                ["measured on", "post-change window", "tickets", "vs drift [95% CI]", "vs baseline [95% CI]",
                 "days within tolerance", "verified"],
                effects,
            ),
        ]  # fmt: skip
    body += ['<h2 id="history">History</h2>', _table(["when", "status", "by", "effective on", "note"], history)]
    if alerts:
        body += ["<h2>Alerts</h2>", _table(["kind", "route", "to", "status", "attempts", "sent", "error"], alerts)]
    if actions:
        body += ["<h2>Act on it</h2>", f"<ul>{actions}</ul>"]
    return page(rid, "".join(body))


def quality_data(conn, team: str | None, grain: str, start: dt.date | None) -> dict:
    """What the Service quality page shows, from the marts only (``conn`` may be the analyst's).

    Without ``start``, the latest period the data covers completely (the one in progress
    while there is none), as ``kpi_scorecard`` picks its month.
    """
    from serviceloop import quality

    with conn.cursor() as cur:
        team_rows = quality.teams(cur)
        if team is not None and team not in {t for t, _ in team_rows}:
            raise quality.QualityError(f"no team {team!r} in marts.dim_team")
        starts = quality.periods(cur, grain)
        cur.execute("select max(kpi_date) from marts.kpi_organisation_daily")
        last_day = cur.fetchone()[0]
        if start is None:
            whole = [s for s in starts if last_day is not None and quality.period_end(s, grain) <= last_day]
            start = (whole or starts or [quality.period_start(dt.date.today(), grain)])[0]
        start = quality.period_start(start, grain)
        return {
            "team": team,
            "grain": grain,
            "start": start,
            "end": quality.period_end(start, grain),
            "last_day": last_day,
            "teams": team_rows,
            "starts": starts,
            "scorecard": quality.scorecard(cur, team, grain, start),
            "trend": quality.trend(cur, team, grain, start),
            "targets": {t["metric"]: t["target"] for t in quality.targets(cur) if t["priority"] == "all"},
            "stages": quality.stage_breakdown(cur, team, grain, start),
        }


def render_quality(data: dict, reviews: list[dict]) -> str:
    """The Service quality page: pickers, scorecard, trends, stages, and the segment's reviews."""
    from serviceloop import glossary, quality
    from serviceloop.reviews import CLOSED

    team, grain = data["team"], data["grain"]
    names = dict(data["teams"])
    segment = names.get(team, team) if team else "Organisation"

    def option(value: str, label: str, chosen: bool) -> str:
        return f'<option value="{e(value)}"{" selected" if chosen else ""}>{e(label)}</option>'

    segments = option("organisation", "Organisation", team is None) + "".join(
        option(t, name, t == team) for t, name in data["teams"]
    )
    grains = "".join(option(g, g, g == grain) for g in quality.GRAINS)
    starts = "".join(option(str(s), str(s), s == data["start"]) for s in data["starts"])
    form = (
        '<form class="pick" method="get" action="quality">'
        f'<label>segment <select name="segment" id="segment">{segments}</select></label>'
        f'<label>period <select name="period" id="period">{grains}</select></label>'
        f'<label>starting <select name="start" id="start">{starts}</select></label>'
        '<button type="submit" id="show">Show</button></form>'
    )
    scope = f"?{urlencode({'team': team})}" if team else ""
    meta = (
        f'<span id="segment-name">{e(segment)}</span>, {e(grain)} {e(data["start"])} to {e(data["end"])}; '
        f"data through {e(data['last_day'])}. From the KPI marts, read as the read-only analyst role."
    )
    charts = "".join(
        quality.svg_trend(m, data["trend"]["periods"], data["trend"][m], data["targets"].get(m), "en")
        for m in quality.HEADLINE
    )
    open_reviews = [r for r in reviews if r["status"] not in CLOSED]
    improvement = (
        f"<p>5. continuous improvement: {len(open_reviews)} open improvement reviews, "
        f"{sum(r['status'] == 'verified' for r in reviews)} verified.</p>"
    )
    links = "".join(
        f'<li><a href="reviews/{_review_href(r["review_id"])}">{e(r["review_id"])}</a> {status_badge(r["status"])} '
        f"{e(glossary.metric(r['metric'], 'en'))}, detected {e(r['detected_on'])}"
        + (
            f' &middot; <a href="reviews/{_review_href(r["review_id"], "/report")}" target="_blank" rel="noopener">'
            "drift report</a>"
            if r["report_path"]
            else ""
        )
        + "</li>"
        for r in sorted(reviews, key=lambda r: (r["status"] in CLOSED, -r["detected_on"].toordinal()))
    )
    body = [
        f'<nav><a href="reviews{scope}">Improvement reviews</a></nav>',
        f"<h1>{e(QUALITY_TITLE)}</h1>",
        form,
        f'<p class="meta">{meta}</p>',
        '<h2 id="scorecard">Scorecard against the targets</h2>',
        quality.scorecard_table(data["scorecard"], "en"),
        f'<h2 id="trends">Trends, last {quality.TREND_LENGTH[grain]} {e(grain)}s (target dashed)</h2>',
        f'<div class="charts">{charts}</div>',
        '<h2 id="stages">Where the cycle time goes, stage by stage</h2>',
        quality.stage_table(data["stages"], "en") if data["stages"] else "<p>No tickets closed in this period.</p>",
        improvement,
        '<h2 id="links">Reviews and drift reports</h2>',
        f"<ul>{links}</ul>" if links else "<p>No improvement reviews.</p>",
        f'<p><a href="reviews{scope}">All improvement reviews{e(" of " + segment) if team else ""}</a></p>',
    ]
    return page(QUALITY_TITLE, "".join(body))


def quality_page(analyst_conn, conn, team: str | None, grain: str, start: dt.date | None) -> str:
    """The whole page: the marts as the analyst, the segment's reviews from the warehouse."""
    from serviceloop import reviews

    data = quality_data(analyst_conn, team, grain, start)
    return render_quality(data, reviews.list_reviews(conn, None, team))


def analyst_connect():
    """A connection as the read-only analyst role (``serviceloop.roles``)."""
    import psycopg2

    from serviceloop import roles, warehouse

    dsn = roles.analyst_url(warehouse.url())
    password = os.environ.get(roles.ANALYST_PASSWORD_ENV)
    return psycopg2.connect(dsn, **({"password": password} if password else {}))


def report_file(report_path: str | None, reports_root: Path) -> Path | None:
    """The report's file if it is an HTML file inside ``reports_root``, else None."""
    if not report_path:
        return None
    root = reports_root.resolve()
    path = Path(report_path).resolve()
    if path.suffix != ".html" or not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _team_language(conn, team: str) -> str:
    with conn.cursor() as cur:
        cur.execute("select to_regclass('reference.teams') is not null")
        if not cur.fetchone()[0]:
            return "en"
        cur.execute("select language from reference.teams where team_id = %s", (team,))
        row = cur.fetchone()
    return row[0] if row and row[0] else "en"


def create_app():
    """The FastAPI app the API server mounts at ``URL_PREFIX``."""
    import psycopg2
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

    from serviceloop import reviews, warehouse
    from serviceloop.settings import paths

    app = FastAPI(
        title=f"ServiceLoop {TITLE}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(requires_access_view(AccessView.WEBSITE))],
    )

    def _html(text: str, status_code: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status_code, headers={"Content-Security-Policy": _PAGE_CSP})

    @app.exception_handler(HTTPException)
    async def _error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 401 and request.method == "GET":
            # Not logged in (or the login expired): Airflow's login brings the browser back.
            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        return _html(page("Error", f"<h1>{exc.status_code}</h1><p>{e(exc.detail)}</p>"), exc.status_code)

    def _review(conn, review_id: str) -> dict:
        try:
            return reviews.get(conn, review_id)
        except reviews.ReviewError as exc:
            raise HTTPException(404, str(exc)) from None

    def _connect():
        try:
            return warehouse.connect(dsn=warehouse.pipeline_url())
        except (warehouse.WarehouseError, OSError) as exc:
            raise HTTPException(503, f"the warehouse cannot be reached: {exc}") from None

    def _report(report_path: str | None) -> FileResponse:
        path = report_file(report_path, paths().reports)
        if path is None:
            raise HTTPException(404, "no report file for this in the reports folder")
        return FileResponse(
            path, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": _REPORT_CSP}
        )

    @app.get("/reviews", response_class=HTMLResponse)
    def review_list(status: str | None = None, team: str | None = None) -> HTMLResponse:
        with _connect() as conn:
            try:
                rows = reviews.list_reviews(conn, status, team)
            except reviews.ReviewError as exc:
                raise HTTPException(400, str(exc)) from None
            today = reviews.data_today(conn)
        return _html(render_list(rows, today, status, reviews.STATUSES))

    @app.get("/reviews/{review_id}", response_class=HTMLResponse)
    def review_page(review_id: str) -> HTMLResponse:
        with _connect() as conn:
            review = _review(conn, review_id)
            # A review exists only once the drift monitor has evaluated a day.
            today, language = reviews.data_today(conn) or review["detected_on"], _team_language(conn, review["segment"])
        return _html(render_review(review, today, language))

    @app.get("/quality", response_class=HTMLResponse)
    def quality_view(segment: str = "organisation", period: str = "week", start: dt.date | None = None) -> HTMLResponse:
        from serviceloop.quality import QualityError

        team = None if segment == "organisation" else segment
        try:
            with contextlib.closing(analyst_connect()) as analyst, _connect() as conn:
                return _html(quality_page(analyst, conn, team, period, start))
        except QualityError as exc:
            raise HTTPException(404, str(exc)) from None
        except psycopg2.OperationalError as exc:
            raise HTTPException(503, f"the warehouse cannot be reached as the analyst: {exc}") from None

    @app.get("/reviews/{review_id}/report")
    def review_report(review_id: str) -> FileResponse:
        with _connect() as conn:
            review = _review(conn, review_id)
        return _report(review["report_path"])

    @app.get("/reviews/{review_id}/evidence/{day}/report")
    def evidence_report(review_id: str, day: dt.date) -> FileResponse:
        with _connect() as conn:
            review = _review(conn, review_id)
        paths_of_day = [f["report_path"] for f in review["evidence"] if f["as_of"] == day and f["report_path"]]
        return _report(paths_of_day[0] if paths_of_day else None)

    return app


class ReviewsApp:
    """The ASGI app, built on its first request, so that importing the plugin costs nothing."""

    def __init__(self) -> None:
        self._app = None

    def __repr__(self) -> str:
        return f"serviceloop.ui.ReviewsApp({URL_PREFIX})"

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)
