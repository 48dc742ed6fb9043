"""How good is the drift monitor? Recall, precision, delay and false alerts on simulated truth.

``serviceloop evaluate-detection`` simulates the organisation (120 days, weekly seasonality,
public holidays) once per scenario and seed, runs the drift detector over every team and day
on the tickets, and scores its findings against the scenario's ground truth. Beside it, on
the same tickets, a baseline in the manner of Elementary's anomaly tests: a z-score on the
daily KPI value of each team against the same weekday in the 14 days before (threshold 3,
in the metric's worse direction; no z where the training values do not vary).

Scoring:

- *Realized shift*: a scenario changes the service but not the demand drawn, so the same seed
  without the scenario is its counterfactual. For each metric the scenario names, the shift
  is the effect (``drift.effect_size``) of the scenario's tickets against the counterfactual's,
  per 2-day window from the start; the first day it reaches 15 % relative (durations, counts,
  and CSAT, a 1-5 score: about 0.6 points) or 5 percentage points (rates) is when the shift
  is *due*. Like the resolution times, CSAT counts only what was known on that day: the
  surveys submitted by then (they come in up to 3 days after resolution). A metric that
  never reaches it is reported but not counted in recall.
- *Recall*: share of due (scenario, metric) pairs with a finding on that team and metric
  within 2 daily runs: the run on the due day counts as 1 (its data includes that day).
- *Precision*: finding episodes (consecutive days of one team and metric) on the scenario's
  team, overlapping the scenario (to 7 days after its end), over all episodes.
- *False alerts per 10 team-months*: episodes on the stable run (no scenario), per 10 x 30
  team-days evaluated.

Seeds: the minimum effects are calibrated on ``TUNING_SEEDS`` (101-106, stable runs only) and
scored on ``EVAL_SEEDS`` (1-3 by default, ``--seeds N`` for 1..N); the two sets never meet.

The tickets go to the detector as a frame in the shape ``drift.evaluate`` takes (built here
from the simulator's records with the same definitions as ``marts.fct_tickets``, except that
the SLA clock is wall-clock hours rather than business hours): the warehouse path would cost
a dbt build per scenario and seed, which does not fit a routine evaluation.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from serviceloop import drift, simulator

START = dt.date(2026, 6, 1)
DAYS = 120
SHIFT_DAY = 63  # day of the period a scenario starts: 5 weeks of reference and a stable month before
HOLIDAYS = (dt.date(2026, 7, 3), dt.date(2026, 8, 31), dt.date(2026, 9, 7))
EVAL_SEEDS = (1, 2, 3)
TUNING_SEEDS = (101, 102, 103, 104, 105, 106)
RELATIVE_SHIFT = 0.15
RATE_SHIFT = 0.05
WITHIN_RUNS = 2
AFTER_END_DAYS = 7
BASELINE_TRAINING_DAYS = 14
BASELINE_SENSITIVITY = 3.0


def scenarios(start: dt.date = START) -> dict[str, list]:
    """The scenario catalogue: name -> scenarios (holidays are added to every run)."""
    day = start + dt.timedelta(days=SHIFT_DAY)
    return {
        "stable": [],
        "staffing_shortage": [simulator.StaffingShortage("tech_support", day, 14, 0.5)],
        "technical_fault": [simulator.TechnicalFault("billing", day, days=4, volume=1.0, factor=1.5)],
        "process_change": [simulator.ProcessChange("accounts", day, days=28, hours=3.0)],
        "third_party_delay": [
            simulator.ThirdPartyDelay("field_service", day, category="repair_visit", days=21, share=0.6, factor=2.0)
        ],
        "csat_drop": [simulator.CsatDrop("onboarding", day, days=21, points=0.8)],
        "slow_creep": [simulator.SlowCreep("tech_support", day - dt.timedelta(days=7), days=42, factor=1.6)],
    }


def detector_config() -> drift.DriftConfig:
    """The monitor as configured (``SERVICELOOP_DRIFT_METRICS``, ``SERVICELOOP_DRIFT_FAST_DAYS``;
    defaults otherwise), per team, with the simulated holidays."""
    configured = drift.config_from_env()
    return replace(configured, segments=(("team_id",),), holidays=frozenset(HOLIDAYS))


# --- the ticket frame ------------------------------------------------------------------------


def ticket_frame(data: simulator.SimulatedData) -> pd.DataFrame:
    """The simulated tickets in ``drift.TICKET_COLUMNS`` shape, every ticket through to closure.

    The detector sees no more than it would have on each day: the resolved windows hold only
    tickets resolved by then, and the cohort windows cut every ticket at the as-of day's end.
    """
    full = data.full_lifecycle()
    t = full.tickets.set_index("ticket_id")
    ev = full.ticket_events
    hours = pd.Timedelta(hours=1)
    targets = simulator._load_reference().resolution_target_hours
    first_of = ev.groupby(["ticket_id", "event_type"])["occurred_at"].min().unstack()

    def waits(status: str) -> pd.Series:
        start = ev[ev.to_status == status].groupby("ticket_id")["occurred_at"]
        end = ev[ev.from_status == status].groupby("ticket_id")["occurred_at"]
        return ((end.max() - start.min()).dt.total_seconds() / 3600).reindex(t.index).fillna(0.0)

    surveys = full.surveys.sort_values("submitted_at").groupby("ticket_id").last()

    def naive(stamps: pd.Series) -> pd.Series:
        return stamps.dt.tz_convert("UTC").dt.tz_localize(None)

    resolved = t["resolved_at"]
    frame = pd.DataFrame(
        {
            "team_id": t["team_id"],
            "channel": t["channel"],
            "priority": t["priority"],
            "category": t["category"],
            "resolved_date": naive(resolved).dt.normalize(),
            "created_at": naive(t["created_at"]),
            "resolved_at": naive(resolved),
            "first_response_at": naive(t["first_response_at"]),
            "resolution_due_at": naive(t["created_at"] + t["priority"].map(targets) * hours),
            "resolution_hours": (resolved - t["created_at"]) / hours,
            "first_response_hours": (t["first_response_at"] - t["created_at"]) / hours,
            "resolution_breached": ((resolved - t["created_at"]) / hours > t["priority"].map(targets)).astype(float),
            "csat": surveys["csat"].astype(float).reindex(t.index),
            "csat_date": surveys["submitted_at"].dt.tz_localize(None).dt.normalize().reindex(t.index),
            "handoff_count": ev[ev.event_type == "handoff"].groupby("ticket_id").size().reindex(t.index).fillna(0.0),
            "reopened": (t["reopen_count"] > 0).astype(float),
            "intake_hours": (first_of["triaged"] - t["created_at"]) / hours,
            "assignment_hours": (t["first_response_at"] - first_of["triaged"].reindex(t.index)) / hours,
            "waiting_customer_hours": waits("pending_customer"),
            "waiting_third_party_hours": waits("pending_third_party"),
            "evaluation_hours": (t["closed_at"] - resolved) / hours,
            "delay_cause": t["delay_cause"],
        }
    )
    frame["execution_hours"] = (
        (resolved - t["first_response_at"]) / hours
        - frame["waiting_customer_hours"]
        - frame["waiting_third_party_hours"]
    )
    # Open tickets stay in: the cohort windows count them (a full lifecycle has few or none).
    return frame.reset_index(drop=True)


# --- detectors -------------------------------------------------------------------------------


def detector_alerts(frame: pd.DataFrame, days: list[dt.date], config: drift.DriftConfig) -> pd.DataFrame:
    """(segment, metric, as_of) of every finding of the drift monitor."""
    rows = [(e.segment, e.metric, e.as_of) for e in drift.evaluate(frame, days, config) if e.is_finding]
    return pd.DataFrame(rows, columns=["segment", "metric", "as_of"])


def daily_kpis(frame: pd.DataFrame) -> pd.DataFrame:
    """Team x day x metric: the daily KPI value a dashboard shows (median, mean or rate)."""
    out = []
    for metric in drift.METRICS:
        grouped = frame.dropna(subset=[metric.column]).groupby(["team_id", "resolved_date"])[metric.column]
        values = grouped.median() if metric.kind == "continuous" else grouped.mean()
        out.append(values.rename("value").reset_index().assign(metric=metric.name))
    return pd.concat(out, ignore_index=True)


def baseline_alerts(frame: pd.DataFrame, days: list[dt.date], metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Elementary-style anomalies: z of a day's KPI against the same weekday in the 14 days before
    (on the given metrics, all by default)."""
    kpis = daily_kpis(frame)
    if metrics is not None:
        kpis = kpis[kpis.metric.isin(list(metrics))]
    wanted = {np.datetime64(d) for d in days}
    rows = []
    for (team, metric_name), group in kpis.groupby(["team_id", "metric"]):
        metric = drift.METRICS_BY_NAME[metric_name]
        series = group.set_index("resolved_date")["value"]
        sign = 1.0 if metric.better == "lower" else -1.0
        for day, value in series.items():
            if np.datetime64(day.date()) not in wanted:
                continue
            training = series.reindex(
                [day - pd.Timedelta(days=k) for k in range(7, BASELINE_TRAINING_DAYS + 1, 7)]
            ).dropna()
            if len(training) < 2 or training.std() == 0:
                continue
            z = sign * (value - training.mean()) / training.std()
            if z > BASELINE_SENSITIVITY:
                rows.append((team, metric_name, day.date()))
    return pd.DataFrame(rows, columns=["segment", "metric", "as_of"])


