"""The drift monitor's judgement rules, on numbers worked out by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from serviceloop.drift import (
    METRICS_BY_NAME,
    STAGE_COLUMNS,
    DriftConfig,
    compare,
    effect_size,
    evaluate,
    method_for,
    onset,
    parse_segments,
    summary_value,
    windows,
)


def test_windows_are_whole_weeks_so_weekdays_align():
    as_of = dt.date(2026, 9, 16)  # a Wednesday
    ref_start, ref_end, cur_start, cur_end = windows(as_of)
    assert cur_end == as_of
    assert (cur_end - cur_start).days + 1 == 7
    assert (ref_end - ref_start).days + 1 == 28
    assert ref_end == cur_start - dt.timedelta(days=1)
    # Every weekday appears once in the current window and four times in the reference.
    assert ref_start.weekday() == cur_start.weekday()


def test_effect_is_positive_only_in_the_worse_direction():
    resolution = METRICS_BY_NAME["resolution_time"]
    assert effect_size(resolution, 10.0, 15.0) == 0.5  # 50 % longer: worse
    assert effect_size(resolution, 10.0, 8.0) == -0.2  # shorter: better
    breach = METRICS_BY_NAME["sla_breach"]
    assert round(effect_size(breach, 0.10, 0.18), 4) == 0.08  # percentage points
    csat = METRICS_BY_NAME["csat"]
    assert round(effect_size(csat, 4.2, 3.7), 4) == 0.5  # lower CSAT is worse
    assert effect_size(csat, 4.2, 4.5) < 0


def test_summary_uses_median_for_durations_and_mean_for_rates():
    values = pd.Series([1.0, 2.0, 100.0])
    assert summary_value(METRICS_BY_NAME["resolution_time"], values) == 2.0
    assert summary_value(METRICS_BY_NAME["sla_breach"], pd.Series([0, 0, 1, 1])) == 0.5


def test_onset_finds_the_day_the_level_changed():
    rng = np.random.default_rng(3)
    start = dt.date(2026, 8, 1)
    days, values = [], []
    for i in range(35):
        day = start + dt.timedelta(days=i)
        level = 10.0 if i < 31 else 25.0  # changes on day 31, inside the last 7 days
        for v in rng.normal(level, 2.0, 40):
            days.append(np.datetime64(day))
            values.append(v)
    found = onset(
        np.array(days, dtype="datetime64[D]"),
        np.array(values),
        start + dt.timedelta(days=28),
        start + dt.timedelta(days=34),
    )
    assert found == start + dt.timedelta(days=31)


def test_a_csat_drop_is_tested_in_its_worse_direction():
    csat = METRICS_BY_NAME["csat"]
    rng = np.random.default_rng(5)
    reference = np.clip(np.rint(rng.normal(4.2, 0.8, 400)), 1, 5)
    current = np.clip(np.rint(rng.normal(3.4, 0.8, 120)), 1, 5)
    _method, statistic, p_worse, p_better = compare(csat, reference, current)
    assert p_worse < 1e-6 < 0.5 < p_better  # lower CSAT is worse
    assert statistic > 0.6  # most current ratings are worse than a reference one


def test_rates_use_fisher_when_events_are_rare_and_z_otherwise():
    reopen = METRICS_BY_NAME["reopen"]
    assert method_for(reopen, np.array([0.0] * 97 + [1.0] * 3), np.array([0.0] * 40)) == "fisher_exact"
    assert method_for(reopen, np.array([0.0] * 80 + [1.0] * 20), np.array([0.0] * 30 + [1.0] * 10)) == "z"
    method, _stat, p, _ = compare(reopen, np.array([0.0] * 97 + [1.0] * 3), np.array([0.0] * 20 + [1.0] * 20))
    assert method == "fisher_exact" and p < 1e-6


def test_segments_and_holidays_are_configurable():
    assert parse_segments("team, channel,team*priority,organisation") == (
        ("team_id",), ("channel",), ("team_id", "priority"), (),
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown segment dimension 'region'"):
        parse_segments("team,region")
    with pytest.raises(ValueError, match="whole weeks"):
        DriftConfig(reference_days=30)
    with pytest.raises(ValueError, match="unknown drift metric"):
        DriftConfig(metrics=("speed",))


def _tickets(days: int, level_from: int, level: float, holiday: dt.date | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(9)
    start = dt.date(2026, 8, 1)
    rows = []
    for i in range(days):
        day = start + dt.timedelta(days=i)
        scale = level if i >= level_from or day == holiday else 1.0
        for v in rng.lognormal(np.log(10.0 * scale), 0.3, 40):
            rows.append(("t1", "email", "P3", "x", pd.Timestamp(day), v))
    columns = ["team_id", "channel", "priority", "category", "resolved_date", "resolution_hours"]
    return pd.DataFrame(rows, columns=columns)


def test_a_step_is_found_on_the_fast_window_and_an_improvement_is_only_recorded():
    # Minimum effects of this test's own (the calibrated ones suit the simulated organisation).
    config = DriftConfig(metrics=("resolution_time",), effects={"resolution_time": (1.0, 1.5)})
    as_of = dt.date(2026, 8, 1) + dt.timedelta(days=35)
    worse = evaluate(_tickets(36, 34, 3.0), [as_of], config)
    (e,) = worse
    assert e.is_finding and e.window == "fast" and e.since == as_of - dt.timedelta(days=1)
    (better,) = evaluate(_tickets(36, 29, 0.3), [as_of], config)
    assert not better.is_finding and better.improvement and better.direction == "better"


def test_a_holiday_is_left_out_of_the_windows():
    as_of = dt.date(2026, 8, 1) + dt.timedelta(days=35)
    holiday = as_of - dt.timedelta(days=1)
    frame = _tickets(36, 99, 1.0, holiday=holiday)
    frame.loc[frame.resolved_date == pd.Timestamp(holiday), "resolution_hours"] *= 8
    effects = {"resolution_time": (1.0, 1.5)}
    noisy = evaluate(frame, [as_of], DriftConfig(metrics=("resolution_time",), effects=effects))
    quiet = evaluate(
        frame, [as_of], DriftConfig(metrics=("resolution_time",), effects=effects, holidays=frozenset({holiday}))
    )
    assert noisy[0].is_finding and not quiet[0].is_finding


def test_a_short_window_is_compared_with_the_same_weekdays():
    # Weekend tickets always take three times as long: a weekend is no shift.
    rng = np.random.default_rng(11)
    start = dt.date(2026, 8, 3)  # a Monday
    rows = []
    for i in range(35):
        day = start + dt.timedelta(days=i)
        scale = 3.0 if day.weekday() >= 5 else 1.0
        for v in rng.lognormal(np.log(10.0 * scale), 0.3, 40):
            rows.append(("t1", "email", "P3", "x", pd.Timestamp(day), v))
    frame = pd.DataFrame(
        rows, columns=["team_id", "channel", "priority", "category", "resolved_date", "resolution_hours"]
    )
    sunday = start + dt.timedelta(days=34)
    assert sunday.weekday() == 6
    config = DriftConfig(metrics=("resolution_time",), effects={"resolution_time": (1.0, 1.5)})
    (e,) = evaluate(frame, [sunday], config)
    assert not e.is_finding and abs(e.effect) < 0.2


def test_every_metric_and_stage_has_a_name_in_each_language():
    from serviceloop import glossary

    for m in METRICS_BY_NAME:
        assert set(glossary.METRICS[m]) == set(glossary.LANGUAGES), m
    for name in STAGE_COLUMNS.values():
        assert set(glossary.STAGES[name]) == set(glossary.LANGUAGES), name
