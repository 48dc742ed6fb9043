"""Did the change work? The effect of an implemented review, measured and verified.

Once the owner records the day a change took effect (``reviews implemented --on``), every
drift run measures, for each implemented review, three windows of the segment's tickets
(by the day they were resolved, as the drift monitor takes them):

- the **baseline**: the 4 weeks the drift was detected against (the last healthy level);
- the **drift window**: the 7 days of the last finding before the change;
- the **post-change window**: the 7 days ending on each day after the change, counting only
  days on or after it.

The effect is the metric's own effect measure (relative change of the median for
durations, percentage points for rates, points for CSAT; positive = worse) of the latest
post-change window against the drift window and against the baseline, each with a 95 %
bootstrap confidence interval (tickets resampled with replacement).

**Verification rule**: the post-change window is back within tolerance of the baseline
(its effect against the baseline below ``TOLERANCE`` x the metric's minimum effect that
matters) on ``VERIFY_DAYS`` consecutive days, each window with at least ``MIN_SAMPLE``
tickets. The review then becomes ``verified``, and its baseline is **pinned**: while the
drift monitor's rolling 4-week reference still contains the degraded period, it would
compare against a worse level (hiding a relapse, calling the recovery an improvement), so
for those days the monitor uses the pinned baseline for that segment and metric instead.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from serviceloop.drift import CURRENT_DAYS, METRICS_BY_NAME, MIN_SAMPLE, REFERENCE_DAYS, effect_size

log = logging.getLogger(__name__)

POST_DAYS = CURRENT_DAYS
VERIFY_DAYS = 3
TOLERANCE = 0.5
BOOTSTRAP_RESAMPLES = 2000


@dataclass
class VerificationResult:
    measured: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Effect:
    estimate: float
    low: float
    high: float


def _statistic(kind: str, samples: np.ndarray) -> np.ndarray:
    """The metric's summary along the last axis: the median of durations, else the mean."""
    return np.median(samples, axis=-1) if kind == "continuous" else samples.mean(axis=-1)


def bootstrap_effect(metric_name: str, before: np.ndarray, after: np.ndarray, seed: int = 0) -> Effect:
    """The effect of ``after`` against ``before`` with a 95 % percentile bootstrap interval."""
    metric = METRICS_BY_NAME[metric_name]
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if len(before) == 0 or len(after) == 0:
        raise ValueError("an effect needs tickets on both sides")
    rng = np.random.default_rng(seed)
    b = _statistic(metric.kind, rng.choice(before, (BOOTSTRAP_RESAMPLES, len(before))))
    a = _statistic(metric.kind, rng.choice(after, (BOOTSTRAP_RESAMPLES, len(after))))
    if metric.kind == "continuous":
        b = np.where(b == 0, np.nan, b)
        change = (a - b) / b
    else:
        change = a - b
    draws = change if metric.better == "lower" else -change
    estimate = effect_size(metric, float(_statistic(metric.kind, before)), float(_statistic(metric.kind, after)))
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return Effect(float(estimate), float(low), float(high))


def within_tolerance(metric_name: str, baseline: np.ndarray, window: np.ndarray) -> bool:
    metric = METRICS_BY_NAME[metric_name]
    if len(window) < MIN_SAMPLE:
        return False
    value = effect_size(metric, float(_statistic(metric.kind, baseline)), float(_statistic(metric.kind, window)))
    return value <= TOLERANCE * metric.min_effect


def _tickets(cur, team: str, metric_name: str, start: dt.date, end: dt.date) -> tuple[np.ndarray, np.ndarray]:
    metric = METRICS_BY_NAME[metric_name]
    column = metric.column
    value = f"{column}::int" if metric.kind == "binary" else column
    # The column comes from the metric catalogue, never from input.
    cur.execute(
        f"""
        select resolved_date, {value}::float
        from marts.fct_tickets
        where team_id = %s and resolved_date between %s and %s and {column} is not null
            and resolution_hours is not null
        """,
        (team, start, end),
    )
    rows = cur.fetchall()
    days = np.array([r[0] for r in rows], dtype="datetime64[D]")
    values = np.array([r[1] for r in rows], dtype=float)
    return days, values