# --- scoring ---------------------------------------------------------------------------------


def realized_shift(
    frame: pd.DataFrame, counterfactual: pd.DataFrame, truth: dict, metric_name: str, last_day: dt.date
) -> tuple[dt.date | None, float]:
    """(the first day the shift reaches the recall threshold, the largest 7-day shift)."""
    metric = drift.METRICS_BY_NAME[metric_name]
    team = truth["team"]
    start, end = dt.date.fromisoformat(truth["start"]), dt.date.fromisoformat(truth["end"])
    threshold = RATE_SHIFT if metric.kind == "binary" else RELATIVE_SHIFT

    def values(f: pd.DataFrame, a: dt.date, b: dt.date) -> np.ndarray:
        rows = f[(f.team_id == team) & f.resolved_date.between(pd.Timestamp(a), pd.Timestamp(b))]
        if metric.name == "csat":
            # Only the surveys submitted by the day judged: a shift is due once it can be seen.
            rows = rows[rows.csat_date <= pd.Timestamp(b)]
        return rows[metric.column].dropna().to_numpy(dtype=float)

    def shift(a: dt.date, b: dt.date) -> float:
        x, y = values(frame, a, b), values(counterfactual, a, b)
        if len(x) < 5 or len(y) < 5:
            return 0.0
        before = drift.summary_value(metric, y)
        effect = drift.effect_size(metric, before, drift.summary_value(metric, x))
        # CSAT is a score, not a rate: its threshold is relative, like the durations'.
        return effect / before if metric.kind == "ordinal" and before else effect

    due, peak = None, 0.0
    day = start
    while day < min(end + dt.timedelta(days=AFTER_END_DAYS), last_day + dt.timedelta(days=1)):
        if due is None and day < end and shift(max(start, day - dt.timedelta(days=1)), day) >= threshold:
            due = day
        peak = max(peak, shift(max(start, day - dt.timedelta(days=6)), day))
        day += dt.timedelta(days=1)
    return due, peak


