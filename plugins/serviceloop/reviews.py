"""Improvement reviews: a drift finding becomes work with an owner and a due date.

One open review per segment and metric (a partial unique index enforces it): a repeated
finding adds evidence to the open review instead of opening another. The owner is the
segment's manager from the teams reference data.

The lifecycle: open -> acknowledged -> action_planned -> implemented -> verified; any status
before verified may instead end in dismissed (a false alarm, with a reason). Planning may skip
the acknowledgement.

``verified`` is set only by the effect measurement (``serviceloop.verification``), never by
hand; an implemented change that did not work goes back to ``action_planned``. Every
transition is validated and written to ``monitoring.review_history`` with its note.

Deadlines run on the data's clock (the last day the drift monitor evaluated), not the wall
clock, so a replayed or simulated period behaves as it would have live: a review with no
action planned by its due date gets a reminder, and ``ESCALATE_AFTER_DAYS`` later an
escalation to the owner's escalation contact.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from psycopg2.extras import Json

from serviceloop.drift import METRICS_BY_NAME

DUE_DAYS = {"high": 3, "medium": 7}
ESCALATE_AFTER_DAYS = 3
TOP_CAUSES = 3

STATUSES = ("open", "acknowledged", "action_planned", "implemented", "verified", "dismissed")
CLOSED = ("verified", "dismissed")
# Statuses whose deadline still runs: the owner has not yet said what will be done.
AWAITING_PLAN = ("open", "acknowledged")
TRANSITIONS = {
    "open": ("acknowledged", "action_planned", "dismissed"),
    "acknowledged": ("action_planned", "dismissed"),
    "action_planned": ("implemented", "dismissed"),
    "implemented": ("verified", "action_planned", "dismissed"),
    "verified": (),
    "dismissed": (),
}


MEASUREMENT_ACTOR = "effect measurement"


class ReviewError(ValueError):
    """A request the review cannot honour; the message says why and what is allowed."""


@dataclass
class ReviewResult:
    opened: list[str] = field(default_factory=list)
    evidence_added: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def severity(metric: str, effect: float) -> str:
    return "high" if effect >= 2 * METRICS_BY_NAME[metric].min_effect else "medium"


def review_id(segment: str, metric: str, detected_on: dt.date) -> str:
    return f"R-{segment}-{metric}-{detected_on:%Y%m%d}"


def open_from_findings(conn, finding_ids: list[str] | None = None) -> ReviewResult:
    """Open or extend reviews for findings; all unreviewed findings when no ids are given."""
    result = ReviewResult()
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext('serviceloop.reviews'))")
        cur.execute(
            """
            select f.finding_id, f.segment_type, f.segment, f.metric, f.as_of, f.since, f.reference_value,
                f.current_value, f.effect, f.effect_unit, r.report_path, t.owner_name, t.owner_email,
                t.escalation_email, r.current_start, r.current_end
            from monitoring.drift_findings as f
            join monitoring.drift_runs as r on r.run_id = f.run_id
            left join reference.teams as t on f.segment_type = 'team' and t.team_id = f.segment
            where f.is_finding
                and (%(ids)s is null or f.finding_id = any(%(ids)s))
                and not exists (select 1 from monitoring.review_evidence as e where e.finding_id = f.finding_id)
            order by f.as_of, f.segment, f.metric
            """,
            {"ids": finding_ids},
        )
        findings = cur.fetchall()
        for (fid, seg_type, seg, metric, as_of, since, ref_v, cur_v, effect, unit, report, owner, email,
             escalation, cur_start, cur_end) in findings:  # fmt: skip
            cur.execute(
                """
                select review_id from monitoring.improvement_reviews
                where segment_type = %s and segment = %s and metric = %s and status not in ('verified', 'dismissed')
                """,
                (seg_type, seg, metric),
            )
            row = cur.fetchone()
            if row is None:
                sev = severity(metric, effect)
                rid = review_id(seg, metric, as_of)
                cur.execute(
                    """
                    insert into monitoring.improvement_reviews (review_id, segment_type, segment, metric, severity,
                        owner_name, owner_email, detected_on, since, due_date, reference_value, current_value,
                        effect, effect_unit, report_path, stage, top_causes, escalation_email)
                    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    """,
                    (
                        rid, seg_type, seg, metric, sev, owner, email, as_of, since,
                        as_of + dt.timedelta(days=DUE_DAYS[sev]), ref_v, cur_v, effect, unit, report,
                        METRICS_BY_NAME[metric].stage, Json(top_delay_causes(cur, seg, cur_start, cur_end)),
                        escalation,
                    ),
                )  # fmt: skip
                cur.execute(
                    """insert into monitoring.review_history (review_id, status, note, actor, effective_on)
                       values (%s, 'open', %s, 'drift monitor', %s)""",
                    (rid, f"opened by drift finding {fid}", as_of),
                )
                result.opened.append(rid)
            else:
                (rid,) = row
                cur.execute("update monitoring.improvement_reviews set updated_at = now() where review_id = %s", (rid,))
            cur.execute(
                "insert into monitoring.review_evidence (review_id, finding_id) values (%s, %s) on conflict do nothing",
                (rid, fid),
            )
            result.evidence_added += 1
    return result


def top_delay_causes(cur, team: str, start: dt.date | None, end: dt.date | None) -> list[dict]:
    """The most frequent delay causes of the team's tickets resolved in the window."""
    cur.execute("select to_regclass('marts.fct_tickets') is not null")
    if not cur.fetchone()[0] or start is None:
        return []
    cur.execute(
        """
        select delay_cause, count(*) as tickets
        from marts.fct_tickets
        where team_id = %s and resolved_date between %s and %s and delay_cause is not null
        group by delay_cause
        order by tickets desc, delay_cause
        limit %s
        """,
        (team, start, end, TOP_CAUSES),
    )
    return [{"cause": cause, "tickets": n} for cause, n in cur.fetchall()]


