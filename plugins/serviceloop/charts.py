"""Small PNG charts: a metric over the drift windows (alerts), a KPI by week (the weekly report).

One line of the daily value (median resolution time, breach rate, mean CSAT), the
reference window shaded grey, the current window shaded red, the change (if any) marked,
and the baseline as a dashed line. Rendered with matplotlib's Agg backend (no display).

Chinese labels need a font with CJK glyphs (`make browser` installs Debian's
``fonts-noto-cjk``; ``fonts-wqy-zenhei`` serves too). Matplotlib lists the machine's fonts once
and caches the list, so a font installed after that is not in it: the font files are then
looked for on the machine and added. When there is none, the chart keeps its labels in
English rather than draw empty boxes (the message text around it is unaffected).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from serviceloop import glossary

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Source Han Sans SC")
# How the files of those fonts are named (Debian: NotoSansCJK-Regular.ttc, wqy-zenhei.ttc).
CJK_FONT_FILES = ("notosanscjk", "notosanssc", "wqy-", "sourcehansans")


@cache
def cjk_font() -> str | None:
    """The family of the first CJK font the machine has, or None."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    found = _first_known({f.name for f in manager.ttflist})
    if found is None:
        # Installed after matplotlib cached its font list: add the files, then look again.
        for path in font_manager.findSystemFonts():
            if any(key in Path(path).name.lower() for key in CJK_FONT_FILES):
                manager.addfont(path)
        found = _first_known({f.name for f in manager.ttflist})
    return found


def _first_known(available: set[str]) -> str | None:
    return next((name for name in CJK_FONTS if name in available), None)


def metric_chart(
    metric: str,
    daily: Sequence[tuple[dt.date, float]],
    *,
    reference: tuple[dt.date, dt.date],
    current: tuple[dt.date, dt.date],
    baseline: float | None = None,
    changed_on: dt.date | None = None,
    lang: str = "en",
) -> bytes:
    """PNG bytes of ``daily`` (day, value) with the windows shaded."""
    fig, ax, font, label_lang = _figure((6.0, 2.6), lang)
    one = dt.timedelta(days=1)
    ax.axvspan(reference[0], reference[1] + one, color="0.9", label=glossary.phrase("chart.reference", label_lang))
    ax.axvspan(current[0], current[1] + one, color="#f6c7c3", label=glossary.phrase("chart.current", label_lang))
    if daily:
        days, values = zip(*daily, strict=True)
        ax.plot(
            days, values, color="#1f4e79", linewidth=1.4, marker=".", label=glossary.phrase("chart.daily", label_lang)
        )
    if baseline is not None:
        ax.axhline(baseline, color="0.4", linestyle="--", linewidth=1)
    if changed_on is not None:
        ax.axvline(changed_on, color="#2e7d32", linewidth=1.2, label=glossary.phrase("chart.after", label_lang))
    ax.set_title(glossary.metric(metric, label_lang), fontsize=10)
    ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    legend = ax.legend(fontsize=7, loc="upper left", frameon=False)
    return _png(fig, ax, font, legend.get_texts())


def trend_chart(
    kpi: str,
    starts: Sequence[dt.date],
    values: Sequence[float | None],
    *,
    target: float | None = None,
    percent: bool = False,
    lang: str = "en",
) -> bytes:
    """PNG bytes of a small chart of a KPI by period (the weekly report's trends), target dashed."""
    from matplotlib.ticker import PercentFormatter

    fig, ax, font, label_lang = _figure((3.3, 1.8), lang)
    # A missing period is a gap in the line, not a zero.
    ys = [float("nan") if v is None else v for v in values]
    ax.plot(list(starts), ys, color="#1f4e79", linewidth=1.4, marker=".")
    if target is not None:
        ax.axhline(target, color="#b42318", linestyle="--", linewidth=1)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_title(glossary.kpi(kpi, label_lang), fontsize=9)
    ax.tick_params(labelsize=6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.autofmt_xdate()
    return _png(fig, ax, font)


def _figure(size: tuple[float, float], lang: str):
    """(figure, axes, CJK font or None, the language labels can be drawn in) for a chart in ``lang``.

    Without a CJK font the labels stay in English rather than draw empty boxes.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    font = cjk_font() if glossary.language(lang) != "en" else None
    fig = Figure(figsize=size, dpi=100)
    return fig, fig.add_subplot(), font, lang if font else "en"


def _png(fig, ax, font: str | None, extra_texts=()) -> bytes:
    """The figure as PNG, its labels in ``font`` (a CJK family) when given."""
    if font:
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label, *extra_texts):
            text.set_fontfamily(font)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
