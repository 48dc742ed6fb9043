"""Service quality from the KPI marts: scorecard, trends, stage breakdown, delay causes.

What the weekly report (``serviceloop.report``) and the dashboard (``serviceloop.ui``) show
a manager, read from the small ``marts.kpi_*`` tables only (a team's or the organisation's
row per week or month), never from the facts: a year of data is a few hundred rows whatever
the ticket volume. Everything here reads ``marts`` and nothing else, so it runs as the
read-only ``analyst`` role (``serviceloop.roles``).

A segment is a team (its ``team_id``) or the whole organisation (``None``); a period is a
week (from Monday) or a calendar month, named by its first day.

- **Scorecard**: every target of the ``kpi_targets`` seed (carried in ``kpi_scorecard``)
  against the segment's value in the period, red/amber/green by the rule of
  ``kpi_scorecard``. Targets for one priority are scored where a mart has that grain (the
  organisation's month: ``kpi_priority_monthly``).
- **Trend**: the headline KPIs over the last 13 weeks (or 12 months).
- **Stage breakdown**: where the cycle time of the tickets closed in the period goes, step
  by step (``kpi_bottleneck_weekly``); the bottleneck is the largest share.
- **Delay causes**: the SLA breaches of a month by recorded cause (``kpi_delay_causes``).
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass

GRAINS = ("week", "month")
# The KPIs the trends show: every KPI the targets score, and the median resolution time.
HEADLINE = (
    "sla_resolution_compliance",
    "sla_first_response_compliance",
    "resolution_p50_hours",
    "resolution_p90_hours",
    "first_contact_resolution_rate",
    "reopen_rate",
    "csat_satisfied_rate",
    "complaint_rate",
)
HOURS = {"resolution_p50_hours", "resolution_p90_hours"}
COUNTS = {"tickets_resolved", "backlog_open"}
TREND_LENGTH = {"week": 13, "month": 12}

# The marts by segment and grain; names come from here, never from input.
_MARTS = {
    (False, "week"): "marts.kpi_organisation_weekly",
    (False, "month"): "marts.kpi_organisation_monthly",
    (True, "week"): "marts.kpi_team_weekly",
    (True, "month"): "marts.kpi_team_monthly",
}
_PRIORITY_MARTS = {(False, "month"): "marts.kpi_priority_monthly"}


class QualityError(ValueError):
    """A segment, grain or period that the marts do not have."""


@dataclass(frozen=True)
class Score:
    target_id: str
    metric: str
    priority: str
    actual: float | None
    target: float
    direction: str
    amber_margin: float
    status: str | None


@dataclass(frozen=True)
class StageShare:
    stage: str
    process_stage: str
    tickets: int
    mean_hours: float | None
    share: float | None
    is_bottleneck: bool


def period_start(day: dt.date, grain: str) -> dt.date:
    """The first day of the week (Monday) or month that ``day`` falls in."""
    _check_grain(grain)
    return day - dt.timedelta(days=day.weekday()) if grain == "week" else day.replace(day=1)


def period_end(start: dt.date, grain: str) -> dt.date:
    """The last day of the period that begins on ``start``."""
    _check_grain(grain)
    if grain == "week":
        return start + dt.timedelta(days=6)
    return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)


def shift(start: dt.date, grain: str, periods: int) -> dt.date:
    """The start of the period ``periods`` before (negative) or after ``start``."""
    if grain == "week":
        return start + dt.timedelta(weeks=periods)
    month = start.year * 12 + start.month - 1 + periods
    return dt.date(month // 12, month % 12 + 1, 1)


def rag(actual: float | None, target: float, direction: str, amber_margin: float) -> str | None:
    """Red, amber or green: the rule of ``kpi_scorecard`` (green on target, amber within the margin)."""
    if actual is None:
        return None
    if direction == "at_least":
        return "green" if actual >= target else "amber" if actual >= target - amber_margin else "red"
    if direction == "at_most":
        return "green" if actual <= target else "amber" if actual <= target + amber_margin else "red"
    raise QualityError(f"kpi_targets: unknown direction {direction!r} (at_least or at_most)")


def fmt(metric: str, value: float | None) -> str:
    """A KPI value as a manager reads it: rates in per cent, durations in hours, counts."""
    if value is None:
        return "–"
    if metric in HOURS or metric.endswith("_hours"):
        return f"{value:.1f} h"
    if metric in COUNTS:
        return f"{int(value):,}"
    return f"{value:.1%}"


def _check_grain(grain: str) -> None:
    if grain not in GRAINS:
        raise QualityError(f"unknown period {grain!r}; periods: {', '.join(GRAINS)}")


def _mart(team: str | None, grain: str) -> str:
    _check_grain(grain)
    return _MARTS[(team is not None, grain)]


def _segment_filter(team: str | None) -> tuple[str, tuple]:
    return ("and team_id = %s", (team,)) if team is not None else ("", ())


def teams(cur) -> list[tuple[str, str]]:
    """(team_id, team name) of every team, by name."""
    cur.execute("select team_id, team_name from marts.dim_team order by team_name, team_id")
    return cur.fetchall()


def periods(cur, grain: str) -> list[dt.date]:
    """The periods the marts hold, latest first."""
    column = f"{grain}_start"
    cur.execute(f"select {column} from {_mart(None, grain)} order by {column} desc")
    return [row[0] for row in cur.fetchall()]


def targets(cur) -> list[dict]:
    """The targets (the ``kpi_targets`` seed, as ``kpi_scorecard`` carries it)."""
    cur.execute(
        "select target_id, metric, priority, target_value, direction, amber_margin "
        "from marts.kpi_scorecard order by priority <> 'all', target_id"
    )
    return [dict(zip(("target_id", "metric", "priority", "target", "direction", "amber_margin"), r, strict=True))
            for r in cur.fetchall()]  # fmt: skip


def scorecard(cur, team: str | None, grain: str, start: dt.date) -> list[Score]:
    """Every target the segment's marts can score in the period, with its actual and status."""
    column = f"{grain}_start"
    where, args = _segment_filter(team)
    out = []
    columns = _kpi_columns(cur)
    for t in targets(cur):
        if t["metric"] not in columns:
            raise QualityError(f"kpi_targets: {t['target_id']} names {t['metric']!r}, which no KPI mart has")
        if t["priority"] == "all":
            table, extra, extra_args = _mart(team, grain), "", ()
        elif (team is not None, grain) in _PRIORITY_MARTS:
            table, extra, extra_args = _PRIORITY_MARTS[(team is not None, grain)], "and priority = %s", (t["priority"],)
        else:
            continue  # no mart has this segment by priority at this grain
        # The metric is a column name checked against the marts' columns above.
        cur.execute(
            f"select {t['metric']} from {table} where {column} = %s {where} {extra}", (start, *args, *extra_args)
        )
        row = cur.fetchone()
        actual = None if row is None or row[0] is None else float(row[0])
        out.append(
            Score(t["target_id"], t["metric"], t["priority"], actual, float(t["target"]), t["direction"],
                  float(t["amber_margin"]), rag(actual, float(t["target"]), t["direction"], float(t["amber_margin"])))
        )  # fmt: skip
    return out


