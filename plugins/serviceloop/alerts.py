"""Alerts to the manager who owns a review, and to the data engineers when delivery fails.

Review events that alert someone:

- ``opened``: the owner, when a review opens (every review without one gets it, whichever
  run opened it);
- ``reminder``: the owner, when a review passes its due date with no action planned;
- ``escalation``: the owner's escalation contact, after the second deadline;
- ``verified``: the owner, when the effect measurement verifies the change.

Each goes by the route of the segment's team in the reference data (``alert_route``,
``language``, ``alert_conn_id``; see ``serviceloop.notifiers``), in the route's language,
with the KPI, stage and cause names of ``serviceloop.glossary``.

**Exactly once.** Every event has a key, ``<review id>.<kind>``, recorded in
``monitoring.alerts`` (status ``sending``) and committed *before* anything is sent; only
the run whose insert created the key sends. A retried or rerun task finds the key and sends
nothing. A send that fails is tried ``ATTEMPTS`` times, then the row is marked ``failed``
with the error (the review shows the attempt), the data engineers are told once, and a later
run tries that key again. A process killed between sending and marking leaves ``sending``:
such a key is never sent again automatically (at most once beats twice), and it is visible
in ``serviceloop reviews show``.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import time
from dataclasses import asdict, dataclass, field
from email.utils import format_datetime
from pathlib import Path

from serviceloop import glossary, notifiers
from serviceloop.drift import METRICS_BY_NAME, QUARTILE_UNIT

log = logging.getLogger(__name__)

ATTEMPTS = 3
BACKOFF_S = 0.5
KINDS = ("opened", "reminder", "escalation", "verified")


@dataclass
class AlertResult:
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def describe_change(
    metric: str, reference: float, current: float, effect: float, lang: str = "en", unit: str | None = None
) -> str:
    """The change in words; ``unit`` is the finding's ``effect_unit`` (a duration's finding on
    the fast window's lower quartile quotes the quartile, not the median)."""
    m = METRICS_BY_NAME[metric]
    zh = glossary.language(lang) == "zh"
    if m.kind == "continuous":
        quartile = unit == QUARTILE_UNIT
        if zh:
            return (
                f"{'下四分位数' if quartile else '中位数'} {reference:.1f} 小时 -> {current:.1f} 小时（{effect:+.0%}）"
            )
        return f"{'lower quartile' if quartile else 'median'} {reference:.1f} h -> {current:.1f} h ({effect:+.0%})"
    if m.kind == "binary":
        if zh:
            return f"{reference:.1%} -> {current:.1%}（恶化 {effect * 100:+.1f} 个百分点）"
        return f"{reference:.1%} -> {current:.1%} ({effect * 100:+.1f} percentage points worse)"
    if zh:
        return f"均值 {reference:.2f} -> {current:.2f}（恶化 {effect:+.2f} 分）"
    return f"mean {reference:.2f} -> {current:.2f} ({effect:+.2f} points worse)"


def _effect_text(metric: str, value: float) -> str:
    m = METRICS_BY_NAME[metric]
    if m.kind == "continuous":
        return f"{value:+.0%}"
    if m.kind == "binary":
        return f"{value * 100:+.1f} pp"
    return f"{value:+.2f}"


def _value_text(metric: str, value: float) -> str:
    m = METRICS_BY_NAME[metric]
    if m.kind == "continuous":
        return f"{value:.1f} h"
    if m.kind == "binary":
        return f"{value:.1%}"
    return f"{value:.2f}"


def _review_context(cur, review_id: str) -> dict:
    """Everything a message about the review says, with its team's route settings."""
    cur.execute(
        """
        select r.*, to_jsonb(t) as team
        from monitoring.improvement_reviews as r
        left join reference.teams as t on r.segment_type = 'team' and t.team_id = r.segment
        where r.review_id = %s
        """,
        (review_id,),
    )
    row = cur.fetchone()
    review = dict(zip([d.name for d in cur.description], row, strict=True))
    team = review.pop("team") or {}
    review["team_name"] = team.get("team_name")
    review["alert_route"] = team.get("alert_route")
    review["language"] = glossary.language(team.get("language"))
    review["alert_conn_id"] = team.get("alert_conn_id")
    review["escalation_email"] = review.get("escalation_email") or team.get("escalation_email")
    cur.execute("select * from monitoring.review_effects where review_id = %s", (review_id,))
    effect = cur.fetchone()
    review["effect_row"] = dict(zip([d.name for d in cur.description], effect, strict=True)) if effect else None
    cur.execute(
        "select reference_start, reference_end, current_start, current_end from monitoring.drift_runs "
        "where segment_type = %s and segment = %s and as_of = %s",
        (review["segment_type"], review["segment"], review["detected_on"]),
    )
    review["windows"] = cur.fetchone()
    return review