def episodes(alerts: pd.DataFrame) -> list[tuple[str, str, dt.date, dt.date]]:
    """Runs of consecutive alert days per segment and metric: what becomes one review."""
    out = []
    for (segment, metric), group in alerts.groupby(["segment", "metric"]):
        days = sorted(group["as_of"])
        first = prev = days[0]
        for day in days[1:]:
            if (day - prev).days > 1:
                out.append((segment, metric, first, prev))
                first = day
            prev = day
        out.append((segment, metric, first, prev))
    return out


@dataclass
class Score:
    due: int = 0
    detected: int = 0
    detected_late: int = 0
    delays: list[int] = field(default_factory=list)
    episodes: int = 0
    true_episodes: int = 0
    stable_episodes: int = 0
    stable_team_days: int = 0
    misses: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        team_months = self.stable_team_days / 30
        return {
            "recall_within_2_runs": round(self.detected / self.due, 3) if self.due else None,
            "recall_any_delay": round((self.detected + self.detected_late) / self.due, 3) if self.due else None,
            "due_shifts": self.due,
            "precision": round(self.true_episodes / self.episodes, 3) if self.episodes else None,
            "alert_episodes": self.episodes,
            "median_delay_runs": float(np.median(self.delays)) if self.delays else None,
            "max_delay_runs": int(max(self.delays)) if self.delays else None,
            "false_alerts_per_10_team_months": round(10 * self.stable_episodes / team_months, 2)
            if team_months
            else None,
            "stable_team_months": round(team_months, 1),
            "missed": self.misses,
        }