def _kpi_columns(cur) -> set[str]:
    cur.execute(
        "select column_name from information_schema.columns "
        "where table_schema = 'marts' and table_name = 'kpi_organisation_weekly'"
    )
    return {r[0] for r in cur.fetchall()}


def trend(cur, team: str | None, grain: str, last: dt.date, metrics=HEADLINE) -> dict:
    """``{"periods": [start, ...], metric: [value or None, ...]}`` for the periods up to ``last``."""
    column = f"{grain}_start"
    first = shift(last, grain, -(TREND_LENGTH[grain] - 1))
    starts = [shift(first, grain, i) for i in range(TREND_LENGTH[grain])]
    where, args = _segment_filter(team)
    cur.execute(
        f"select {column}, {', '.join(metrics)} from {_mart(team, grain)} "
        f"where {column} between %s and %s {where} order by {column}",
        (first, last, *args),
    )
    rows = {r[0]: r[1:] for r in cur.fetchall()}
    out: dict = {"periods": starts}
    for i, metric in enumerate(metrics):
        out[metric] = [None if s not in rows or rows[s][i] is None else float(rows[s][i]) for s in starts]
    return out


def stage_breakdown(cur, team: str | None, grain: str, start: dt.date) -> list[StageShare]:
    """Where the cycle time of the tickets closed in the period goes, step by step.

    A team's week is the mart's row as it stands; a longer period or the organisation adds up
    the weeks (that start in the period) and teams: each step's hours (mean x tickets) over
    the cycle's.
    """
    where, args = _segment_filter(team)
    cur.execute(
        f"""
        select stage, process_stage, min(stage_order), sum(tickets_closed),
            sum(stage_mean_hours * tickets_closed), case when count(*) = 1 then max(cycle_time_share) end
        from marts.kpi_bottleneck_weekly
        where week_start between %s and %s {where}
        group by stage, process_stage
        order by min(stage_order)
        """,
        (start, period_end(start, grain), *args),
    )
    rows = cur.fetchall()
    total = sum(float(r[4] or 0) for r in rows)
    shares = []
    for stage, process_stage, _order, tickets, hours, mart_share in rows:
        share = float(mart_share) if mart_share is not None else (float(hours) / total if total else None)
        mean = float(hours) / int(tickets) if tickets and hours is not None else None
        shares.append((stage, process_stage, int(tickets or 0), mean, share))
    top = max((s for s in shares if s[4] is not None), key=lambda s: s[4], default=None)
    return [StageShare(*s, is_bottleneck=s is top) for s in shares]