def _daily_series(cur, review: dict) -> list[tuple[dt.date, float]]:
    """The metric's daily value for the chart, from the reference window to the latest day shown."""
    if review["windows"] is None:
        return []
    cur.execute("select to_regclass('marts.fct_tickets') is not null")
    if not cur.fetchone()[0]:
        return []
    m = METRICS_BY_NAME[review["metric"]]
    end = review["windows"][3]
    if review.get("effect_row"):
        end = max(end, review["effect_row"]["post_end"])
    value = f"{m.column}::int" if m.kind == "binary" else m.column
    agg = f"percentile_cont(0.5) within group (order by {value})" if m.kind == "continuous" else f"avg({value})"
    # The column comes from the metric catalogue, never from input.
    cur.execute(
        f"""
        select resolved_date, {agg}
        from marts.fct_tickets
        where team_id = %s and resolved_date between %s and %s and {m.column} is not null
        group by resolved_date order by resolved_date
        """,
        (review["segment"], review["windows"][0], end),
    )
    return [(d, float(v)) for d, v in cur.fetchall()]


def compose(review: dict, kind: str = "opened", chart_png: bytes | None = None) -> notifiers.Message:
    """The message for a review event, in the language of the review's route."""
    lang = review.get("language") or "en"
    m = METRICS_BY_NAME[review["metric"]]
    team = review.get("team_name") or review["segment"]
    metric_name = glossary.metric(m.name, lang)
    subject = glossary.phrase(
        f"subject.{kind}", lang, metric=metric_name, team=team, since=review["since"], review_id=review["review_id"]
    )
    addressee = review.get("owner_name") or "team owner"
    recipient = review.get("owner_email") or "unrouted@localhost"
    intro_values = {"owner": review.get("owner_name") or team}
    if kind == "escalation":
        addressee = recipient = review.get("escalation_email") or recipient
    change = describe_change(
        m.name, review["reference_value"], review["current_value"], review["effect"], lang, review.get("effect_unit")
    )
    causes = review.get("top_causes") or []
    causes_text = (
        ", ".join(f"{glossary.cause(c['cause'], lang)} ({c['tickets']})" for c in causes)
        if causes
        else glossary.phrase("no_causes", lang)
    )
    report = Path(review["report_path"]).as_uri() if review.get("report_path") else glossary.phrase("no_report", lang)
    rows = [
        (glossary.phrase("what", lang), metric_name),
        (glossary.phrase("how_much", lang), change),
        (
            glossary.phrase("where", lang),
            f"{review['segment_type']} {team}, {glossary.phrase('stage', lang)} {glossary.stage(m.stage, lang)}",
        ),
        (
            glossary.phrase("since", lang),
            glossary.phrase("since_detail", lang, since=review["since"], detected=review["detected_on"]),
        ),
        (glossary.phrase("severity", lang), glossary.phrase(f"severity.{review['severity']}", lang)),
        (glossary.phrase("causes", lang), causes_text),
        (
            glossary.phrase("review", lang),
            glossary.phrase(
                "review_detail",
                lang,
                review_id=review["review_id"],
                status=glossary.status(review["status"], lang),
                due=review["due_date"],
            ),
        ),
    ]
    effect = review.get("effect_row")
    if kind == "verified" and effect:
        rows.append(
            (
                glossary.phrase("effect", lang),
                glossary.phrase(
                    "effect_detail",
                    lang,
                    post=_value_text(m.name, effect["post_value"]),
                    days=(effect["post_end"] - effect["post_start"]).days + 1,
                    baseline=_value_text(m.name, effect["baseline_value"]),
                    drift=_value_text(m.name, effect["drift_value"]),
                    vs_drift=_effect_text(m.name, effect["effect_vs_drift"]),
                    low=_effect_text(m.name, effect["effect_vs_drift_low"]),
                    high=_effect_text(m.name, effect["effect_vs_drift_high"]),
                ),
            )
        )
    rows.append((glossary.phrase("report", lang), report))
    why = glossary.phrase("why", lang, test=m.test_name, minimum=m.min_effect_text)
    actions = [] if kind == "verified" else [
        (cmd.format(review_id=review["review_id"]), what[glossary.language(lang)]) for cmd, what in glossary.ACTIONS
    ]  # fmt: skip
    greeting = glossary.phrase("greeting", lang, name=addressee)
    intro = glossary.phrase(f"intro.{kind}", lang, **intro_values)
    width = max(len(label) for label, _ in rows) + 2
    text = "\n".join(
        [greeting, "", intro, "", *(f"{label + ':':<{width}}{value}" for label, value in rows), "", why]
        + (
            [f"\n{glossary.phrase('act', lang)}:", *(f"  {cmd}\n      {what}" for cmd, what in actions)]
            if actions
            else []
        )
        + ["", glossary.phrase("signature", lang), ""]
    )
    e = html.escape
    table = "".join(
        f"<tr><th align='left' style='padding-right:1em'>{e(label)}</th><td>"
        + (f"<a href='{e(value)}'>{e(value)}</a>" if value.startswith("file:") else e(value))
        + "</td></tr>"
        for label, value in rows
    )
    acts = "".join(f"<li><code>{e(cmd)}</code> &mdash; {e(what)}</li>" for cmd, what in actions)
    chart = f"<p><img src='cid:chart@serviceloop' alt='{e(metric_name)}'></p>" if chart_png else ""
    body_html = (
        f"<html><head><meta charset='utf-8'></head><body><p>{e(greeting)}</p><p>{e(intro)}</p>"
        f"<table>{table}</table>{chart}<p>{e(why)}</p>"
        + (f"<p><b>{e(glossary.phrase('act', lang))}</b></p><ul>{acts}</ul>" if actions else "")
        + f"<p>{e(glossary.phrase('signature', lang))}</p></body></html>"
    )
    key = f"{review['review_id']}.{kind}"
    event_day = {
        "opened": review["detected_on"],
        "verified": review.get("verified_on") or review["detected_on"],
    }.get(kind, review["due_date"])
    return notifiers.Message(
        key=key,
        subject=subject,
        text=text,
        html=body_html,
        recipient=recipient,
        # Derived from the review, so a message written again after a crash is the same message.
        message_id=f"<{key}@serviceloop.localhost>",
        date=format_datetime(dt.datetime.combine(event_day, dt.time(), dt.UTC)),
        chart_png=chart_png,
        headers={"X-ServiceLoop-Review": review["review_id"], "X-ServiceLoop-Event": kind},
        fields={
            "kind": kind,
            "review_id": review["review_id"],
            "segment": review["segment"],
            "team": team,
            "metric": m.name,
            "metric_label": metric_name,
            "stage": glossary.stage(m.stage, lang),
            "reference_value": review["reference_value"],
            "current_value": review["current_value"],
            "effect": review["effect"],
            "since": review["since"],
            "detected_on": review["detected_on"],
            "due_date": review["due_date"],
            "status": review["status"],
            "top_delay_causes": causes,
            "report": report,
            "recipient": recipient,
            "language": glossary.language(lang),
        },
    )


