"""Improvement reviews: a drift finding becomes work with an owner and a due date.

One open review per segment and metric (a partial unique index enforces it): a repeated
finding adds evidence to the open review instead of opening another. The owner is the
segment's manager from the teams reference data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from serviceloop.drift import METRICS_BY_NAME

DUE_DAYS = {"high": 3, "medium": 7}


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
                f.current_value, f.effect, f.effect_unit, r.report_path, t.owner_name, t.owner_email
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
        for fid, seg_type, seg, metric, as_of, since, ref_v, cur_v, effect, unit, report, owner, email in findings:
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
                        effect, effect_unit, report_path)
                    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    """,
                    (
                        rid, seg_type, seg, metric, sev, owner, email, as_of, since,
                        as_of + dt.timedelta(days=DUE_DAYS[sev]), ref_v, cur_v, effect, unit, report,
                    ),
                )  # fmt: skip
                cur.execute(
                    "insert into monitoring.review_history (review_id, status, note) values (%s, 'open', %s)",
                    (rid, f"opened by drift finding {fid}"),
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
