"""The drift monitor's judgement rules, on numbers worked out by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from serviceloop.drift import METRICS_BY_NAME, effect_size, onset, summary_value, windows


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