def _chart(cur, review: dict) -> bytes | None:
    from serviceloop import charts

    daily = _daily_series(cur, review)
    if not daily or review["windows"] is None:
        return None
    ref_start, ref_end, cur_start, cur_end = review["windows"]
    return charts.metric_chart(
        review["metric"],
        daily,
        reference=(ref_start, ref_end),
        current=(cur_start, cur_end),
        baseline=review["reference_value"],
        changed_on=review.get("implemented_on"),
        lang=review.get("language") or "en",
    )


def pending_events(conn, today: dt.date | None = None) -> list[tuple[str, str]]:
    """(review_id, kind) of every review event that has no alert yet, or whose alert failed."""
    from serviceloop import reviews

    with conn.cursor() as cur:
        cur.execute(
            """
            select r.review_id, k.kind
            from monitoring.improvement_reviews as r
            cross join (values ('opened'), ('verified')) as k (kind)
            where (k.kind = 'opened' or r.status = 'verified')
            order by r.detected_on, r.review_id, k.kind = 'verified'
            """
        )
        events = cur.fetchall()
    today = today or reviews.data_today(conn)
    if today is not None:
        events += reviews.overdue(conn, today)
    with conn.cursor() as cur:
        cur.execute("select alert_key from monitoring.alerts where status <> 'failed'")
        done = {k for (k,) in cur.fetchall()}
    return [(rid, kind) for rid, kind in events if f"{rid}.{kind}" not in done]