def delay_causes(cur, team: str | None, month: dt.date, limit: int = 5) -> list[dict]:
    """The month's SLA breaches by delay cause, most first, with each cause's share."""
    where, args = _segment_filter(team)
    cur.execute(
        f"""
        select delay_cause, cause_group, sum(sla_breaches), sum(sum(sla_breaches)) over ()
        from marts.kpi_delay_causes
        where month_start = %s {where}
        group by delay_cause, cause_group
        order by 3 desc, delay_cause
        limit %s
        """,
        (month, *args, limit),
    )
    return [
        {"cause": cause, "group": group, "breaches": int(n), "share": float(n) / float(total) if total else None}
        for cause, group, n, total in cur.fetchall()
    ]


# --- small HTML pieces the report and the dashboard share -----------------------------------

RAG_COLOURS = {"green": "#2e7d32", "amber": "#b26a00", "red": "#b42318", None: "#57606a"}


def e(value: object) -> str:
    """Text for HTML: escaped, None as empty."""
    return "" if value is None else html.escape(str(value), quote=True)


def scorecard_table(scores: list[Score], lang: str) -> str:
    """The scorecard as an HTML table; each figure carries its exact value in ``data-value``."""
    from serviceloop import glossary

    def p(key: str) -> str:
        return e(glossary.phrase(f"report.{key}", lang))

    head = (
        f"<tr><th>{p('kpi')}</th><th>{p('priority')}</th><th>{p('actual')}</th><th>{p('target')}</th>"
        f"<th>{p('status')}</th></tr>"
    )
    rows = "".join(
        f'<tr data-target="{e(s.target_id)}"><td>{e(glossary.kpi(s.metric, lang))}</td><td>{e(s.priority)}</td>'
        f'<td class="num" data-value="{"" if s.actual is None else repr(s.actual)}">{e(fmt(s.metric, s.actual))}</td>'
        f'<td class="num">{"≥" if s.direction == "at_least" else "≤"} {e(fmt(s.metric, s.target))}</td>'
        f'<td class="rag" data-status="{e(s.status)}"><span style="color:{RAG_COLOURS[s.status]}">&#9679;</span> '
        f"{e(glossary.rag(s.status, lang))}</td></tr>"
        for s in scores
    )
    return f'<table class="scorecard"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def stage_table(stages: list[StageShare], lang: str) -> str:
    """The cycle time step by step, grouped by the process stage each step belongs to."""
    from serviceloop import glossary

    def p(key: str) -> str:
        return e(glossary.phrase(f"report.{key}", lang))

    rows = []
    for s in stages:
        width = 0 if s.share is None else max(1, round(s.share * 160))
        mark = " &#9650;" if s.is_bottleneck else ""
        rows.append(
            f'<tr data-stage="{e(s.stage)}"{" class=bottleneck" if s.is_bottleneck else ""}>'
            f"<td>{e(glossary.stage(glossary.PROCESS_STAGES.get(s.process_stage, s.process_stage), lang))}</td>"
            f"<td>{e(glossary.cycle_step(s.stage, lang))}{mark}</td>"
            f'<td class="num" data-value="{"" if s.share is None else repr(s.share)}">'
            f"{e(fmt('share', s.share))}</td>"
            f'<td><span class="bar" style="display:inline-block;height:.7em;width:{width}px;background:'
            f'{"#b42318" if s.is_bottleneck else "#1f4e79"}"></span></td>'
            f'<td class="num">{e(fmt("mean_hours", s.mean_hours))}</td></tr>'
        )
    head = f"<tr><th>{p('stage')}</th><th>{p('step')}</th><th>{p('share')}</th><th></th><th>{p('mean_hours')}</th></tr>"
    return f'<table class="stages"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def svg_trend(metric: str, starts: list[dt.date], values: list[float | None], target: float | None,
              lang: str, width: int = 280, height: int = 120) -> str:  # fmt: skip
    """A small inline SVG line chart of a KPI (no scripts, no external assets), target dashed."""
    from serviceloop import glossary

    known = [v for v in values if v is not None]
    pad_l, pad_r, pad_t, pad_b = 6, 60, 22, 16
    title = e(glossary.kpi(metric, lang))
    if not known:
        return (
            f'<svg class="trend" data-metric="{e(metric)}" width="{width}" height="{height}" role="img">'
            f'<text x="{pad_l}" y="14" font-size="12">{title}</text>'
            f'<text x="{pad_l}" y="{height // 2}" font-size="11" fill="#57606a">–</text></svg>'
        )
    bounds = known + ([target] if target is not None else [])
    low, high = min(bounds), max(bounds)
    if high == low:
        low, high = low - 1e-9 - abs(low) * 0.05, high + 1e-9 + abs(high) * 0.05
    span_x = max(len(values) - 1, 1)

    def x(i: int) -> float:
        return pad_l + (width - pad_l - pad_r) * i / span_x

    def y(v: float) -> float:
        return pad_t + (height - pad_t - pad_b) * (1 - (v - low) / (high - low))

    lines, run = [], []
    for i, v in enumerate(values):
        if v is None:
            if run:
                lines.append(run)
            run = []
        else:
            run.append(f"{x(i):.1f},{y(v):.1f}")
    if run:
        lines.append(run)
    parts = [f'<polyline points="{" ".join(r)}" fill="none" stroke="#1f4e79" stroke-width="1.6"/>' for r in lines]
    parts += [
        f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2" fill="#1f4e79"><title>{e(starts[i])}: {e(fmt(metric, v))}'
        "</title></circle>"
        for i, v in enumerate(values)
        if v is not None
    ]
    if target is not None:
        parts.append(
            f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(target):.1f}" y2="{y(target):.1f}" stroke="#b42318" '
            f'stroke-dasharray="4 3" stroke-width="1"/><text x="{width - pad_r + 4}" y="{y(target) + 4:.1f}" '
            f'font-size="10" fill="#b42318">{e(fmt(metric, target))}</text>'
        )
    last = next((i for i in range(len(values) - 1, -1, -1) if values[i] is not None), None)
    latest = "" if last is None else f' data-last="{e(repr(values[last]))}"'
    if last is not None:
        parts.append(
            f'<text x="{width - pad_r + 4}" y="{y(values[last]) - 4:.1f}" font-size="11" font-weight="600">'
            f"{e(fmt(metric, values[last]))}</text>"
        )
    axis = f'<text x="{pad_l}" y="{height - 3}" font-size="9" fill="#57606a">{e(starts[0])} – {e(starts[-1])}</text>'
    return (
        f'<svg class="trend" data-metric="{e(metric)}"{latest} width="{width}" height="{height}" role="img" '
        f'aria-label="{title}"><text x="{pad_l}" y="14" font-size="12">{title}</text>{"".join(parts)}{axis}</svg>'
    )
