"""Alerts to the manager who owns a review.

The default route writes a standard e-mail message (``.eml``) into the outbox folder, where
any mail client opens it. Delivery is exactly once: an alert is recorded in
``monitoring.alerts`` in the same transaction that produces it, under a key made of the
review and the kind of alert, and the message's file name is that key, so a retry after a
crash rewrites the same file instead of adding a second one. Every review without an
"opened" alert gets one, whichever run opened it.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from serviceloop.drift import METRICS_BY_NAME

SENDER = "ServiceLoop <serviceloop@localhost>"
# Headers are not folded at 78 columns: some readers keep the fold's space in the subject.
MESSAGE_POLICY = policy.default.clone(max_line_length=998)


@dataclass
class AlertResult:
    sent: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _describe_change(metric: str, reference: float, current: float, effect: float) -> str:
    m = METRICS_BY_NAME[metric]
    if m.kind == "continuous":
        return f"median {reference:.1f} h -> {current:.1f} h ({effect:+.0%})"
    if m.kind == "binary":
        return f"{reference:.1%} -> {current:.1%} ({effect * 100:+.1f} percentage points worse)"
    return f"mean {reference:.2f} -> {current:.2f} ({effect:+.2f} points worse)"


def compose(review: dict) -> EmailMessage:
    m = METRICS_BY_NAME[review["metric"]]
    change = _describe_change(review["metric"], review["reference_value"], review["current_value"], review["effect"])
    subject = f"[ServiceLoop] {m.label} worse for {review['team_name'] or review['segment']} since {review['since']}"
    report = Path(review["report_path"]).as_uri() if review["report_path"] else "(no report)"
    body = f"""Hello {review["owner_name"] or "team owner"},

ServiceLoop found a lasting change for the worse and opened an improvement review for you.

What moved:   {m.label}
By how much:  {change}
Where:        {review["segment_type"]} {review["team_name"] or review["segment"]}, stage {m.stage}
Since:        {review["since"]} (detected on {review["detected_on"]}; last 7 days against the 4 weeks before)
Severity:     {review["severity"]}
Review:       {review["review_id"]}, due {review["due_date"]}
Report:       {report}

The change is statistically real (Evidently, {m.test_name} test), larger than the
minimum that matters ({m.min_effect_text}) and based on enough tickets on both sides.

-- ServiceLoop
"""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = review["owner_email"] or "unrouted@localhost"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime.combine(review["detected_on"], dt.time(), dt.UTC))
    # Derived from the review, so a message written again after a crash is the same message.
    msg["Message-ID"] = f"<{review['review_id']}.opened@serviceloop.localhost>"
    msg["X-ServiceLoop-Review"] = review["review_id"]
    msg.set_content(body, cte="8bit")
    return msg


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def send_review_alerts(conn, reviews_opened: list[str] | None = None, *, outbox: Path) -> AlertResult:
    """Alert the owner of every review that has no "opened" alert yet."""
    result = AlertResult()
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext('serviceloop.alerts'))")
        cur.execute(
            """
            select r.review_id, r.segment_type, r.segment, r.metric, r.severity, r.owner_name, r.owner_email,
                r.detected_on, r.since, r.due_date, r.reference_value, r.current_value, r.effect, r.report_path,
                t.team_name
            from monitoring.improvement_reviews as r
            left join reference.teams as t on r.segment_type = 'team' and t.team_id = r.segment
            where not exists (
                select 1 from monitoring.alerts as a where a.review_id = r.review_id and a.kind = 'opened'
            )
            order by r.detected_on, r.review_id
            """
        )
        columns = [d.name for d in cur.description]
        for row in cur.fetchall():
            review = dict(zip(columns, row, strict=True))
            key = f"{review['review_id']}.opened"
            msg = compose(review)
            path = outbox / f"{key}.eml"
            _write_atomically(path, msg.as_bytes(policy=MESSAGE_POLICY))
            cur.execute(
                """
                insert into monitoring.alerts (alert_key, review_id, kind, route, recipient, subject, location)
                values (%s, %s, 'opened', 'outbox', %s, %s, %s)
                """,
                (key, review["review_id"], msg["To"], msg["Subject"], str(path)),
            )
            result.sent.append(str(path))
    return result