def _claim(conn, key: str, review_id: str | None, kind: str, route: notifiers.Route, subject: str) -> bool:
    """Record the alert before sending; True if this caller is the one to send it."""
    with conn.cursor() as cur:
        cur.execute(
            """
            insert into monitoring.alerts (alert_key, review_id, kind, route, recipient, subject, location, status,
                attempts)
            values (%s, %s, %s, %s, %s, %s, '', 'sending', 0)
            on conflict (alert_key) do update set status = 'sending', route = excluded.route,
                recipient = excluded.recipient, subject = excluded.subject, sent_at = now()
            where monitoring.alerts.status = 'failed'
            returning alert_key
            """,
            (key, review_id, kind, route.kind, route.recipient, subject),
        )
        claimed = cur.fetchone() is not None
    conn.commit()
    return claimed


def deliver(
    conn,
    review_id: str | None,
    kind: str,
    route: notifiers.Route,
    message: notifiers.Message,
    *,
    outbox: Path,
    connections=None,
) -> tuple[str, str | None]:
    """Send one message exactly once; returns (status, location): sent, failed or skipped."""
    if not _claim(conn, message.key, review_id, kind, route, message.subject):
        return "skipped", None
    error = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            location = notifiers.send(route, message, outbox=outbox)
        except notifiers.DeliveryError as exc:
            error = str(exc)
            log.warning("alert %s by %s, attempt %d of %d: %s", message.key, route.kind, attempt, ATTEMPTS, error)
            if attempt < ATTEMPTS:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            continue
        with conn.cursor() as cur:
            cur.execute(
                """update monitoring.alerts set status = 'sent', location = %s, attempts = attempts + %s,
                   last_error = null, sent_at = now() where alert_key = %s""",
                (location, attempt, message.key),
            )
        conn.commit()
        return "sent", location
    with conn.cursor() as cur:
        cur.execute(
            """update monitoring.alerts set status = 'failed', attempts = attempts + %s, last_error = %s
               where alert_key = %s""",
            (ATTEMPTS, error, message.key),
        )
    conn.commit()
    if kind != "delivery_failed":
        _report_delivery_failure(conn, message, route, error, outbox=outbox, connections=connections)
    return "failed", None


def _report_delivery_failure(conn, message, route, error, *, outbox: Path, connections) -> None:
    de_route = notifiers.data_engineers_route(connections)
    key = f"{message.key}.delivery_failed"
    text = (
        f"The alert {message.key} to {route.recipient} by route '{route.kind}' failed {ATTEMPTS} times.\n"
        f"Last error: {error}\n\nIt is recorded as failed in monitoring.alerts and will be tried again "
        "on the next drift run.\n\n-- ServiceLoop\n"
    )
    note = notifiers.Message(
        key=key,
        subject=glossary.phrase("subject.delivery_failed", "en", alert_key=message.key),
        text=text,
        html=f"<html><body><pre>{html.escape(text)}</pre></body></html>",
        recipient=de_route.recipient,
        message_id=f"<{key}@serviceloop.localhost>",
        fields={"kind": "delivery_failed", "alert_key": message.key, "route": route.kind, "error": error},
    )
    status, _ = deliver(conn, None, "delivery_failed", de_route, note, outbox=outbox, connections=connections)
    if status == "failed":
        log.error("the data engineers could not be told that %s failed either", message.key)


def send_review_alerts(
    conn,
    reviews_opened: list[str] | None = None,
    *,
    outbox: Path,
    connections=None,
    today: dt.date | None = None,
) -> AlertResult:
    """Send every review event not yet alerted: opened, reminders, escalations, verified.

    ``connections`` resolves an Airflow connection id to its fields (None when undefined);
    without it every route falls back to the outbox. ``reviews_opened`` is informational:
    every review without an "opened" alert gets one, whichever run opened it.
    """
    result = AlertResult()
    for review_id, kind in pending_events(conn, today):
        with conn.cursor() as cur:
            review = _review_context(cur, review_id)
            chart = _chart(cur, review)
        recipient = review["escalation_email"] if kind == "escalation" else review["owner_email"]
        route = notifiers.resolve(
            review["alert_route"], recipient, review["language"], review["alert_conn_id"], connections
        )
        message = compose(review, kind, chart)
        status, location = deliver(conn, review_id, kind, route, message, outbox=outbox, connections=connections)
        if status == "sent":
            result.sent.append(location)
        elif status == "failed":
            result.failed.append(message.key)
    return result