def score_run(score: Score, name: str, alerts: pd.DataFrame, truths: list[dict], targets: list[dict], team_days: int):
    eps = episodes(alerts)
    score.episodes += len(eps)
    if not truths:
        score.stable_episodes += len(eps)
        score.stable_team_days += team_days
    for segment, _metric, first, last in eps:
        for truth in truths:
            start, end = dt.date.fromisoformat(truth["start"]), dt.date.fromisoformat(truth["end"])
            if segment == truth["team"] and first <= end + dt.timedelta(days=AFTER_END_DAYS) and last >= start:
                score.true_episodes += 1
                break
    for target in targets:
        score.due += 1
        hits = alerts[
            (alerts.segment == target["team"])
            & (alerts.metric == target["metric"])
            & (alerts.as_of >= dt.date.fromisoformat(target["start"]))
            & (alerts.as_of <= dt.date.fromisoformat(target["end"]) + dt.timedelta(days=AFTER_END_DAYS))
        ]
        if hits.empty:
            score.misses.append(f"{name}/{target['metric']}/seed {target['seed']}")
            continue
        delay = max(1, (min(hits.as_of) - target["due"]).days + 1)
        score.delays.append(delay)
        if delay <= WITHIN_RUNS:
            score.detected += 1
        else:
            score.detected_late += 1
            score.misses.append(f"{name}/{target['metric']}/seed {target['seed']} (late: {delay} runs)")


# --- the evaluation --------------------------------------------------------------------------


def simulate_frame(seed: int, scenario_list: list) -> tuple[pd.DataFrame, dict]:
    config = simulator.SimulationConfig(
        seed=seed, start=START, days=DAYS, bad_record_rate=0.0, scenarios=[*scenario_list, simulator.Holidays(HOLIDAYS)]
    )
    data = simulator.simulate(config)
    return ticket_frame(data), data.ground_truth


def evaluation_days(config: drift.DriftConfig) -> list[dt.date]:
    """Every day the detector can judge: from a full reference plus current window to the end."""
    first_day = START + dt.timedelta(days=config.current_days + config.reference_days - 1)
    last_day = START + dt.timedelta(days=DAYS - 1)
    return [first_day + dt.timedelta(days=i) for i in range((last_day - first_day).days + 1)]


def days_near(days: list[dt.date], truths: list[dict], targets: list[dict]) -> list[dt.date]:
    """The days a scenario is scored on: a week before its start until a week after the last
    day a shift fell due (at least two weeks after the start). False alerts are counted on
    the stable run, so a scenario run need not be judged far from its scenario."""
    keep = []
    for t in truths:
        start = dt.date.fromisoformat(t["start"])
        dues = [x["due"] for x in targets if x["kind"] == t["kind"]]
        last = max([start + dt.timedelta(days=14), *(d + dt.timedelta(days=AFTER_END_DAYS) for d in dues)])
        keep.append((start - dt.timedelta(days=7), last))
    return [d for d in days if any(a <= d <= b for a, b in keep)]