def _windows_of(cur, review: dict) -> tuple[tuple[dt.date, dt.date], tuple[dt.date, dt.date]]:
    """(baseline window, drift window) of a review, from the drift runs behind its evidence."""
    cur.execute(
        """
        select r.reference_start, r.reference_end from monitoring.drift_runs as r
        where r.segment_type = %s and r.segment = %s and r.as_of = %s
        """,
        (review["segment_type"], review["segment"], review["detected_on"]),
    )
    baseline = cur.fetchone()
    cur.execute(
        """
        select r.current_start, r.current_end
        from monitoring.review_evidence as e
        join monitoring.drift_findings as f using (finding_id)
        join monitoring.drift_runs as r on r.run_id = f.run_id
        where e.review_id = %s and f.as_of < %s
        order by f.as_of desc limit 1
        """,
        (review["review_id"], review["implemented_on"]),
    )
    drift = cur.fetchone()
    if baseline is None or drift is None:
        raise ValueError(f"review {review['review_id']} has no drift runs to measure against")
    return tuple(baseline), tuple(drift)


def measure(conn, today: dt.date | None = None) -> VerificationResult:
    """Measure every implemented review's effect up to ``today`` (default: the data's last day)."""
    from serviceloop import reviews

    result = VerificationResult()
    today = today or reviews.data_today(conn)
    if today is None:
        return result
    with conn.cursor() as cur:
        cur.execute(
            """
            select review_id, segment_type, segment, metric, detected_on, implemented_on
            from monitoring.improvement_reviews
            where status = 'implemented' and implemented_on is not null and segment_type = 'team'
            order by review_id
            """
        )
        cols = [d.name for d in cur.description]
        pending = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    for review in pending:
        with conn.cursor() as cur:
            _measure_one(conn, cur, review, today, result)
    log.info("effects: %d measured, %d verified", len(result.measured), len(result.verified))
    return result


def _measure_one(conn, cur, review: dict, today: dt.date, result: VerificationResult) -> None:
    metric = METRICS_BY_NAME[review["metric"]]
    implemented_on: dt.date = review["implemented_on"]
    first_end = implemented_on + dt.timedelta(days=POST_DAYS - 1)
    if today < first_end:
        return  # not a whole post-change window yet
    (base_start, base_end), (drift_start, drift_end) = _windows_of(cur, review)
    _, baseline = _tickets(cur, review["segment"], metric.name, base_start, base_end)
    _, drift = _tickets(cur, review["segment"], metric.name, drift_start, drift_end)
    days, values = _tickets(cur, review["segment"], metric.name, implemented_on, today)
    if len(baseline) == 0 or len(drift) == 0:
        return
    # Walk the post-change windows day by day; the review is verified on the day the rule
    # first holds, and the effect is reported for that window (else for the latest one).
    streak, end = 0, first_end
    while end <= today:
        start = end - dt.timedelta(days=POST_DAYS - 1)
        in_window = (days >= np.datetime64(start)) & (days <= np.datetime64(end))
        streak = streak + 1 if within_tolerance(metric.name, baseline, values[in_window]) else 0
        if streak >= VERIFY_DAYS:
            break
        end += dt.timedelta(days=1)
    measured_on = min(end, today)
    post_start = measured_on - dt.timedelta(days=POST_DAYS - 1)
    post = values[(days >= np.datetime64(post_start)) & (days <= np.datetime64(measured_on))]
    if len(post) == 0:
        return
    vs_drift = bootstrap_effect(metric.name, drift, post)
    vs_base = bootstrap_effect(metric.name, baseline, post)
    verified = streak >= VERIFY_DAYS
    cur.execute(
        """
        insert into monitoring.review_effects (review_id, measured_on, baseline_value, drift_value, post_value,
            post_start, post_end, post_n, effect_vs_drift, effect_vs_drift_low, effect_vs_drift_high,
            effect_vs_baseline, effect_vs_baseline_low, effect_vs_baseline_high, days_within_tolerance, verified)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        on conflict (review_id) do update set measured_on = excluded.measured_on,
            baseline_value = excluded.baseline_value, drift_value = excluded.drift_value,
            post_value = excluded.post_value, post_start = excluded.post_start, post_end = excluded.post_end,
            post_n = excluded.post_n, effect_vs_drift = excluded.effect_vs_drift,
            effect_vs_drift_low = excluded.effect_vs_drift_low, effect_vs_drift_high = excluded.effect_vs_drift_high,
            effect_vs_baseline = excluded.effect_vs_baseline,
            effect_vs_baseline_low = excluded.effect_vs_baseline_low,
            effect_vs_baseline_high = excluded.effect_vs_baseline_high,
            days_within_tolerance = excluded.days_within_tolerance, verified = excluded.verified
        """,
        (
            review["review_id"], measured_on, float(_statistic(metric.kind, baseline)),
            float(_statistic(metric.kind, drift)), float(_statistic(metric.kind, post)), post_start, measured_on, len(post), vs_drift.estimate, vs_drift.low,
            vs_drift.high, vs_base.estimate, vs_base.low, vs_base.high, streak, verified,
        ),
    )  # fmt: skip
    result.measured.append(review["review_id"])
    if verified:
        _verify(conn, cur, review, measured_on, (base_start, base_end), vs_base)
        result.verified.append(review["review_id"])
    conn.commit()


