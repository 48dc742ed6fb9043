"""Alert charts draw Chinese labels with the machine's CJK font (`make browser` installs one)."""

from __future__ import annotations

import datetime as dt
import warnings

import pytest

from serviceloop import charts

DAY = dt.date(2026, 8, 1)


def _chart(lang: str) -> bytes:
    daily = [(DAY + dt.timedelta(days=i), 10.0 + (i > 28) * 20) for i in range(35)]
    return charts.metric_chart(
        "resolution_time",
        daily,
        reference=(DAY, DAY + dt.timedelta(days=27)),
        current=(DAY + dt.timedelta(days=28), DAY + dt.timedelta(days=34)),
        baseline=10.0,
        lang=lang,
    )


@pytest.fixture
def fresh_font_lookup():
    charts.cjk_font.cache_clear()
    yield
    charts.cjk_font.cache_clear()


def test_chinese_labels_are_drawn_with_a_cjk_font_and_no_glyph_is_missing(fresh_font_lookup):
    assert charts.cjk_font() in charts.CJK_FONTS, "no CJK font on this machine: `make browser` installs one"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zh = _chart("zh")
    assert [str(w.message) for w in caught if "missing from font" in str(w.message)] == []
    assert zh.startswith(b"\x89PNG") and zh != _chart("en")


def test_a_font_installed_after_matplotlib_listed_the_fonts_is_still_found(fresh_font_lookup, monkeypatch):
    from matplotlib import font_manager

    manager = font_manager.fontManager
    # The font list as matplotlib cached it on a machine before the CJK font was installed.
    monkeypatch.setattr(manager, "ttflist", [f for f in manager.ttflist if f.name not in charts.CJK_FONTS])
    assert charts._first_known({f.name for f in manager.ttflist}) is None
    assert charts.cjk_font() == charts.CJK_FONTS[0]