def evaluate(
    seeds: tuple[int, ...] = EVAL_SEEDS, names: list[str] | None = None, config: drift.DriftConfig | None = None
) -> dict:
    """Run both detectors over the scenarios for the seeds; the results as a dict."""
    config = config or detector_config()
    catalogue = scenarios()
    names = names or list(catalogue)
    days = evaluation_days(config)
    last_day = days[-1]
    scores = {"drift_monitor": Score(), "zscore_baseline": Score()}
    per_scenario: dict[str, dict] = {}
    shifts = []
    started = time.perf_counter()
    for seed in seeds:
        stable, _ = simulate_frame(seed, [])
        for name in names:
            frame, truth = (stable, {"scenarios": []}) if name == "stable" else simulate_frame(seed, catalogue[name])
            truths = [s for s in truth["scenarios"] if s["kind"] != "holidays"]
            targets = []
            for t in truths:
                for metric in t["metrics"]:
                    due, peak = realized_shift(frame, stable, t, metric, last_day)
                    shifts.append({"scenario": name, "seed": seed, "metric": metric, "due": due, "peak_shift": peak})
                    if due is not None and metric in config.metrics:
                        targets.append({**t, "metric": metric, "due": due, "seed": seed})
            judged = days_near(days, truths, targets) if truths else days
            team_days = frame["team_id"].nunique() * len(judged)
            for detector, alerts in (
                ("drift_monitor", detector_alerts(frame, judged, config)),
                ("zscore_baseline", baseline_alerts(frame, judged, config.metrics)),
            ):
                score_run(scores[detector], name, alerts, truths, targets, team_days)
                one = per_scenario.setdefault(name, {}).setdefault(detector, Score())
                score_run(one, name, alerts, truths, targets, team_days)
    return {
        "seeds": list(seeds),
        "tuning_seeds": list(TUNING_SEEDS),
        "config": {
            "metrics": list(config.metrics),
            "windows": {
                w.name: {"days": w.days, "basis": w.basis, "horizon_hours": w.horizon_hours, "quantile": w.quantile}
                for w in config.windows
            },
            "reference_days": config.reference_days,
            "min_effects": {
                m: {
                    "standard": _finite(config.metric(m).min_effect),
                    "fast": _finite(config.metric(m).fast_effect),
                    "week": _finite(config.metric(m).week_effect),
                    "fast_quartile": _finite(config.metric(m).quartile_effect),
                    "fast_resolved": _finite(config.metric(m).resolved_effect),
                }
                for m in config.metrics
            },
        },
        "period": {"start": START.isoformat(), "days": DAYS, "holidays": [h.isoformat() for h in HOLIDAYS]},
        "targets": {"recall_within_2_runs": 0.95, "false_alerts_per_10_team_months": 1.0},
        "shift_threshold": {"relative": RELATIVE_SHIFT, "rate_points": RATE_SHIFT},
        "detectors": {k: v.summary() for k, v in scores.items()},
        "scenarios": {n: {k: v.summary() for k, v in d.items()} for n, d in per_scenario.items()},
        "realized_shifts": [{**s, "due": s["due"].isoformat() if s["due"] else None} for s in shifts],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _finite(value: float) -> float | None:
    """JSON has no infinity: a window that never judges a metric is ``null``."""
    return value if np.isfinite(value) else None


# --- calibration -----------------------------------------------------------------------------


def calibrate(seeds: tuple[int, ...] = TUNING_SEEDS, config: drift.DriftConfig | None = None) -> dict:
    """The largest worse effect that was statistically significant on stable runs, per metric
    and window, and the minimum effect that follows (that plus a margin, rounded up).

    Only results with the minimum sample on both sides count (no finding is possible below
    it). A test runs only where the effect exceeds the largest significant one so far: the
    answer is the same and most tests are skipped.
    """
    config = config or detector_config()
    days = evaluation_days(config)
    largest: dict[tuple[str, str], float] = {(m, w.name): 0.0 for m in config.metrics for w in config.windows}
    tested = 0
    seen: set[tuple[str, str]] = set()
    started = time.perf_counter()
    for seed in seeds:
        frame, _ = simulate_frame(seed, [])
        for _type, _name, segment in drift.segments_of(frame, config):
            for as_of in days:
                for name in config.metrics:
                    metric = config.metric(name)
                    for window, _start, reference, current in drift.samples(segment, as_of, metric, config):
                        if len(reference) < drift.MIN_SAMPLE or len(current) < window.min_current:
                            continue
                        seen.add((name, window.name))
                        ref_value = drift.summary_value(metric, reference, window.quantile)
                        cur_value = drift.summary_value(metric, current, window.quantile)
                        effect = drift.effect_size(metric, ref_value, cur_value)
                        if effect <= largest[(name, window.name)]:
                            continue
                        tested += 1
                        _method, _stat, p, _ = drift.compare(metric, reference, current, "worse")
                        if p < metric.threshold:
                            largest[(name, window.name)] = effect
    out: dict[str, dict] = {}
    for (name, window), effect in largest.items():
        if (name, window) not in seen:
            continue
        kind = drift.METRICS_BY_NAME[name].kind
        if kind == "binary":
            proposed = np.ceil((effect + 0.01) * 100) / 100
        elif kind == "ordinal":
            proposed = np.ceil((effect + 0.05) * 20) / 20
        else:
            proposed = np.ceil(effect * 1.1 * 20) / 20
        out.setdefault(name, {})[window] = {"largest_significant": round(effect, 3), "min_effect": float(proposed)}
    return {"seeds": list(seeds), "tests": tested, "seconds": round(time.perf_counter() - started, 1), "metrics": out}


def table(results: dict) -> str:
    """The results as a plain-text table: one line per scenario and detector, then the totals."""
    head = f"{'scenario':<18} {'detector':<16} {'recall<=2':>9} {'recall':>7} {'due':>4} {'prec':>6} {'eps':>4} {'delay':>6} {'FA/10tm':>8}"
    lines = [head, "-" * len(head)]

    def line(name: str, detector: str, s: dict) -> str:
        def f(v, fmt="{:.2f}"):
            return "-" if v is None else fmt.format(v)

        return (
            f"{name:<18} {detector:<16} {f(s['recall_within_2_runs']):>9} {f(s['recall_any_delay']):>7} "
            f"{s['due_shifts']:>4} {f(s['precision']):>6} {s['alert_episodes']:>4} "
            f"{f(s['median_delay_runs'], '{:.1f}'):>6} {f(s['false_alerts_per_10_team_months']):>8}"
        )

    for name, detectors in results["scenarios"].items():
        for detector, s in detectors.items():
            lines.append(line(name, detector, s))
    lines.append("-" * len(head))
    for detector, s in results["detectors"].items():
        lines.append(line("ALL", detector, s))
    return "\n".join(lines)


def main(seeds: int = len(EVAL_SEEDS), out: Path | None = None, tune: bool = False) -> int:
    if tune:
        print(json.dumps(calibrate(), indent=2))
        return 0
    results = evaluate(tuple(range(1, seeds + 1)))
    print(table(results))
    monitor = results["detectors"]["drift_monitor"]
    print(
        f"\ntargets: recall within {WITHIN_RUNS} runs >= 0.95 (measured {monitor['recall_within_2_runs']}), "
        f"<= 1 false alert per 10 team-months (measured {monitor['false_alerts_per_10_team_months']}); "
        f"seeds {results['seeds']}, {results['seconds']} s"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(tune="--calibrate" in sys.argv))
