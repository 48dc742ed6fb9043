"""Drift in the quality metrics, per team, judged so that managers can trust an alert.

For each day D not yet evaluated (the *as-of* day) and each team, the current window is the
7 days ending on D and the reference is the 28 days before it: whole weeks on both sides,
so the weekday mix matches (service demand is weekly-seasonal). Tickets are taken by the
day they were resolved, from ``marts.fct_tickets``.

Evidently computes the statistics, one report per team and day with one ``ValueDrift`` per
metric. The method follows the metric's type:

- resolution time (continuous, heavily right-skewed): Mann-Whitney U, rank-based, so a
  handful of very long tickets neither hides nor fakes a shift;
- SLA breach (a yes/no outcome): the two-proportion z-test;
- CSAT (ordinal 1-5, many ties): Mann-Whitney U.

A statistical shift alone is not a finding: at hundreds of tickets a week a tiny change is
"significant". A finding needs all of: p below the metric's threshold (0.01, because every
team is tested every day), a practical effect at least the metric's minimum (relative
change of the median for durations, percentage points for rates, points for CSAT), the
worse direction, and at least ``MIN_SAMPLE`` tickets on each side. Improvements are stored
with ``direction = 'better'`` and never alerted.

The minimum effects sit above the natural week-to-week swing of a healthy team. Tickets of
one week share the queue's state, so their resolution times move together: on simulated
teams of 80-250 tickets a week the weekly median swings by up to +60 % with no cause (and
Mann-Whitney, which assumes independent tickets, calls that significant). Hence: the median
resolution time must double (+100 %), SLA breaches rise by 8 percentage points, CSAT fall
by half a point. A staffing shortage passes these within three days.

Each finding also estimates *since when* the metric moved: the day in the current window
that best splits the reference-plus-current series into a before and an after (the largest
standardised difference of means, a one-change-point CUSUM estimate).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CURRENT_DAYS = 7
REFERENCE_DAYS = 28
MIN_SAMPLE = 30


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    column: str
    kind: str  # "continuous" | "binary" | "ordinal"
    method: str  # Evidently stattest
    better: str  # "lower" | "higher"
    min_effect: float
    effect_unit: str
    stage: str  # where in the five-stage service process the metric is measured
    threshold: float = 0.01

    @property
    def test_name(self) -> str:
        return {"mannw": "Mann-Whitney U", "z": "two-proportion z"}.get(self.method, self.method)

    @property
    def min_effect_text(self) -> str:
        if self.kind == "continuous":
            return f"{self.min_effect:+.0%} on the median"
        if self.kind == "binary":
            return f"{self.min_effect * 100:g} percentage points"
        return f"{self.min_effect:g} points"


METRICS: tuple[Metric, ...] = (
    Metric(
        "resolution_time", "Resolution time", "resolution_hours", "continuous", "mannw", "lower",
        1.0, "relative change of the median", "3. collaborative execution",
    ),
    Metric(
        "sla_breach", "SLA resolution breaches", "resolution_breached", "binary", "z", "lower",
        0.08, "percentage points", "4. result evaluation",
    ),
    Metric(
        "csat", "Customer satisfaction (CSAT)", "csat", "ordinal", "mannw", "higher",
        0.5, "points on the 1-5 scale", "4. result evaluation",
    ),
)  # fmt: skip
METRICS_BY_NAME = {m.name: m for m in METRICS}


@dataclass
class DriftResult:
    as_of_days: list[str] = field(default_factory=list)
    runs: int = 0
    evaluations: int = 0
    finding_ids: list[str] = field(default_factory=list)
    improvements: int = 0
    reports: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def windows(as_of: dt.date) -> tuple[dt.date, dt.date, dt.date, dt.date]:
    """(reference_start, reference_end, current_start, current_end), all inclusive."""
    current_start = as_of - dt.timedelta(days=CURRENT_DAYS - 1)
    reference_end = current_start - dt.timedelta(days=1)
    reference_start = reference_end - dt.timedelta(days=REFERENCE_DAYS - 1)
    return reference_start, reference_end, current_start, as_of


def summary_value(metric: Metric, values: pd.Series) -> float:
    if metric.kind == "continuous":
        return float(values.median())
    return float(values.mean())


def effect_size(metric: Metric, reference: float, current: float) -> float:
    """Positive when the metric moved in its worse direction."""
    if metric.kind == "continuous":
        change = (current - reference) / reference if reference else 0.0
    else:
        change = current - reference
    return change if metric.better == "lower" else -change


def onset(daily_days: np.ndarray, values: np.ndarray, current_start: dt.date, as_of: dt.date) -> dt.date:
    """The day in the current window that best splits the series into before and after."""
    best_day, best_score = current_start, -np.inf
    scale = values.std() or 1.0
    day = current_start
    while day <= as_of:
        after = daily_days >= np.datetime64(day)
        n_after, n_before = after.sum(), (~after).sum()
        if n_after and n_before:
            diff = abs(values[after].mean() - values[~after].mean()) / scale
            score = diff * np.sqrt(n_before * n_after / (n_before + n_after))
            if score > best_score:
                best_day, best_score = day, score
        day += dt.timedelta(days=1)
    return best_day


def last_complete_day(conn) -> dt.date | None:
    """The last day the helpdesk tickets have been extracted through."""
    with conn.cursor() as cur:
        cur.execute("select max(window_end) from ops.batches where entity = 'tickets'")
        (end,) = cur.fetchone()
    if end is None:
        return None
    return (end - dt.timedelta(microseconds=1)).astimezone(dt.UTC).date()


def days_to_evaluate(conn, last_day: dt.date) -> list[dt.date]:
    with conn.cursor() as cur:
        cur.execute("select min(resolved_date) from marts.fct_tickets")
        (first_resolved,) = cur.fetchone()
        cur.execute("select max(as_of) from monitoring.drift_runs")
        (done_until,) = cur.fetchone()
    if first_resolved is None:
        return []
    earliest = first_resolved + dt.timedelta(days=CURRENT_DAYS + REFERENCE_DAYS - 1)
    start = max(earliest, done_until + dt.timedelta(days=1)) if done_until else earliest
    return [start + dt.timedelta(days=i) for i in range((last_day - start).days + 1)]


def _load_tickets(conn, start: dt.date, end: dt.date) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(
            """
            select team_id, resolved_date, resolution_hours, resolution_breached::int as resolution_breached, csat
            from marts.fct_tickets
            where resolved_date between %s and %s and resolution_hours is not null
            """,
            (start, end),
        )
        rows = cur.fetchall()
    frame = pd.DataFrame(rows, columns=["team_id", "resolved_date", "resolution_hours", "resolution_breached", "csat"])
    frame["resolved_date"] = pd.to_datetime(frame["resolved_date"])
    for col in ("resolution_hours", "csat"):
        frame[col] = frame[col].astype(float)
    return frame


def _evidently_report(reference: pd.DataFrame, current: pd.DataFrame):
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    columns = [m.column for m in METRICS]
    definition = DataDefinition(
        numerical_columns=[m.column for m in METRICS if m.kind != "binary"],
        categorical_columns=[m.column for m in METRICS if m.kind == "binary"],
    )

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        for m in METRICS:
            if m.kind == "binary":
                frame[m.column] = frame[m.column].map({1: "yes", 0: "no"})
        return Dataset.from_pandas(frame, data_definition=definition)

    report = Report([ValueDrift(column=m.column, method=m.method, threshold=m.threshold) for m in METRICS])
    snapshot = report.run(current_data=dataset(current), reference_data=dataset(reference))
    p_values = {}
    for item in snapshot.dict()["metrics"]:
        p_values[item["config"]["column"]] = float(item["value"])
    return snapshot, p_values


def run(conn, reports_dir: Path, teams: list[str] | None = None) -> DriftResult:
    """Evaluate every day since the last evaluated one, up to the last complete day."""
    from serviceloop import schema
    from serviceloop.verification import pinned_baselines

    schema.ensure(conn)
    result = DriftResult()
    last_day = last_complete_day(conn)
    if last_day is None:
        return result
    days = days_to_evaluate(conn, last_day)
    if not days:
        return result
    first_ref = windows(days[0])[0]
    # Baselines pinned by verified reviews replace the rolling reference where it holds the episode.
    pins = pinned_baselines(conn, days[0], days[-1])
    first_ref = min([first_ref, *(pin[0] for pin in pins.values())])
    tickets = _load_tickets(conn, first_ref, days[-1])
    if teams is None:
        teams = sorted(tickets["team_id"].unique())
    with conn.cursor() as cur:
        cur.execute(
            "select segment, metric from monitoring.drift_findings where is_finding and as_of = %s",
            (days[0] - dt.timedelta(days=1),),
        )
        previous = {(seg, met) for seg, met in cur.fetchall()}
    for as_of in days:
        ref_start, ref_end, cur_start, cur_end = windows(as_of)
        in_ref = tickets["resolved_date"].between(pd.Timestamp(ref_start), pd.Timestamp(ref_end))
        in_cur = tickets["resolved_date"].between(pd.Timestamp(cur_start), pd.Timestamp(cur_end))
        today = set()
        for team in teams:
            of_team = tickets["team_id"] == team
            reference, current = tickets[in_ref & of_team], tickets[in_cur & of_team]
            run_id = f"team:{team}:{as_of.isoformat()}"
            rows = []
            snapshot, p_values = _evidently_report(reference, current)
            for metric in METRICS:
                ref_vals, cur_vals = reference[metric.column].dropna(), current[metric.column].dropna()
                pin = pins.get((team, metric.name))
                if pin and pin[2] <= as_of <= pin[3]:
                    # A verified review pinned the last healthy baseline: the rolling reference
                    # still holds the degraded period, which would hide a relapse.
                    pinned = tickets[
                        of_team & tickets["resolved_date"].between(pd.Timestamp(pin[0]), pd.Timestamp(pin[1]))
                    ]
                    ref_vals = pinned[metric.column].dropna()
                    p_values = {**p_values, metric.column: _evidently_report(pinned, current)[1][metric.column]}
                if len(ref_vals) == 0 or len(cur_vals) == 0:
                    continue
                ref_value, cur_value = summary_value(metric, ref_vals), summary_value(metric, cur_vals)
                effect = effect_size(metric, ref_value, cur_value)
                p_value = p_values.get(metric.column)
                drifted = p_value is not None and p_value < metric.threshold
                enough = len(ref_vals) >= MIN_SAMPLE and len(cur_vals) >= MIN_SAMPLE
                direction = "worse" if effect > 0 else "better"
                is_finding = drifted and enough and effect >= metric.min_effect
                since = None
                if is_finding:
                    series = pd.concat([reference, current]).dropna(subset=[metric.column])
                    since = onset(
                        series["resolved_date"].to_numpy(dtype="datetime64[D]"),
                        series[metric.column].to_numpy(dtype=float),
                        cur_start,
                        cur_end,
                    )
                    today.add((team, metric.name))
                elif drifted and enough and effect <= -metric.min_effect:
                    result.improvements += 1
                rows.append(
                    (
                        f"{run_id}:{metric.name}", run_id, as_of, "team", team, metric.name, metric.method,
                        p_value, drifted, len(ref_vals), len(cur_vals), ref_value, cur_value, effect,
                        metric.effect_unit, direction, is_finding, since,
                    )
                )  # fmt: skip
                result.evaluations += 1
            report_path = None
            # An HTML report is kept where a finding episode starts (it is the evidence a review
            # links to) and for the latest day; the days in between are in the tables.
            new_episode = any(t == team and (t, m) not in previous for (t, m) in today)
            if new_episode or as_of == days[-1]:
                path = reports_dir / "drift" / team / f"{as_of.isoformat()}.html"
                path.parent.mkdir(parents=True, exist_ok=True)
                snapshot.save_html(str(path))
                report_path = str(path)
                result.reports.append(report_path)
            _store(conn, run_id, as_of, team, (ref_start, ref_end, cur_start, cur_end), report_path, rows)
            result.runs += 1
            result.finding_ids += [r[0] for r in rows if r[16]]
        previous = today
        result.as_of_days.append(as_of.isoformat())
    log.info(
        "drift: %d days x %d teams, %d findings, %d improvements",
        len(days), len(teams), len(result.finding_ids), result.improvements,
    )  # fmt: skip
    return result


def _store(conn, run_id, as_of, team, bounds, report_path, rows) -> None:
    from psycopg2.extras import execute_values

    with conn.cursor() as cur:
        cur.execute("delete from monitoring.drift_runs where run_id = %s", (run_id,))
        cur.execute(
            """
            insert into monitoring.drift_runs (run_id, as_of, segment_type, segment, reference_start,
                reference_end, current_start, current_end, report_path)
            values (%s, %s, 'team', %s, %s, %s, %s, %s, %s)
            """,
            (run_id, as_of, team, *bounds, report_path),
        )
        if rows:
            execute_values(
                cur,
                """
                insert into monitoring.drift_findings (finding_id, run_id, as_of, segment_type, segment, metric,
                    method, p_value, drifted, reference_n, current_n, reference_value, current_value, effect,
                    effect_unit, direction, is_finding, since)
                values %s
                """,
                rows,
            )
            cur.execute(
                "update monitoring.drift_findings set report_path = %s where run_id = %s", (report_path, run_id)
            )