def _current_status(cur, review_id: str) -> str:
    cur.execute("select status from monitoring.improvement_reviews where review_id = %s for update", (review_id,))
    row = cur.fetchone()
    if row is None:
        raise ReviewError(f"no review {review_id!r} (`serviceloop reviews list` shows them)")
    return row[0]


def transition(
    conn,
    review_id: str,
    to_status: str,
    *,
    note: str | None = None,
    actor: str = "cli",
    effective_on: dt.date | None = None,
    reason: str | None = None,
) -> str:
    """Move a review to ``to_status``; returns the status it left. Raises ReviewError if not allowed."""
    if to_status not in STATUSES:
        raise ReviewError(f"unknown status {to_status!r}; statuses: {', '.join(STATUSES)}")
    if to_status == "verified" and actor != MEASUREMENT_ACTOR:
        raise ReviewError("a review is verified by the effect measurement, not by hand")
    if to_status == "dismissed" and not (reason and reason.strip()):
        raise ReviewError("dismissing a review needs a reason (--reason): it counts as a false alarm")
    if to_status == "implemented" and effective_on is None:
        raise ReviewError("an implemented review needs the date the change took effect (--on YYYY-MM-DD)")
    with conn.cursor() as cur:
        current = _current_status(cur, review_id)
        if to_status not in TRANSITIONS[current]:
            allowed = ", ".join(TRANSITIONS[current]) or "nothing (the review is closed)"
            raise ReviewError(f"review {review_id} is {current}: it cannot become {to_status}; allowed: {allowed}")
        if to_status == "implemented":
            cur.execute("select detected_on from monitoring.improvement_reviews where review_id = %s", (review_id,))
            (detected_on,) = cur.fetchone()
            if effective_on < detected_on - dt.timedelta(days=30):
                raise ReviewError(f"the change took effect on {effective_on}, long before the drift was detected")
        cur.execute(
            """
            update monitoring.improvement_reviews set status = %s, updated_at = now(),
                implemented_on = case when %s = 'implemented' then %s
                    when %s = 'action_planned' then null else implemented_on end,
                verified_on = case when %s = 'verified' then %s else verified_on end,
                dismiss_reason = case when %s = 'dismissed' then %s else dismiss_reason end
            where review_id = %s
            """,
            (to_status, to_status, effective_on, to_status, to_status, effective_on, to_status, reason, review_id),
        )
        cur.execute(
            """insert into monitoring.review_history (review_id, from_status, status, note, actor, effective_on)
               values (%s, %s, %s, %s, %s, %s)""",
            (review_id, current, to_status, note if to_status != "dismissed" else (note or reason), actor,
             effective_on),
        )  # fmt: skip
    return current


def acknowledge(conn, review_id: str, note: str | None = None, actor: str = "cli") -> str:
    return transition(conn, review_id, "acknowledged", note=note, actor=actor)


