"""The drift monitor on simulated truth: it finds an injected shift fast and stays quiet on a
stable stretch; the z-score baseline is computed on the same tickets."""

from __future__ import annotations

import datetime as dt

import pytest

from serviceloop import detection_eval as de
from serviceloop import drift

SEED = 1


@pytest.fixture(scope="module")
def runs():
    catalogue = de.scenarios()
    stable, _ = de.simulate_frame(SEED, [])
    shortage, truth = de.simulate_frame(SEED, catalogue["staffing_shortage"])
    return stable, shortage, truth


def _days(first: int, last: int) -> list[dt.date]:
    return [de.START + dt.timedelta(days=d) for d in range(first, last + 1)]


def _shortage(runs):
    stable, shortage, truth = runs
    (scenario,) = [s for s in truth["scenarios"] if s["kind"] == "staffing_shortage"]
    due, peak = de.realized_shift(shortage, stable, scenario, "resolution_time", de.START + dt.timedelta(days=119))
    assert due is not None and peak >= de.RELATIVE_SHIFT
    alerts = de.detector_alerts(shortage, _days(de.SHIFT_DAY - 7, de.SHIFT_DAY + 7), de.detector_config())
    hits = alerts[(alerts.segment == "tech_support") & (alerts.metric == "resolution_time")]
    return scenario, due, alerts, hits


def test_the_monitor_finds_a_staffing_shortage_and_nothing_before_it(runs):
    scenario, _due, alerts, hits = _shortage(runs)
    assert not hits.empty
    start, end = dt.date.fromisoformat(scenario["start"]), dt.date.fromisoformat(scenario["end"])
    assert start <= min(hits.as_of) <= end
    # Nothing on the short team before the shortage started.
    assert (alerts[alerts.segment == "tech_support"].as_of >= start).all()
    # The other teams' alerts are false alerts: at most one episode in these 15 days x 4 teams
    # (2 team-months; the measured rate is 0.7 per 10 team-months, bench/detection.json).
    assert len(de.episodes(alerts[alerts.segment != "tech_support"])) <= 1, alerts


@pytest.mark.xfail(
    strict=True,
    reason="seed 1's shortage is called on its 4th daily run, not within 2 (recall within 2 runs: 0.55, drift.py)",
)
def test_the_monitor_finds_a_staffing_shortage_within_two_runs(runs):
    scenario, due, _alerts, hits = _shortage(runs)
    assert not hits.empty
    first = min(hits.as_of)
    assert dt.date.fromisoformat(scenario["start"]) <= first <= due + dt.timedelta(days=de.WITHIN_RUNS - 1)


def test_the_monitor_stays_quiet_on_a_stable_stretch_with_holidays(runs):
    stable, _, _ = runs
    # Seven weeks around two of the holidays, every team and metric: 8 team-months. This
    # stretch holds 2 of the 3 false alerts measured in 43 stable team-months (seeds 1-3).
    alerts = de.detector_alerts(stable, _days(50, 98), de.detector_config())
    assert len(de.episodes(alerts)) <= 2, alerts


def test_the_baseline_is_computed_on_the_daily_kpis(runs):
    stable, shortage, _ = runs
    kpis = de.daily_kpis(stable)
    assert set(kpis.metric) == {m.name for m in drift.METRICS}
    assert kpis.value.notna().all()
    days = _days(de.SHIFT_DAY - 7, de.SHIFT_DAY + 14)
    alerts = de.baseline_alerts(shortage, days)
    assert set(alerts.columns) == {"segment", "metric", "as_of"}
    assert ((alerts.segment == "tech_support") & (alerts.metric == "first_response_time")).any()


def test_scores_count_recall_precision_and_false_alerts():
    truth = {"team": "billing", "start": "2026-08-03", "end": "2026-08-10", "metrics": ["resolution_time"]}
    target = {**truth, "metric": "resolution_time", "due": dt.date(2026, 8, 4), "seed": 1}
    alerts = de.pd.DataFrame(
        [
            ("billing", "resolution_time", dt.date(2026, 8, 5)),
            ("billing", "resolution_time", dt.date(2026, 8, 6)),
            ("accounts", "csat", dt.date(2026, 7, 1)),
        ],
        columns=["segment", "metric", "as_of"],
    )
    score = de.Score()
    de.score_run(score, "x", alerts, [truth], [target], team_days=0)
    summary = score.summary()
    assert summary["recall_within_2_runs"] == 1.0  # due on the 4th, found on the 5th: 2 runs
    assert summary["precision"] == 0.5
    assert summary["median_delay_runs"] == 2.0
    stable = de.Score()
    de.score_run(stable, "stable", alerts, [], [], team_days=600)
    assert stable.summary()["false_alerts_per_10_team_months"] == 10 * 2 / 20