def _verify(conn, cur, review: dict, today: dt.date, baseline: tuple[dt.date, dt.date], vs_base: Effect) -> None:
    from serviceloop import reviews

    note = (
        f"back within tolerance for {VERIFY_DAYS} days: effect against the baseline {vs_base.estimate:+.3f} "
        f"(95% CI {vs_base.low:+.3f} to {vs_base.high:+.3f}); baseline {baseline[0]}..{baseline[1]} pinned"
    )
    reviews.transition(
        conn, review["review_id"], "verified", note=note, actor=reviews.MEASUREMENT_ACTOR, effective_on=today
    )
    # The rolling reference of as-of day D starts at D - 34: it holds days from before the
    # change until D = implemented_on + 33.
    valid_until = review["implemented_on"] + dt.timedelta(days=CURRENT_DAYS + REFERENCE_DAYS - 2)
    cur.execute(
        """
        insert into monitoring.pinned_baselines (segment_type, segment, metric, review_id, reference_start,
            reference_end, valid_from, valid_until)
        values (%s, %s, %s, %s, %s, %s, %s, %s)
        on conflict (segment_type, segment, metric) do update set review_id = excluded.review_id,
            reference_start = excluded.reference_start, reference_end = excluded.reference_end,
            valid_from = excluded.valid_from, valid_until = excluded.valid_until, pinned_at = now()
        """,
        (
            review["segment_type"], review["segment"], review["metric"], review["review_id"], *baseline,
            today + dt.timedelta(days=1), valid_until,
        ),
    )  # fmt: skip


def pinned_baselines(conn, first: dt.date, last: dt.date) -> dict[tuple[str, str], tuple[dt.date, ...]]:
    """{(team, metric): (reference_start, reference_end, valid_from, valid_until)} of pins within [first, last]."""
    with conn.cursor() as cur:
        cur.execute("select to_regclass('monitoring.pinned_baselines') is not null")
        if not cur.fetchone()[0]:
            return {}
        cur.execute(
            """
            select segment, metric, reference_start, reference_end, valid_from, valid_until
            from monitoring.pinned_baselines
            where segment_type = 'team' and valid_from <= %s and valid_until >= %s
            """,
            (last, first),
        )
        return {(seg, met): (rs, re_, vf, vu) for seg, met, rs, re_, vf, vu in cur.fetchall()}