def plan(conn, review_id: str, note: str | None = None, actor: str = "cli") -> str:
    if not (note and note.strip()):
        raise ReviewError("planning an action needs a note saying what will be done (--note)")
    return transition(conn, review_id, "action_planned", note=note, actor=actor)


def implemented(conn, review_id: str, on: dt.date, note: str | None = None, actor: str = "cli") -> str:
    return transition(conn, review_id, "implemented", note=note, actor=actor, effective_on=on)


def dismiss(conn, review_id: str, reason: str, note: str | None = None, actor: str = "cli") -> str:
    return transition(conn, review_id, "dismissed", note=note, actor=actor, reason=reason)


def list_reviews(conn, status: str | None = None, segment: str | None = None) -> list[dict]:
    if status is not None and status not in STATUSES:
        raise ReviewError(f"unknown status {status!r}; statuses: {', '.join(STATUSES)}")
    with conn.cursor() as cur:
        cur.execute(
            """
            select review_id, segment, metric, status, severity, owner_name, detected_on, since, due_date,
                implemented_on, verified_on, report_path,
                (select count(*) from monitoring.review_evidence as e where e.review_id = r.review_id) as evidence
            from monitoring.improvement_reviews as r
            where (%(status)s is null or status = %(status)s) and (%(segment)s is null or segment = %(segment)s)
            order by detected_on, review_id
            """,
            {"status": status, "segment": segment},
        )
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def get(conn, review_id: str) -> dict:
    """One review with its history, evidence, effect measurement and alerts."""
    with conn.cursor() as cur:
        cur.execute("select * from monitoring.improvement_reviews where review_id = %s", (review_id,))
        row = cur.fetchone()
        if row is None:
            raise ReviewError(f"no review {review_id!r} (`serviceloop reviews list` shows them)")
        review = dict(zip([d.name for d in cur.description], row, strict=True))
        queries = {
            "history": """select changed_at, from_status, status, actor, effective_on, note
                from monitoring.review_history where review_id = %s order by changed_at, status""",
            "evidence": """select f.as_of, f.reference_value, f.current_value, f.effect, f.p_value, f.report_path
                from monitoring.review_evidence as e join monitoring.drift_findings as f using (finding_id)
                where e.review_id = %s order by f.as_of""",
            "effects": "select * from monitoring.review_effects where review_id = %s",
            "alerts": """select alert_key, kind, route, recipient, status, attempts, last_error, sent_at
                from monitoring.alerts where review_id = %s order by sent_at, alert_key""",
        }
        for name, sql in queries.items():
            cur.execute(sql, (review_id,))
            cols = [d.name for d in cur.description]
            review[name] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return review


def data_today(conn) -> dt.date | None:
    """The data's clock: the last day the drift monitor evaluated."""
    with conn.cursor() as cur:
        cur.execute("select max(as_of) from monitoring.drift_runs")
        return cur.fetchone()[0]


def overdue(conn, today: dt.date) -> list[tuple[str, str]]:
    """(review_id, kind) for every reminder and escalation due on ``today``'s data clock."""
    with conn.cursor() as cur:
        cur.execute(
            """
            select review_id, due_date from monitoring.improvement_reviews
            where status = any(%s) and due_date < %s order by review_id
            """,
            (list(AWAITING_PLAN), today),
        )
        events = []
        for rid, due in cur.fetchall():
            events.append((rid, "reminder"))
            if today > due + dt.timedelta(days=ESCALATE_AFTER_DAYS):
                events.append((rid, "escalation"))
    return events


def judged_precision(conn) -> dict:
    """The detector's precision as owners judged its reviews: a dismissed review is a false alarm.

    Reviews that reached a plan (action planned, implemented, verified) count as true alarms;
    open and acknowledged ones are not judged yet.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            select count(*) filter (where status in ('action_planned', 'implemented', 'verified')),
                count(*) filter (where status = 'dismissed'),
                count(*) filter (where status in ('open', 'acknowledged'))
            from monitoring.improvement_reviews
            """
        )
        confirmed, dismissed, unjudged = cur.fetchone()
    judged = confirmed + dismissed
    return {
        "true_alarms": confirmed,
        "false_alarms": dismissed,
        "not_judged": unjudged,
        "precision": confirmed / judged if judged else None,
    }
