"""A deterministic simulator of a customer-service organisation (v1).

ServiceLoop is developed and tested against records that look like a real organisation's:
this module simulates one end to end — requests arriving on channels, agents on shifts
working them through the five process stages of PRODUCT.md §1, customers rating the result —
and writes what that organisation's own systems would hold: the helpdesk application's
PostgreSQL database and the survey tool's daily CSV export.

The model is a discrete-event queueing simulation. The agents of a team are servers that
only take work while on shift; tickets queue for them (P1, escalations and work passed on
by another team first, otherwise first come, first served). Operational scenarios therefore
have emergent effects: in a staffing shortage nothing is painted on, the team's queue simply
grows, and waiting time, resolution time, SLA breaches and CSAT follow. The ground truth
(scenario windows, injected bad records) is returned alongside, so tests can check the
pipeline finds what was put in.

Every result is a pure function of the config: each concern draws from its own child of one
numpy seed sequence, so e.g. adding a scenario changes the service but not which tickets
arrive. The full lifecycle of every ticket is simulated up front (work continues past the
period until every ticket is closed); `simulate()` returns the records as they stand at the
end of the period, and `SimulatedData.as_of` cuts the same story at any other instant.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import re
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import psycopg2
from psycopg2 import sql

from serviceloop import contract
from serviceloop.files import write_atomically

REPO_ROOT = Path(__file__).resolve().parents[2]
SEEDS_DIR = REPO_ROOT / "dbt_project" / "seeds"
SOURCE_SYSTEM = "helpdesk"
# The helpdesk application's own tables; the survey tool has no database, it drops files.
HELPDESK_TABLES = {name: f"hd_{name}" for name in ("tickets", "ticket_events", "agents", "shifts")}

# --- demand --------------------------------------------------------------------------------
# Relative volume Mon..Sun; the weekday mean is 1 so tickets_per_day is the weekday mean.
_WEEKDAY_VOLUME = (1.2, 1.05, 1.0, 0.95, 0.8, 0.35, 0.35)
_DAILY_VOLUME_SIGMA = 0.05  # day-to-day variation beyond Poisson noise
# Relative arrivals per hour of day (UTC): a morning and an afternoon peak, little at night.
_HOUR_PROFILE = (
    0.08, 0.05, 0.05, 0.05, 0.05, 0.08, 0.2, 0.6, 1.1, 1.5, 1.6, 1.5,
    1.25, 1.35, 1.45, 1.35, 1.2, 0.95, 0.7, 0.45, 0.3, 0.2, 0.15, 0.1,
)  # fmt: skip
_CHANNEL_WEIGHTS = {"phone": 0.30, "email": 0.30, "chat": 0.22, "web": 0.18}
# Mean minutes from creation to triage: live channels are triaged while the customer waits.
_INTAKE_MINUTES = {"phone": 3.0, "email": 40.0, "chat": 4.0, "web": 25.0}
_DISPATCH_MINUTES = 12.0
_PRIORITY_WEIGHTS = {"P1": 0.05, "P2": 0.20, "P3": 0.50, "P4": 0.25}
_PRIORITY_WORK = {"P1": 1.5, "P2": 1.2, "P3": 1.0, "P4": 0.8}
_ESCALATION_RATE = {"P1": 0.35, "P2": 0.12}
# Urgent tickets are chased: customers and suppliers answer them sooner.
_PRIORITY_WAIT = {"P1": 0.2, "P2": 0.5, "P3": 1.0, "P4": 1.2}
# ITIL priority matrix: (impact, urgency) pairs that yield each priority.
_IMPACT_URGENCY = {
    "P1": (("high", "high"),),
    "P2": (("high", "medium"), ("medium", "high")),
    "P3": (("high", "low"), ("medium", "medium"), ("low", "high")),
    "P4": (("medium", "low"), ("low", "medium"), ("low", "low")),
}
_BUSINESS_SHARE = 0.25
_TICKETS_PER_CUSTOMER = 2.5


class _Profile(NamedTuple):
    share: float  # relative share of the organisation's tickets
    work_minutes: float  # median active work on a P3 ticket's main step
    third_party_rate: float  # share of tickets that wait on a supplier or partner
    categories: dict[str, tuple[float, float, tuple[str, ...]]]  # name: (weight, work factor, subcategories)


# What the teams of teams.csv handle. A team added to teams.csv but not described here gets
# the generic profile, so the reference data stays the one list of teams.
_TEAM_PROFILES = {
    "billing": _Profile(
        share=0.24,
        work_minutes=30,
        third_party_rate=0.05,
        categories={
            "invoice_query": (0.4, 0.8, ("wrong_amount", "missing_invoice")),
            "payment_failed": (0.3, 1.0, ("card_declined", "direct_debit")),
            "refund_request": (0.3, 1.3, ("overcharge", "cancellation")),
        },
    ),
    "tech_support": _Profile(
        share=0.32,
        work_minutes=34,
        third_party_rate=0.10,
        categories={
            "login_issue": (0.35, 0.6, ("password_reset", "mfa")),
            "connectivity": (0.25, 1.2, ("outage", "slow_connection")),
            "software_bug": (0.2, 1.6, ("app_crash", "data_error")),
            "device_setup": (0.2, 1.0, ("router", "mobile")),
        },
    ),
    "accounts": _Profile(
        share=0.20,
        work_minutes=36,
        third_party_rate=0.03,
        categories={
            "address_change": (0.35, 0.6, ("home", "billing_address")),
            "access_rights": (0.35, 1.0, ("add_user", "remove_user")),
            "account_closure": (0.3, 1.4, ("voluntary", "bereavement")),
        },
    ),
    "field_service": _Profile(
        share=0.12,
        work_minutes=55,
        third_party_rate=0.12,
        categories={
            "installation": (0.45, 1.0, ("new_line", "upgrade")),
            "repair_visit": (0.4, 1.2, ("hardware_fault", "cabling")),
            "equipment_return": (0.15, 0.5, ("courier", "drop_off")),
        },
    ),
    "onboarding": _Profile(
        share=0.12,
        work_minutes=56,
        third_party_rate=0.05,
        categories={
            "new_contract": (0.45, 1.0, ("consumer", "business")),
            "migration": (0.3, 1.5, ("from_competitor", "plan_change")),
            "training_request": (0.25, 0.8, ("webinar", "one_to_one")),
        },
    ),
}
_GENERIC_PROFILE = _Profile(
    share=0.15,
    work_minutes=40,
    third_party_rate=0.08,
    categories={
        "general_request": (0.6, 1.0, ("question", "change")),
        "service_complaint": (0.4, 1.3, ("quality", "staff")),
    },
)
_SUBCATEGORY_MISSING = 0.15

# --- the process ---------------------------------------------------------------------------
_MISROUTE_RATE = 0.08
_PENDING_CUSTOMER_RATE = 0.10
_HANDOFF_RATE = 0.07
_HANDBACK_RATE = 0.4  # of handoffs, the share that come back to the first team (ping-pong)
_REOPEN_RATE = 0.06
_WORK_SIGMA = 0.5
# The steps a ticket can take, in order; each one is a piece of work some team queues for.
_MISROUTE, _MAIN, _ESCALATION, _THIRD_PARTY, _CUSTOMER, _HANDOFF, _HANDBACK, _REOPEN = range(8)
_N_STEPS = 8
# Median work of each step relative to the team's main step; the misroute is a short look
# by the wrong team, the same whatever the ticket.
_STEP_WORK = np.array([0.0, 1.0, 0.8, 0.5, 0.5, 0.8, 0.4, 0.6])
_MISROUTE_LOOK_MINUTES = 8.0
# Steps a queue serves before its own new work: escalations, and work that comes from another
# team, which has queued once already (it also keeps one team's backlog from holding up the
# tickets of the others).
_FRONT_OF_QUEUE = frozenset({_MISROUTE, _ESCALATION, _HANDOFF, _HANDBACK})
_RESOLUTION_CODES = {
    "solved": 0.72,
    "workaround": 0.12,
    "no_fault_found": 0.08,
    "duplicate": 0.03,
    "customer_withdrew": 0.05,
}

# --- staffing ------------------------------------------------------------------------------
_SHIFT_HOURS = 8
_WEEKDAY_SHIFT_STARTS = (7, 9, 13)  # early, mid, late: covers 07:00-21:00 UTC, doubled at the peaks
_WEEKEND_SHIFT_STARTS = (7, 13, 9)  # a small weekend crew covers early and late first
_WEEKEND_CREW_SHARE = 0.4
_TARGET_UTILISATION = 0.70
_TEAM_SIZES = range(6, 13)

# --- outcomes ------------------------------------------------------------------------------
_SHORTAGE_BLAME = 0.85  # a late ticket of a short-staffed team is mostly blamed on staffing
# How often each cause is given for a breach with nothing telling about it; a cause in
# delay_causes.csv not listed here is rare.
_DELAY_CAUSE_WEIGHTS = {
    "process_design": 1.0,
    "technical_fault": 1.0,
    "internal_communication": 1.0,
    "staffing_shortage": 0.3,
    "customer_change": 0.5,
    "third_party": 0.5,
    "regulatory_change": 0.15,
    "emergency_event": 0.1,
}
_SURVEY_RATE = 0.30
_COMMENT_RATE = 0.35
_PERSONAL_DATA_RATE = 0.12
_COMMENTS = {
    "good": (
        "Quick and friendly help, thank you.",
        "Problem solved on the first contact.",
        "Great service from the team.",
        "Clear explanation and fast fix.",
    ),
    "mixed": (
        "It took a while but it works now.",
        "OK in the end, communication could be better.",
        "Had to chase once, then it was fine.",
    ),
    "bad": (
        "Nobody got back to me for days.",
        "I had to explain the problem three times.",
        "Passed from one team to another, very frustrating.",
        "Still waiting for a proper fix.",
    ),
}
_FIRST_NAMES = ("anna", "ben", "chloe", "david", "emma", "farid", "grace", "hugo", "ines", "jack")
_LAST_NAMES = ("smith", "meyer", "rossi", "dubois", "novak", "jensen", "garcia", "kowalski")

# --- codes for the compact internal representation -----------------------------------------
_EV = {name: i for i, name in enumerate(contract.EVENT_TYPES)}
_ST = {name: i for i, name in enumerate(contract.TICKET_STATUSES)}
_NONE = -1  # no value, for every code column and time column below
_CLEARS_HOLDER = -2  # an event that takes the ticket away from its agent

# Discrete-event kinds.
_DAY, _SHIFT_ON, _SHIFT_OFF, _READY, _DONE = range(5)


# --- reference data and configuration ------------------------------------------------------


@dataclass(frozen=True)
class _Reference:
    teams: tuple[str, ...]
    resolution_target_hours: dict[str, float]
    delay_causes: tuple[str, ...]


def _read_seed(name: str) -> list[dict[str, str]]:
    with open(SEEDS_DIR / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _load_reference() -> _Reference:
    teams = tuple(row["team_id"] for row in _read_seed("teams.csv"))
    sla = _read_seed("sla_policies.csv")
    targets = {row["priority"]: float(row["resolution_target_hours"]) for row in sla}
    causes = tuple(row["delay_cause"] for row in _read_seed("delay_causes.csv"))
    if missing := set(contract.PRIORITIES) - set(targets):
        raise ValueError(f"sla_policies.csv has no resolution target for {sorted(missing)}")
    if unknown := set(causes) - set(contract.DELAY_CAUSES):
        raise ValueError(f"delay_causes.csv has causes the contract does not know: {sorted(unknown)}")
    if not teams:
        raise ValueError("teams.csv lists no teams")
    return _Reference(teams, targets, causes)


@dataclass(frozen=True)
class StaffingShortage:
    """From `start` for `days` days, a share `severity` of the team's agents is absent."""

    team: str
    start: date
    days: int = 14
    severity: float = 0.5
    kind: ClassVar[str] = "staffing_shortage"
    metrics: ClassVar[tuple[str, ...]] = ("resolution_time", "first_response_time", "sla_breach", "csat")

    def __post_init__(self) -> None:
        if not isinstance(self.start, date) or isinstance(self.start, datetime):
            raise ValueError(f"staffing_shortage start must be a date, got {self.start!r}")
        if not isinstance(self.days, int) or self.days < 1:
            raise ValueError(f"staffing_shortage days must be a positive whole number, got {self.days!r}")
        if not 0 < self.severity < 1:
            raise ValueError(
                f"staffing_shortage severity {self.severity} is out of range: it is the share of the "
                "team's agents absent and must lie strictly between 0 and 1"
            )

    @property
    def end(self) -> date:
        """The first day back at full strength."""
        return self.start + timedelta(days=self.days)


def _check_window(kind: str, start: date, days: int) -> None:
    if not isinstance(start, date) or isinstance(start, datetime):
        raise ValueError(f"{kind} start must be a date, got {start!r}")
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"{kind} days must be a positive whole number, got {days!r}")


@dataclass(frozen=True)
class TechnicalFault:
    """A fault in what the team supports: extra tickets arrive and each takes longer to fix.

    From `start` for `days` days the team gets `volume` times its usual demand on top (drawn
    apart from the usual arrivals), and the main work of its tickets takes `factor` times as long.
    """

    team: str
    start: date
    days: int = 3
    volume: float = 1.0
    factor: float = 1.5
    kind: ClassVar[str] = "technical_fault"
    metrics: ClassVar[tuple[str, ...]] = ("resolution_time", "first_response_time", "sla_breach")

    def __post_init__(self) -> None:
        _check_window(self.kind, self.start, self.days)
        if self.volume < 0 or self.factor < 1:
            raise ValueError(f"technical_fault needs volume >= 0 and factor >= 1, got {self.volume}, {self.factor}")

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class ProcessChange:
    """A new approval step in task assignment (stage 2): each new ticket of the team waits
    `hours` between triage and reaching the team's queue, from `start` for `days` days."""

    team: str
    start: date
    days: int = 28
    hours: float = 3.0
    kind: ClassVar[str] = "process_change"
    metrics: ClassVar[tuple[str, ...]] = ("first_response_time", "resolution_time")

    def __post_init__(self) -> None:
        _check_window(self.kind, self.start, self.days)
        if self.hours <= 0:
            raise ValueError(f"process_change hours must be positive, got {self.hours}")

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class ThirdPartyDelay:
    """A supplier of one category is slow: from `start` for `days` days, a share `share` of
    the category's new tickets must wait on it, and every wait on it takes `factor` times as long."""

    team: str
    start: date
    category: str = ""
    days: int = 21
    share: float = 0.6
    factor: float = 2.0
    kind: ClassVar[str] = "third_party_delay"
    metrics: ClassVar[tuple[str, ...]] = ("resolution_time", "sla_breach")

    def __post_init__(self) -> None:
        _check_window(self.kind, self.start, self.days)
        if not 0 <= self.share <= 1 or self.factor < 1:
            raise ValueError(
                f"third_party_delay needs share in [0, 1] and factor >= 1, got {self.share}, {self.factor}"
            )

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class CsatDrop:
    """Customers of the team rate `points` lower (e.g. a policy they dislike), times unchanged:
    tickets resolved from `start` for `days` days."""

    team: str
    start: date
    days: int = 21
    points: float = 0.8
    kind: ClassVar[str] = "csat_drop"
    metrics: ClassVar[tuple[str, ...]] = ("csat",)

    def __post_init__(self) -> None:
        _check_window(self.kind, self.start, self.days)
        if self.points <= 0:
            raise ValueError(f"csat_drop points must be positive, got {self.points}")

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class SlowCreep:
    """The team's main work grows slowly, from 1 at `start` to `factor` after `days` days,
    and stays there (a tool that degrades, knowledge that leaves)."""

    team: str
    start: date
    days: int = 42
    factor: float = 1.5
    kind: ClassVar[str] = "slow_creep"
    metrics: ClassVar[tuple[str, ...]] = ("resolution_time", "first_response_time", "sla_breach")

    def __post_init__(self) -> None:
        _check_window(self.kind, self.start, self.days)
        if self.factor <= 1:
            raise ValueError(f"slow_creep factor must be above 1, got {self.factor}")

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class Holidays:
    """Public holidays: demand as on a Sunday, and only the weekend crew works. No team."""

    dates: tuple[date, ...]
    team: ClassVar[None] = None
    kind: ClassVar[str] = "holidays"
    metrics: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for day in self.dates:
            if not isinstance(day, date) or isinstance(day, datetime):
                raise ValueError(f"holidays dates must be dates, got {day!r}")

    @property
    def start(self) -> date:
        return min(self.dates)

    @property
    def end(self) -> date:
        return max(self.dates) + timedelta(days=1)


Scenario = StaffingShortage | TechnicalFault | ProcessChange | ThirdPartyDelay | CsatDrop | SlowCreep | Holidays
_SCENARIO_KINDS: dict[str, type] = {
    k.kind: k for k in (StaffingShortage, TechnicalFault, ProcessChange, ThirdPartyDelay, CsatDrop, SlowCreep)
}


@dataclass
class SimulationConfig:
    seed: int = 7
    start: date = date(2026, 6, 1)
    days: int = 120
    tickets_per_day: float = 200  # organisation-wide mean on a weekday
    bad_record_rate: float = 0.002
    scenarios: list[Scenario] = field(default_factory=list)


def parse_scenario(text: str) -> Scenario:
    """Parse a scenario given as `kind(key=value,...)`; a ValueError names what is wrong.

    e.g. `staffing_shortage(team=tech_support,start=2026-08-30,days=14,severity=0.5)`
    (days defaults to 14, severity to 0.5). Every kind takes `team` and `start` and its own
    optional parameters (the fields of its class, e.g. `csat_drop(...,points=0.8)`).
    """
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", text)
    if not match:
        raise ValueError(f"cannot parse scenario {text!r}: expected kind(key=value,...)")
    kind, body = match.groups()
    if kind not in _SCENARIO_KINDS:
        known = sorted(_SCENARIO_KINDS)
        raise ValueError(f"unknown scenario kind {kind!r} in {text!r}; known kinds: {known}")
    cls = _SCENARIO_KINDS[kind]
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key:
            raise ValueError(f"bad parameter {part!r} in {text!r}: expected key=value")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice in {text!r}")
        params[key] = value
    types = {f.name: f.type for f in fields(cls)}
    if unknown := set(params) - set(types):
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} in {text!r}; allowed: {sorted(types)}")
    if missing := {"team", "start"} - set(params):
        raise ValueError(f"missing parameter(s) {sorted(missing)} in {text!r}")
    teams = _load_reference().teams
    if params["team"] not in teams:
        raise ValueError(f"unknown team {params['team']!r} in {text!r}; teams: {list(teams)}")
    values: dict[str, object] = {}
    for key, value in params.items():
        try:
            values[key] = _PARSERS[types[key]](value)
        except ValueError:
            what = {"date": "start date", "int": "days"}.get(types[key], key)
            expected = {"date": "YYYY-MM-DD", "int": "a whole number", "float": "a number"}.get(types[key], "text")
            raise ValueError(f"bad {what} {value!r} in {text!r}: expected {expected}") from None
    try:
        return cls(**values)
    except ValueError as e:
        raise ValueError(f"{e} (in {text!r})") from None


# How each field type of a scenario class is read from its text (the classes' annotations are
# strings under `from __future__ import annotations`).
_PARSERS = {"str": str, "date": date.fromisoformat, "int": int, "float": float}


def default_scenarios(config: SimulationConfig) -> list[Scenario]:
    """One 14-day shortage of half of tech_support, from day 90 of the period.

    Day 90 of the default 120 days leaves a fortnight after it to recover; a period too short
    for that gets the shortage 60 % of the way in instead.
    """
    offset = 90 if config.days >= 90 + 2 * 14 else int(config.days * 0.6)
    return [StaffingShortage("tech_support", config.start + timedelta(days=offset), 14, 0.5)]


def _validate(config: SimulationConfig, ref: _Reference) -> None:
    if config.days < 1:
        raise ValueError(f"days must be at least 1, got {config.days}")
    if config.tickets_per_day <= 0:
        raise ValueError(f"tickets_per_day must be positive, got {config.tickets_per_day}")
    if not 0 <= config.bad_record_rate < 1:
        raise ValueError(f"bad_record_rate must lie in [0, 1), got {config.bad_record_rate}")
    for scenario in config.scenarios:
        if scenario.team is not None and scenario.team not in ref.teams:
            teams = list(ref.teams)
            raise ValueError(f"scenario {scenario} names unknown team {scenario.team!r}; teams: {teams}")
        if isinstance(scenario, ThirdPartyDelay):
            categories = list(_TEAM_PROFILES.get(scenario.team, _GENERIC_PROFILE).categories)
            if scenario.category not in categories:
                raise ValueError(
                    f"scenario {scenario} names category {scenario.category!r}, which team "
                    f"{scenario.team!r} does not handle; its categories: {categories}"
                )


# --- the simulated data and its snapshots --------------------------------------------------


def _timestamps(epoch_s: int, secs: np.ndarray) -> pd.DatetimeIndex:
    """UTC timestamps of whole seconds since the period start; -1 gives NaT."""
    secs = np.asarray(secs, dtype=np.int64)
    ns = np.where(secs < 0, np.iinfo(np.int64).min, (secs + epoch_s) * 1_000_000_000)  # int64 min is NaT
    return pd.to_datetime(ns.view("M8[ns]"), utc=True)


def _last_per_ticket(ticket: np.ndarray, values: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """The last valid value of each ticket's events (events are sorted by ticket, then time)."""
    out = np.full(n, _NONE, dtype=values.dtype)
    idx = np.flatnonzero(valid)
    if idx.size:
        tk = ticket[idx]
        last = np.r_[tk[1:] != tk[:-1], True]
        out[tk[last]] = values[idx[last]]
    return out


def _first_per_ticket(ticket: np.ndarray, values: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """The first valid value of each ticket's events."""
    out = np.full(n, _NONE, dtype=values.dtype)
    idx = np.flatnonzero(valid)
    if idx.size:
        tk = ticket[idx]
        first = np.r_[True, tk[1:] != tk[:-1]]
        out[tk[first]] = values[idx[first]]
    return out


def _names(values) -> np.ndarray:
    """A lookup array for codes: index -1 (_NONE) lands on the trailing None."""
    return np.array([*values, None], dtype=object)


@dataclass(frozen=True)
class _History:
    """The whole simulated story in compact arrays; snapshots are cut from it.

    Times are whole seconds since the period start (-1: none). Tickets are ordered by
    creation, events by ticket then time, surveys by submission, shifts by start.
    """

    epoch_s: int
    team_names: np.ndarray
    agent_names: np.ndarray
    t_id: np.ndarray
    t_created: np.ndarray
    t_static: dict[str, np.ndarray]  # attributes fixed at creation, as public columns
    t_initial_team: np.ndarray
    t_target_s: np.ndarray
    t_cause_if_late: np.ndarray
    t_resolution_code: np.ndarray
    e_id: np.ndarray
    e_ticket: np.ndarray
    e_time: np.ndarray
    e_type: np.ndarray
    e_from_status: np.ndarray
    e_to_status: np.ndarray
    e_from_team: np.ndarray
    e_to_team: np.ndarray
    e_agent: np.ndarray
    surveys: pd.DataFrame
    s_time: np.ndarray
    agents: pd.DataFrame
    shifts: pd.DataFrame
    sh_time: np.ndarray

    def timestamps(self, secs: np.ndarray) -> pd.DatetimeIndex:
        return _timestamps(self.epoch_s, secs)

    def frames(self, limit: float) -> dict[str, pd.DataFrame]:
        """The records as the systems held them `limit` seconds after the period start."""
        n = int(np.searchsorted(self.t_created, limit, side="right"))
        em = self.e_time <= limit
        tk, tm, typ = self.e_ticket[em], self.e_time[em], self.e_type[em]
        to_status, to_team, agent = self.e_to_status[em], self.e_to_team[em], self.e_agent[em]
        moved = (typ == _EV["reassigned"]) | (typ == _EV["handoff"])
        holder = np.where(moved, _CLEARS_HOLDER, agent)

        in_progress = _ST["in_progress"]
        status = _last_per_ticket(tk, to_status, to_status != _NONE, n)
        team = _last_per_ticket(tk, to_team, to_team != _NONE, n)
        team = np.where(team == _NONE, self.t_initial_team[:n], team)
        held_by = _last_per_ticket(tk, holder, holder != _NONE, n)
        held_by[held_by == _CLEARS_HOLDER] = _NONE
        done = np.isin(status, (_ST["resolved"], _ST["closed"]))
        resolved = np.where(done, _last_per_ticket(tk, tm, typ == _EV["resolved"], n), _NONE)
        late = done & (resolved - self.t_created[:n] > self.t_target_s[:n])
        status_names, team_names = _names(contract.TICKET_STATUSES), self.team_names
        tickets = {
            "ticket_id": self.t_id[:n].copy(),
            "source_system": np.full(n, SOURCE_SYSTEM, dtype=object),
            "created_at": self.timestamps(self.t_created[:n]),
            "updated_at": self.timestamps(_last_per_ticket(tk, tm, np.ones(tk.size, bool), n)),
            **{name: values[:n].copy() for name, values in self.t_static.items()},
            "team_id": team_names[team],
            "agent_id": self.agent_names[held_by],
            "status": status_names[status],
            "first_response_at": self.timestamps(_first_per_ticket(tk, tm, to_status == in_progress, n)),
            "resolved_at": self.timestamps(resolved),
            "closed_at": self.timestamps(_last_per_ticket(tk, tm, typ == _EV["closed"], n)),
            "reopen_count": np.bincount(tk[typ == _EV["reopened"]], minlength=n),
            "reassignment_count": np.bincount(tk[typ == _EV["reassigned"]], minlength=n),
            "escalated": np.bincount(tk[typ == _EV["escalated"]], minlength=n) > 0,
            "resolution_code": np.where(done, self.t_resolution_code[:n], None),
            "delay_cause": np.where(late, self.t_cause_if_late[:n], None),
        }
        events = {
            "event_id": self.e_id[em],
            "ticket_id": self.t_id[tk],
            "occurred_at": self.timestamps(tm),
            "event_type": np.array(contract.EVENT_TYPES, dtype=object)[typ],
            "from_status": status_names[self.e_from_status[em]],
            "to_status": status_names[to_status],
            "from_team": team_names[self.e_from_team[em]],
            "to_team": team_names[to_team],
            "agent_id": self.agent_names[agent],
        }
        # Every column above is a fresh array, so the frames need not copy them again (which
        # for a million tickets costs more than the rest of the snapshot).
        return {
            "tickets": pd.DataFrame({c: tickets[c] for c in contract.TICKET.columns}, copy=False),
            "ticket_events": pd.DataFrame(events, copy=False),
            "surveys": self.surveys.iloc[: int(np.searchsorted(self.s_time, limit, side="right"))].copy(),
            "agents": (self.agents if limit >= 0 else self.agents.iloc[:0]).copy(),
            "shifts": self.shifts.iloc[: int(np.searchsorted(self.sh_time, limit, side="right"))].copy(),
        }


def _utc(ts) -> pd.Timestamp:
    """A snapshot instant: a tz-aware timestamp, or a date meaning its midnight UTC."""
    if isinstance(ts, date) and not isinstance(ts, datetime):
        return pd.Timestamp(ts).tz_localize("UTC")
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        raise ValueError(f"as_of needs a timezone-aware timestamp (or a date), got {ts!r}")
    return stamp.tz_convert("UTC")


@dataclass
class SimulatedData:
    """The records of the simulated organisation as its systems held them at `as_of_ts`.

    `simulate()` returns them as of the end of the period, the "now" of a run: tickets of the
    last days are still open. `as_of(ts)` cuts the same story at any other instant, before
    or after; `full_lifecycle()` shows every ticket through to its closure.

    Frames have exactly the contract's columns, in contract order. `raw_overrides` holds the
    values a source writes verbatim instead of the typed one ({entity: {id: {field: text}}}):
    the unparseable survey timestamps, which only a file can carry.
    """

    tickets: pd.DataFrame
    ticket_events: pd.DataFrame
    surveys: pd.DataFrame
    agents: pd.DataFrame
    shifts: pd.DataFrame
    ground_truth: dict
    raw_overrides: dict
    as_of_ts: pd.Timestamp | None
    _history: _History = field(repr=False)

    @property
    def period_start(self) -> pd.Timestamp:
        return pd.Timestamp(self.ground_truth["start"]).tz_localize("UTC")

    @property
    def period_end(self) -> pd.Timestamp:
        """When the period's arrivals stop (exclusive); work on its tickets runs on past it."""
        return pd.Timestamp(self.ground_truth["end"]).tz_localize("UTC")

    def as_of(self, ts) -> SimulatedData:
        """The state of the helpdesk and survey tool at instant `ts` (tz-aware, or a date)."""
        stamp = _utc(ts)
        return self._cut((stamp - self.period_start).total_seconds(), stamp)

    def full_lifecycle(self) -> SimulatedData:
        """Every ticket through to its closure, and every survey, however far past the period."""
        return self._cut(math.inf, None)

    def _cut(self, limit: float, stamp: pd.Timestamp | None) -> SimulatedData:
        return SimulatedData(
            **self._history.frames(limit),
            ground_truth=self.ground_truth,
            raw_overrides=self.raw_overrides,
            as_of_ts=stamp,
            _history=self._history,
        )


# --- the simulation ------------------------------------------------------------------------


def simulate(config: SimulationConfig) -> SimulatedData:
    """Simulate the organisation over the config's period; deterministic for `config.seed`."""
    ref = _load_reference()
    _validate(config, ref)
    rng_arrivals, rng_tickets, rng_process, rng_staff, rng_outcomes, rng_bad = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6)
    )
    profiles = [_TEAM_PROFILES.get(team, _GENERIC_PROFILE) for team in ref.teams]

    created = _draw_arrivals(config, rng_arrivals)
    tickets = _draw_tickets(created, profiles, rng_tickets)
    # Scenarios other than a staffing shortage draw from their own generator, and only when
    # present, so a configuration without them simulates exactly as it always did.
    rng_scenarios = np.random.default_rng([config.seed, _SCENARIO_STREAM])
    tickets = _add_fault_tickets(config, ref, profiles, tickets, rng_scenarios)
    plan = _draw_plan(tickets, profiles, rng_process)
    staff = _staff_teams(config, ref, plan, rng_staff)
    _apply_scenarios(config, ref, plan, rng_scenarios)
    outcome = _run_desk(plan, staff, config)
    return _assemble(config, ref, tickets, plan, staff, outcome, rng_outcomes, rng_bad)


_SCENARIO_STREAM = 104_729


def _holidays(config: SimulationConfig) -> set[int]:
    """Days of the period (0-based) that are public holidays."""
    return {
        (day - config.start).days
        for s in config.scenarios
        if isinstance(s, Holidays)
        for day in s.dates
        if 0 <= (day - config.start).days < config.days
    }


def _created_in(config: SimulationConfig, minutes: np.ndarray, scenario) -> np.ndarray:
    first = (scenario.start - config.start).days * 1440.0
    return (minutes >= first) & (minutes < first + scenario.days * 1440.0)


def _add_fault_tickets(
    config: SimulationConfig, ref: _Reference, profiles: list[_Profile], tickets: dict, rng: np.random.Generator
) -> dict:
    """The extra tickets of technical faults, merged into the usual ones in order of creation.

    They are drawn as the team's usual demand over the fault's days (times its volume), from
    the scenarios' own generator; the usual tickets keep what they were drawn with.
    """
    faults = [s for s in config.scenarios if isinstance(s, TechnicalFault) and s.volume > 0]
    if not faults:
        return tickets
    for fault in faults:
        t = ref.teams.index(fault.team)
        first = (fault.start - config.start).days
        days = np.arange(max(0, first), min(config.days, first + fault.days))
        if not days.size:
            continue
        share = profiles[t].share / sum(p.share for p in profiles)
        dow = (config.start.weekday() + days) % 7
        daily = fault.volume * share * config.tickets_per_day * np.asarray(_WEEKDAY_VOLUME)[dow]
        hourly = np.outer(daily, np.asarray(_HOUR_PROFILE) / sum(_HOUR_PROFILE)).ravel()
        hours = np.repeat(np.arange(hourly.size), rng.poisson(hourly)) + days[0] * 24
        created = np.sort((hours + rng.random(hours.size)) * 60.0)
        only_team = [p._replace(share=p.share if k == t else 0.0) for k, p in enumerate(profiles)]
        extra = _draw_tickets(created, only_team, rng)
        tickets = _merge_tickets(tickets, extra)
    return tickets


def _merge_tickets(a: dict, b: dict) -> dict:
    order = np.argsort(np.concatenate([a["created"], b["created"]]), kind="stable")
    merged = {"n": a["n"] + b["n"], "columns": {}}
    for key in ("created", "triaged", "assigned", "team", "priority", "cat_work"):
        merged[key] = np.concatenate([a[key], b[key]])[order]
    for key in a["columns"]:
        merged["columns"][key] = np.concatenate([a["columns"][key], b["columns"][key]])[order]
    merged["planned"] = np.concatenate([a.get("planned", np.ones(a["n"], bool)), np.zeros(b["n"], bool)])[order]
    return merged


def _apply_scenarios(config: SimulationConfig, ref: _Reference, plan: dict, rng: np.random.Generator) -> None:
    """Change the planned work of the tickets a scenario touches (after staffing is sized)."""
    team, created = plan["team"], plan["created"]
    category = plan["columns"]["category"]
    for s in config.scenarios:
        if isinstance(s, (StaffingShortage, Holidays, CsatDrop)):
            continue  # absences are in the rota, holidays in arrivals and rota, CSAT in surveys
        ours = team == ref.teams.index(s.team)
        hit = ours & _created_in(config, created, s)
        if isinstance(s, TechnicalFault):
            plan["work"][hit, _MAIN] *= s.factor
        elif isinstance(s, ProcessChange):
            # The approval step holds the ticket before it reaches the team's queue.
            plan["assigned"][hit] += s.hours * 60.0
        elif isinstance(s, ThirdPartyDelay):
            hit &= category == s.category
            newly = hit & ~plan["needs"][:, _THIRD_PARTY] & (rng.random(plan["n"]) < s.share)
            if newly.any():
                plan["needs"][newly, _THIRD_PARTY] = True
                base = np.array([p.work_minutes for p in _profiles(ref)])[team[newly]]
                plan["work"][newly, _THIRD_PARTY] = base * _STEP_WORK[_THIRD_PARTY]
            plan["wait_third_party"][hit] *= s.factor
        elif isinstance(s, SlowCreep):
            first = (s.start - config.start).days * 1440.0
            ramp = np.clip((created - first) / (s.days * 1440.0), 0.0, 1.0)
            plan["work"][ours & (created >= first), _MAIN] *= (1 + (s.factor - 1) * ramp)[ours & (created >= first)]


def _profiles(ref: _Reference) -> list[_Profile]:
    return [_TEAM_PROFILES.get(team, _GENERIC_PROFILE) for team in ref.teams]


def _draw_arrivals(config: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """Creation minutes since the period start: Poisson per hour, weekly and daily profile."""
    dow = (config.start.weekday() + np.arange(config.days)) % 7
    noise = rng.lognormal(0.0, _DAILY_VOLUME_SIGMA, config.days)
    volume = np.asarray(_WEEKDAY_VOLUME)[dow]
    for day in _holidays(config):
        volume[day] = _WEEKDAY_VOLUME[6]  # a public holiday sees Sunday's demand
    daily = config.tickets_per_day * volume * noise
    hourly = np.outer(daily, np.asarray(_HOUR_PROFILE) / sum(_HOUR_PROFILE)).ravel()
    hours = np.repeat(np.arange(hourly.size), rng.poisson(hourly))
    return np.sort((hours + rng.random(hours.size)) * 60.0)


def _pick(rng: np.random.Generator, weights, size: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(p.size, size=size, p=p / p.sum())


def _draw_tickets(created: np.ndarray, profiles: list[_Profile], rng: np.random.Generator) -> dict:
    """Who asks for what, on which channel, how urgently: everything fixed at creation."""
    n = created.size
    team = _pick(rng, [p.share for p in profiles], n)
    channels = list(_CHANNEL_WEIGHTS)
    channel = _pick(rng, list(_CHANNEL_WEIGHTS.values()), n)
    priority = _pick(rng, [_PRIORITY_WEIGHTS[p] for p in contract.PRIORITIES], n)

    # A pool of customers with skewed activity, so some come back often.
    n_customers = max(50, int(n / _TICKETS_PER_CUSTOMER))
    activity = 1.0 / np.arange(1, n_customers + 1) ** 0.6
    customer = rng.permutation(n_customers)[_pick(rng, activity, n)]
    business = rng.random(n_customers) < _BUSINESS_SHARE

    category = np.empty(n, dtype=object)
    subcategory = np.empty(n, dtype=object)
    cat_work = np.ones(n)
    for t, profile in enumerate(profiles):
        rows = np.flatnonzero(team == t)
        names = list(profile.categories)
        pick = _pick(rng, [profile.categories[c][0] for c in names], rows.size)
        category[rows] = np.array(names, dtype=object)[pick]
        cat_work[rows] = np.array([profile.categories[c][1] for c in names])[pick]
        subs = [profile.categories[names[k]][2] for k in pick]
        which = rng.random(rows.size)
        subcategory[rows] = [s[int(u * len(s))] for s, u in zip(subs, which, strict=True)]
    subcategory[rng.random(n) < _SUBCATEGORY_MISSING] = None

    impact = np.empty(n, dtype=object)
    urgency = np.empty(n, dtype=object)
    which = rng.random(n)
    for k, prio in enumerate(contract.PRIORITIES):
        rows = np.flatnonzero(priority == k)
        combos = _IMPACT_URGENCY[prio]
        chosen = (which[rows] * len(combos)).astype(int)
        impact[rows] = np.array([c[0] for c in combos], dtype=object)[chosen]
        urgency[rows] = np.array([c[1] for c in combos], dtype=object)[chosen]

    intake = rng.exponential(1.0, n) * np.array([_INTAKE_MINUTES[c] for c in channels])[channel]
    triaged = created + intake
    assigned = triaged + rng.exponential(_DISPATCH_MINUTES, n)
    return {
        "n": n,
        "created": created,
        "triaged": triaged,
        "assigned": assigned,
        "team": team,
        "priority": priority,
        "cat_work": cat_work,
        "columns": {
            "channel": np.array(channels, dtype=object)[channel],
            "customer_id": np.char.add("CU-", np.char.zfill(customer.astype(str), 6)).astype(object),
            "customer_segment": np.where(business[customer], "business", "consumer").astype(object),
            "category": category,
            "subcategory": subcategory,
            "priority": np.array(contract.PRIORITIES, dtype=object)[priority],
            "impact": impact,
            "urgency": urgency,
        },
    }


def _draw_plan(tickets: dict, profiles: list[_Profile], rng: np.random.Generator) -> dict:
    """Which steps each ticket will need, which team does each, and how much work each is.

    Drawn up front for every ticket, independently of how the queues turn out, so that a
    scenario changes the timing of the same work rather than the work itself.
    """
    n, team, priority = tickets["n"], tickets["team"], tickets["priority"]
    n_teams = len(profiles)
    u = rng.random((n, 9))
    can_move = n_teams > 1  # misrouting and handoffs need a second team
    needs = np.zeros((n, _N_STEPS), dtype=bool)
    needs[:, _MISROUTE] = can_move & (u[:, 0] < _MISROUTE_RATE)
    needs[:, _MAIN] = True
    escalation_rate = np.array([_ESCALATION_RATE.get(p, 0.0) for p in contract.PRIORITIES])
    needs[:, _ESCALATION] = u[:, 1] < escalation_rate[priority]
    needs[:, _THIRD_PARTY] = u[:, 2] < np.array([p.third_party_rate for p in profiles])[team]
    needs[:, _CUSTOMER] = u[:, 3] < _PENDING_CUSTOMER_RATE
    needs[:, _HANDOFF] = can_move & (u[:, 4] < _HANDOFF_RATE)
    needs[:, _HANDBACK] = needs[:, _HANDOFF] & (u[:, 5] < _HANDBACK_RATE)
    needs[:, _REOPEN] = u[:, 6] < _REOPEN_RATE

    # Another team than the ticket's own, for misrouting and for handoffs.
    wrong = (team + 1 + (u[:, 7] * (n_teams - 1)).astype(int)) % n_teams
    other = (team + 1 + (u[:, 8] * (n_teams - 1)).astype(int)) % n_teams
    final = np.where(needs[:, _HANDOFF] & ~needs[:, _HANDBACK], other, team)
    step_team = np.repeat(team[:, None], _N_STEPS, axis=1)
    step_team[:, _MISROUTE] = wrong
    step_team[:, _HANDOFF] = other
    step_team[:, _REOPEN] = final

    base = np.array([p.work_minutes for p in profiles])
    prio_work = np.array([_PRIORITY_WORK[p] for p in contract.PRIORITIES])[priority]
    median = base[step_team] * (tickets["cat_work"] * prio_work)[:, None]
    median *= _STEP_WORK
    median[:, _MISROUTE] = _MISROUTE_LOOK_MINUTES
    noise = np.clip(rng.lognormal(0.0, _WORK_SIGMA, (n, _N_STEPS)), 0.2, 4.0)
    work = np.where(needs, median * noise, 0.0)

    hours = 60.0
    chase = np.array([_PRIORITY_WAIT[p] for p in contract.PRIORITIES])[priority]
    return {
        **tickets,
        "needs": needs,
        "step_team": step_team,
        "final_team": final,
        "work": work,
        "wait_customer": chase * np.clip(rng.lognormal(math.log(18 * hours), 0.9, n), hours, 168 * hours),
        "wait_third_party": chase * np.clip(rng.lognormal(math.log(30 * hours), 0.7, n), hours, 240 * hours),
        "reopen_after": rng.uniform(1 * hours, 22 * hours, n),
        "close_after": rng.uniform(24 * hours, 72 * hours, n),
    }


def _weekend_crew(present: int) -> int:
    return min(present, max(2, math.ceil(_WEEKEND_CREW_SHARE * present)))


@dataclass(frozen=True)
class _Staff:
    team_agents: list[list[int]]  # global agent numbers per team
    agent_ids: list[str]
    agent_team: np.ndarray
    hourly_cost: np.ndarray
    absences: list[tuple[int, int, int, frozenset[int]]]  # (team, first day, end day, agents)


def _staff_teams(config: SimulationConfig, ref: _Reference, plan: dict, rng: np.random.Generator) -> _Staff:
    """Size each team for its demand at the target utilisation, and pick who is absent when.

    A team gets the size in 6-12 agents that comes closest to the target utilisation (at the
    default 200 tickets a day, demand decides it). Its work is then scaled by what rounding
    to whole agents, or the size limits at very low or high volumes, leave over, so every
    team starts at the same planned utilisation and scenario effects are comparable across
    teams, volumes and seeds.
    """
    n_teams = len(ref.teams)
    # Teams are sized for the demand they plan for: a fault's extra tickets are not planned.
    planned = plan.get("planned", np.ones(plan["n"], bool))
    load = np.bincount(plan["step_team"][planned].ravel(), weights=plan["work"][planned].ravel(), minlength=n_teams)
    weeks = config.days / 7.0

    def utilisation(t: int, agents: int) -> float:
        shift_minutes = 60 * _SHIFT_HOURS * (5 * agents + 2 * _weekend_crew(agents)) * weeks
        return load[t] / shift_minutes

    team_agents, agent_ids, agent_team = [], [], []
    for t, team in enumerate(ref.teams):
        size = min(_TEAM_SIZES, key=lambda a, t=t: abs(utilisation(t, a) - _TARGET_UTILISATION))
        plan["work"][plan["step_team"] == t] *= _TARGET_UTILISATION / utilisation(t, size)
        first = len(agent_ids)
        team_agents.append(list(range(first, first + size)))
        agent_ids += [f"{team}-a{k + 1:02d}" for k in range(size)]
        agent_team += [t] * size
    hourly_cost = np.round(rng.uniform(25.0, 60.0, len(agent_ids)), 2)

    absences = []
    for scenario in (s for s in config.scenarios if isinstance(s, StaffingShortage)):
        t = ref.teams.index(scenario.team)
        members = team_agents[t]
        # At least one absent, and at least one left to answer the queue.
        size = min(len(members) - 1, max(1, round(scenario.severity * len(members))))
        absent = rng.choice(members, size=size, replace=False)
        first_day = (scenario.start - config.start).days
        absences.append((t, first_day, first_day + scenario.days, frozenset(absent.tolist())))
    return _Staff(team_agents, agent_ids, np.array(agent_team), hourly_cost, absences)


def _roster(staff: _Staff, config: SimulationConfig, day: int) -> list[tuple[int, float]]:
    """(agent, shift start minute) of everyone on duty on a day of the simulation.

    Weekdays the whole present team works, spread over the early/mid/late shifts; weekends a
    rotating crew of about 40 %. Absent agents are left out and the rest re-spread over the
    shifts, as a team lead would re-plan the rota.
    """
    weekday = config.start.weekday() + day
    is_weekend = weekday % 7 >= 5 or day in _holidays(config)
    rows = []
    for t, members in enumerate(staff.team_agents):
        absent = frozenset().union(*(a for team, s, e, a in staff.absences if team == t and s <= day < e))
        present = [a for a in members if a not in absent]
        if not present:
            continue
        if is_weekend:
            crew_size = _weekend_crew(len(present))
            offset = (weekday // 7) * crew_size
            crew = [present[(offset + j) % len(present)] for j in range(crew_size)]
            starts = _WEEKEND_SHIFT_STARTS
        else:
            crew, starts = present, _WEEKDAY_SHIFT_STARTS
        rows += [(a, day * 1440.0 + starts[j % len(starts)] * 60.0) for j, a in enumerate(crew)]
    return rows


class _Outcome(NamedTuple):
    events: list[tuple]  # (ticket, minute, type, from_status, to_status, from_team, to_team, agent)
    shifts: list[tuple[int, float]]
    resolved: np.ndarray  # minute of the final resolution


def _run_desk(plan: dict, staff: _Staff, config: SimulationConfig) -> _Outcome:
    """The discrete-event simulation of the teams working their queues.

    Agents take work only while on shift but finish what they hold past its end. Each queue
    serves P1 tickets, escalations and work passed on by another team first, otherwise in
    order of arrival. It runs day by day until every ticket is finally resolved.
    """
    n = plan["n"]
    needs = plan["needs"]
    step_team, work = plan["step_team"], plan["work"]
    first_step = np.where(needs[:, _MISROUTE], _MISROUTE, _MAIN)
    urgent = (plan["priority"] == 0).tolist()
    escalate, third_party = needs[:, _ESCALATION].tolist(), needs[:, _THIRD_PARTY].tolist()
    customer, handoff = needs[:, _CUSTOMER].tolist(), needs[:, _HANDOFF].tolist()
    handback, reopen = needs[:, _HANDBACK].tolist(), needs[:, _REOPEN].tolist()
    home, other = step_team[:, _MAIN].tolist(), step_team[:, _HANDOFF].tolist()
    wait_customer, wait_third_party = plan["wait_customer"].tolist(), plan["wait_third_party"].tolist()
    reopen_after = plan["reopen_after"].tolist()

    n_agents = len(staff.agent_ids)
    agent_team = staff.agent_team.tolist()
    on_shift = [False] * n_agents
    busy = [False] * n_agents
    in_idle = [False] * n_agents
    idle: list[list[int]] = [[] for _ in staff.team_agents]  # may hold agents gone off shift
    queues: list[list[tuple]] = [[] for _ in staff.team_agents]
    doing = [0] * n  # the step a ticket is being worked on
    resolved = np.full(n, np.nan)
    events: list[tuple] = []
    emit = events.append
    shifts: list[tuple[int, float]] = []
    ev, st = _EV, _ST
    in_progress = st["in_progress"]

    heap = [
        (t, i, _READY, i, s)
        for i, (t, s) in enumerate(zip(plan["assigned"].tolist(), first_step.tolist(), strict=True))
    ]
    heap.append((0.0, n, _DAY, 0, 0))
    heapq.heapify(heap)
    seq = n + 1
    outstanding = n
    push, pop = heapq.heappush, heapq.heappop

    def dispatch(team: int, now: float) -> None:
        nonlocal seq
        queue, free = queues[team], idle[team]
        while queue and free:
            agent = free.pop()
            in_idle[agent] = False
            if not on_shift[agent]:
                continue
            _, _, _, i, s = pop(queue)
            if s == _MAIN:  # the first touch of the team that owns it: the first response
                emit((i, now, ev["status_changed"], st["assigned"], in_progress, _NONE, _NONE, agent))
            busy[agent] = True
            doing[i] = s
            seq += 1
            push(heap, (now + work[i, s], seq, _DONE, agent, i))

    def enqueue(i: int, s: int, now: float) -> None:
        nonlocal seq
        team = int(step_team[i, s])
        seq += 1
        push(queues[team], (0 if urgent[i] or s in _FRONT_OF_QUEUE else 1, now, seq, i, s))
        dispatch(team, now)

    def wait_then(i: int, s: int, ready: float) -> None:
        nonlocal seq
        seq += 1
        push(heap, (ready, seq, _READY, i, s))

    def advance(i: int, s: int, now: float, agent: int) -> None:
        """The ticket's next step once step `s` is done."""
        nonlocal outstanding
        if s == _MISROUTE:
            emit((i, now, ev["reassigned"], _NONE, _NONE, step_team[i, _MISROUTE], home[i], agent))
            enqueue(i, _MAIN, now)
        elif s == _MAIN and escalate[i]:
            emit((i, now, ev["escalated"], _NONE, _NONE, _NONE, _NONE, agent))
            enqueue(i, _ESCALATION, now)
        elif s < _THIRD_PARTY and third_party[i]:
            back = now + wait_third_party[i]
            emit((i, now, ev["status_changed"], in_progress, st["pending_third_party"], _NONE, _NONE, agent))
            emit((i, back, ev["status_changed"], st["pending_third_party"], in_progress, _NONE, _NONE, _NONE))
            wait_then(i, _THIRD_PARTY, back)
        elif s < _CUSTOMER and customer[i]:
            back = now + wait_customer[i]
            emit((i, now, ev["status_changed"], in_progress, st["pending_customer"], _NONE, _NONE, agent))
            emit((i, back, ev["customer_replied"], st["pending_customer"], in_progress, _NONE, _NONE, _NONE))
            wait_then(i, _CUSTOMER, back)
        elif s < _HANDOFF and handoff[i]:
            emit((i, now, ev["handoff"], _NONE, _NONE, home[i], other[i], agent))
            enqueue(i, _HANDOFF, now)
        elif s == _HANDOFF and handback[i]:
            emit((i, now, ev["handoff"], _NONE, _NONE, other[i], home[i], agent))
            enqueue(i, _HANDBACK, now)
        else:
            emit((i, now, ev["resolved"], in_progress, st["resolved"], _NONE, _NONE, agent))
            if s != _REOPEN and reopen[i]:
                back = now + reopen_after[i]
                emit((i, back, ev["reopened"], st["resolved"], in_progress, _NONE, _NONE, _NONE))
                wait_then(i, _REOPEN, back)
            else:
                resolved[i] = now
                outstanding -= 1

    while heap:
        now, _, kind, a, b = pop(heap)
        if kind == _DONE:
            busy[a] = False
            if on_shift[a] and not in_idle[a]:
                idle[agent_team[a]].append(a)
                in_idle[a] = True
            advance(b, doing[b], now, a)
            dispatch(agent_team[a], now)
        elif kind == _READY:
            enqueue(a, b, now)
        elif kind == _SHIFT_ON:
            on_shift[a] = True
            if not busy[a] and not in_idle[a]:
                idle[agent_team[a]].append(a)
                in_idle[a] = True
            dispatch(agent_team[a], now)
        elif kind == _SHIFT_OFF:
            on_shift[a] = False
        elif outstanding:  # _DAY: put the day's rota on, while work remains
            for agent, start in _roster(staff, config, a):
                shifts.append((agent, start))
                seq += 2
                push(heap, (start, seq - 1, _SHIFT_ON, agent, 0))
                push(heap, (start + _SHIFT_HOURS * 60.0, seq, _SHIFT_OFF, agent, 0))
            seq += 1
            push(heap, ((a + 1) * 1440.0, seq, _DAY, a + 1, 0))
    return _Outcome(events, shifts, resolved)


def _bad_rows(rng: np.random.Generator, n: int, rate: float) -> list[int]:
    return sorted(rng.choice(n, size=min(n, rng.binomial(n, rate)), replace=False).tolist())


def _seconds(minutes: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(minutes, dtype=float) * 60.0).astype(np.int64)


def _assemble(
    config: SimulationConfig,
    ref: _Reference,
    tickets: dict,
    plan: dict,
    staff: _Staff,
    outcome: _Outcome,
    rng: np.random.Generator,
    rng_bad: np.random.Generator,
) -> SimulatedData:
    """Turn the simulated story into the contract's records, outcomes and ground truth."""
    n = tickets["n"]
    needs = plan["needs"]
    id_width = max(6, len(str(n)))
    ticket_ids = np.array([f"HD-{k + 1:0{id_width}d}" for k in range(n)], dtype=object)
    created, resolved = tickets["created"], outcome.resolved
    closed = resolved + plan["close_after"]

    # Events: those fixed before any queue (created, triaged, assigned), the desk's, closure.
    # Every block has the columns (ticket, minute, type, from_status, to_status, from_team,
    # to_team, agent).
    initial_team = plan["step_team"][np.arange(n), np.where(needs[:, _MISROUTE], _MISROUTE, _MAIN)]
    none = np.full(n, _NONE)

    def per_ticket(minute, event: str, from_status: int, to_status: int, to_team=none) -> tuple:
        statuses = np.full(n, from_status), np.full(n, to_status)
        return (np.arange(n), minute, np.full(n, _EV[event]), *statuses, none, to_team, none)

    blocks = [
        per_ticket(created, "created", _NONE, _ST["new"]),
        per_ticket(tickets["triaged"], "triaged", _ST["new"], _ST["triaged"]),
        per_ticket(tickets["assigned"], "assigned", _ST["triaged"], _ST["assigned"], initial_team),
        tuple(np.array(outcome.events, dtype=float).reshape(-1, 8).T),
        per_ticket(closed, "closed", _ST["resolved"], _ST["closed"]),
    ]
    columns = [np.concatenate(column) for column in zip(*blocks, strict=True)]
    e_ticket, e_minute = columns[0].astype(np.int64), columns[1]
    # Ties in time keep the order the events were recorded in, which is their causal order.
    order = np.lexsort((np.arange(e_ticket.size), e_minute, e_ticket))
    e_ticket, e_time = e_ticket[order], _seconds(e_minute[order])
    # Small integer codes: a million tickets have millions of events.
    e_code = [c[order].astype(np.int32) for c in columns[2:]]
    first = np.searchsorted(e_ticket, np.arange(n))
    position = np.arange(e_ticket.size) - first[e_ticket]
    ids, numbers = ticket_ids[e_ticket].tolist(), (position + 1).tolist()
    event_ids = np.array([f"{t}-{k:02d}" for t, k in zip(ids, numbers, strict=True)], dtype=object)

    target_hours = np.array([ref.resolution_target_hours[p] for p in contract.PRIORITIES])
    target_min = 60 * target_hours[tickets["priority"]]
    cause_if_late = _delay_causes(plan, staff, resolved, list(ref.delay_causes), rng)
    codes = list(_RESOLUTION_CODES)
    resolution_code = np.array(codes, dtype=object)[_pick(rng, list(_RESOLUTION_CODES.values()), n)]

    penalty = np.zeros(n)
    for s in (s for s in config.scenarios if isinstance(s, CsatDrop)):
        penalty[(plan["final_team"] == ref.teams.index(s.team)) & _created_in(config, resolved, s)] += s.points
    surveys, survey_minute = _draw_surveys(plan, resolved, target_min, ticket_ids, rng, penalty)

    # Bad records, kept in the outputs for the pipeline to quarantine.
    static = dict(tickets["columns"])
    bad_tickets = []
    for row in _bad_rows(rng_bad, n, config.bad_record_rate):
        column, value, reason = (
            ("channel", "fax", "channel not in the vocabulary")
            if rng_bad.random() < 0.5
            else ("customer_id", "", "empty customer_id")
        )
        static[column][row] = value
        bad_tickets.append({"id": ticket_ids[row], "field": column, "value": value, "reason": reason})
    # Only among surveys submitted within the period, so that every one listed is in the
    # period's export (surveys are ordered by submission). The garbled timestamp exists only
    # in the file: the frame keeps the true one.
    bad_surveys, raw_surveys = [], {}
    in_period = int(np.searchsorted(survey_minute, config.days * 1440.0))
    for row in _bad_rows(rng_bad, in_period, config.bad_record_rate):
        sid = surveys.at[row, "survey_id"]
        if rng_bad.random() < 0.5:
            surveys.at[row, "csat"] = 9
            column, value, reason = "csat", 9, "csat out of range 1-5"
        else:
            column, value, reason = "submitted_at", "31/02/2026 25:00", "submitted_at not a timestamp"
            raw_surveys[sid] = {column: value}
        bad_surveys.append({"id": sid, "field": column, "value": value, "reason": reason})

    epoch = pd.Timestamp(config.start).tz_localize("UTC")
    epoch_s = int(epoch.timestamp())
    surveys["submitted_at"] = _timestamps(epoch_s, _seconds(survey_minute))
    agents = pd.DataFrame(
        {
            "agent_id": staff.agent_ids,
            "team_id": np.array(ref.teams, dtype=object)[staff.agent_team],
            "hourly_cost": staff.hourly_cost,
            "updated_at": epoch,
        }
    )[contract.AGENT.columns]
    shift_agent = np.array([a for a, _ in outcome.shifts], dtype=np.int64)
    shift_start = _seconds([s for _, s in outcome.shifts])
    by_start = np.lexsort((shift_agent, shift_start))
    shift_agent, shift_start = shift_agent[by_start], shift_start[by_start]
    agent_names = _names(staff.agent_ids)
    shift_days = _timestamps(epoch_s, shift_start).strftime("%Y%m%d")
    shifts = pd.DataFrame(
        {
            "shift_id": [f"{agent_names[a]}-{day}" for a, day in zip(shift_agent, shift_days, strict=True)],
            "agent_id": agent_names[shift_agent],
            "shift_start": _timestamps(epoch_s, shift_start),
            "shift_end": _timestamps(epoch_s, shift_start + _SHIFT_HOURS * 3600),
        }
    )
    history = _History(
        epoch_s=epoch_s,
        team_names=_names(ref.teams),
        agent_names=agent_names,
        t_id=ticket_ids,
        t_created=_seconds(created),
        t_static=static,
        t_initial_team=initial_team,
        t_target_s=_seconds(target_min),
        t_cause_if_late=cause_if_late,
        t_resolution_code=resolution_code,
        e_id=event_ids,
        e_ticket=e_ticket,
        e_time=e_time,
        e_type=e_code[0],
        e_from_status=e_code[1],
        e_to_status=e_code[2],
        e_from_team=e_code[3],
        e_to_team=e_code[4],
        e_agent=e_code[5],
        surveys=surveys,
        s_time=_seconds(survey_minute),
        agents=agents,
        shifts=shifts,
        sh_time=shift_start,
    )
    bad = {"tickets": bad_tickets, "surveys": bad_surveys}
    ground_truth = {
        "seed": config.seed,
        "start": config.start.isoformat(),
        "days": config.days,
        "end": (config.start + timedelta(days=config.days)).isoformat(),
        "tickets_per_day": config.tickets_per_day,
        "teams": {team: len(members) for team, members in zip(ref.teams, staff.team_agents, strict=True)},
        "scenarios": _scenario_truth(config, staff),
        "bad_records": {name: bad.get(name, []) for name in contract.ENTITIES},
    }
    end = epoch + pd.Timedelta(days=config.days)
    return SimulatedData(
        **history.frames(config.days * 86400.0),
        ground_truth=ground_truth,
        raw_overrides={"surveys": raw_surveys},
        as_of_ts=end,
        _history=history,
    )


def _scenario_truth(config: SimulationConfig, staff: _Staff) -> list[dict]:
    """Each scenario as the ground truth lists it: kind, segment, metrics it moves, window, parameters."""
    absences = iter(staff.absences)
    truth = []
    for s in config.scenarios:
        if isinstance(s, Holidays):
            truth.append({"kind": s.kind, "dates": [d.isoformat() for d in s.dates], "metrics": []})
            continue
        entry = {
            "kind": s.kind,
            "team": s.team,
            "start": s.start.isoformat(),
            "end": s.end.isoformat(),
            "days": s.days,
            "segment": {"team": s.team},
            "metrics": list(s.metrics),
        }
        if isinstance(s, StaffingShortage):
            entry["severity"] = s.severity
            entry["absent_agents"] = sorted(staff.agent_ids[a] for a in next(absences)[3])
        else:
            entry.update({f.name: getattr(s, f.name) for f in fields(s) if f.name not in entry})
            if isinstance(s, ThirdPartyDelay):
                entry["segment"] = {"team": s.team, "category": s.category}
        truth.append(entry)
    return truth


def _delay_causes(
    plan: dict, staff: _Staff, resolved: np.ndarray, causes: list[str], rng: np.random.Generator
) -> np.ndarray:
    """The cause each ticket's SLA breach would be put down to, should it breach.

    Where its team was short-staffed during the ticket's life, mostly the shortage; otherwise
    what the ticket went through (a wait on a supplier, on the customer, a wrong team...).
    """
    n, needs = plan["n"], plan["needs"]
    short = np.zeros(n, dtype=bool)
    for team, first_day, end_day, _ in staff.absences:
        in_window = (plan["created"] < end_day * 1440.0) & (resolved > first_day * 1440.0)
        short |= (plan["final_team"] == team) & in_window
    weights = np.tile([_DELAY_CAUSE_WEIGHTS.get(c, 0.2) for c in causes], (n, 1))
    telling = {
        "third_party": needs[:, _THIRD_PARTY],
        "customer_change": needs[:, _CUSTOMER],
        "internal_communication": needs[:, _MISROUTE] | needs[:, _HANDOFF],
    }
    for cause, happened in telling.items():
        if cause in causes:
            weights[:, causes.index(cause)] += 4.0 * happened
    if "staffing_shortage" in causes:
        blamed = short & (rng.random(n) < _SHORTAGE_BLAME)
        weights[blamed] = 0.0
        weights[blamed, causes.index("staffing_shortage")] = 1.0
    cumulative = weights.cumsum(axis=1)
    pick = (cumulative < (rng.random(n) * cumulative[:, -1])[:, None]).sum(axis=1)
    return np.array(causes, dtype=object)[pick]


def _draw_surveys(
    plan: dict,
    resolved: np.ndarray,
    target_min: np.ndarray,
    ticket_ids: np.ndarray,
    rng: np.random.Generator,
    penalty: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Satisfaction surveys on resolved tickets; the rating follows the experience (less any
    scenario `penalty`, in points)."""
    n = plan["n"]
    needs = plan["needs"]
    # Drawn for every ticket so the same customers answer whatever the scenario.
    answers = rng.random(n) < _SURVEY_RATE
    submitted = resolved + rng.uniform(0, 3 * 1440.0, n)
    hours = (resolved - plan["created"]) / 60.0
    score = (
        4.55
        + rng.normal(0.0, 0.75, n)
        - 0.35 * np.log2(1 + hours / 8.0)
        - 0.9 * (hours * 60 > target_min)
        - 0.7 * needs[:, _REOPEN]
        - 0.35 * (needs[:, _HANDOFF].astype(int) + needs[:, _HANDBACK])
        - 0.25 * needs[:, _MISROUTE]
    )
    if penalty is not None:
        score = score - penalty
    csat = np.clip(np.rint(score), 1, 5).astype(int)
    nps = np.clip(np.rint(2.3 * score - 1.8 + rng.normal(0.0, 1.2, n)), 0, 10).astype(int)
    unhappy = rng.random(n)
    complaint = ((csat == 1) & (unhappy < 0.45)) | ((csat == 2) & (unhappy < 0.12))
    no_csat, no_nps = rng.random(n) < 0.04, rng.random(n) < 0.12
    comment_u, pii_u, text_u = rng.random(n), rng.random(n), rng.random((n, 4))

    rows = np.flatnonzero(answers)
    rows = rows[np.lexsort((rows, submitted[rows]))]
    comments = []
    for i in rows.tolist():
        if comment_u[i] >= _COMMENT_RATE:
            comments.append(None)
            continue
        mood = "good" if csat[i] >= 4 else "mixed" if csat[i] == 3 else "bad"
        options = _COMMENTS[mood]
        text = options[int(text_u[i, 0] * len(options))]
        if pii_u[i] < _PERSONAL_DATA_RATE / 2:
            first = _FIRST_NAMES[int(text_u[i, 1] * len(_FIRST_NAMES))]
            last = _LAST_NAMES[int(text_u[i, 2] * len(_LAST_NAMES))]
            text += f" Please reply to {first}.{last}{int(text_u[i, 3] * 90) + 10}@example.com"
        elif pii_u[i] < _PERSONAL_DATA_RATE:
            text += f" Call me back on +44 7700 900{int(text_u[i, 3] * 1000):03d}"
        comments.append(text)
    surveys = pd.DataFrame(
        {
            "survey_id": [f"SV-{k + 1:0{max(6, len(str(rows.size)))}d}" for k in range(rows.size)],
            "ticket_id": ticket_ids[rows],
            "submitted_at": pd.NaT,
            "csat": pd.array(np.where(no_csat[rows], None, csat[rows]), dtype="Int64"),
            "nps": pd.array(np.where(no_nps[rows], None, nps[rows]), dtype="Int64"),
            "complaint": complaint[rows],
            "comment": pd.Series(comments, dtype=object),
        }
    )
    return surveys[contract.SURVEY.columns], submitted[rows]


# --- writers -------------------------------------------------------------------------------


def _helpdesk_sql(entity: contract.Entity, table: str) -> list:
    """DDL for one helpdesk table, and the COPY and merge statements of an upsert into it."""

    def names(columns, prefix: str = "") -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL(prefix) + sql.Identifier(c) for c in columns)

    ident, stage, key = sql.Identifier(table), sql.Identifier(f"_stage_{table}"), sql.Identifier(entity.key)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(sql.Identifier(f.name), sql.SQL(f.type), sql.SQL(" NOT NULL" * f.required))
        for f in entity.fields
    )
    others = [c for c in entity.columns if c != entity.key]
    return [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(ident, columns, key),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(f"{table}_{entity.watermark}_idx"), ident, sql.Identifier(entity.watermark)
        ),
        sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(stage, ident),
        # \N marks NULL, so an empty string stays an empty string (one kind of bad record).
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, NULL '\\N')").format(stage, names(entity.columns)),
        sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ON CONFLICT ({key}) DO UPDATE SET {sets}"
            " WHERE ({old}) IS DISTINCT FROM ({new})"
        ).format(
            t=ident,
            s=stage,
            cols=names(entity.columns),
            key=key,
            sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others),
            old=names(others, f"{table}."),
            new=names(others, "EXCLUDED."),
        ),
    ]


def write_helpdesk(data: SimulatedData, dsn: str, as_of=None) -> dict[str, int]:
    """Upsert the helpdesk application's own tables (hd_*) as they stood at `as_of`.

    `as_of` None writes `data` as it is (from `simulate()`: the end of the period). Creates
    the tables if missing, then per table COPYs the rows into a temporary table and merges
    them with INSERT ... ON CONFLICT DO UPDATE, as the application updates its rows in place.
    Rows that did not change are left alone. One transaction for all tables. Returns the
    number of rows sent per table.
    """
    snapshot = data.as_of(as_of) if as_of is not None else data
    counts = {}
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for name, table in HELPDESK_TABLES.items():
                entity = contract.ENTITIES[name]
                frame = getattr(snapshot, name)
                create, index, stage, copy, merge = _helpdesk_sql(entity, table)
                for statement in (create, index, stage):
                    cur.execute(statement)
                buf = io.StringIO()
                frame[entity.columns].to_csv(buf, index=False, header=False, na_rep="\\N")
                buf.seek(0)
                cur.copy_expert(copy.as_string(cur), buf)
                cur.execute(merge)
                counts[table] = len(frame)
    finally:
        conn.close()
    return counts


def _survey_csv(rows: pd.DataFrame, raw: dict[str, dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(contract.SURVEY.columns)
    for r in rows.itertuples(index=False):
        stamp = raw.get(r.survey_id, {}).get("submitted_at") or r.submitted_at.isoformat()
        writer.writerow(
            [
                r.survey_id,
                r.ticket_id,
                stamp,
                "" if pd.isna(r.csat) else int(r.csat),
                "" if pd.isna(r.nps) else int(r.nps),
                "true" if r.complaint else "false",
                r.comment or "",
            ]
        )
    return buf.getvalue().encode("utf-8")


def write_survey_drop(data: SimulatedData, folder, as_of=None) -> list[Path]:
    """The survey tool's export: one UTF-8 CSV per submission day, `surveys_YYYYMMDD.csv`.

    Only days complete at `as_of` are written (None: at the instant `data` stands at, so the
    end of the period for `simulate()`'s result). Files are written atomically and a day's
    content is a function of the simulation alone, so rewriting a day gives the same bytes;
    an unchanged file is not touched. Returns the day files written or already there, by day.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    snapshot = data.as_of(as_of) if as_of is not None else data
    surveys = snapshot.surveys
    day = surveys["submitted_at"].dt.floor("D")
    if snapshot.as_of_ts is not None:
        complete = day + pd.Timedelta(days=1) <= snapshot.as_of_ts
        surveys, day = surveys[complete], day[complete]
    raw = data.raw_overrides.get("surveys", {})
    paths = []
    for stamp, rows in surveys.groupby(day, sort=True):
        path = folder / f"surveys_{stamp:%Y%m%d}.csv"
        payload = _survey_csv(rows, raw)
        if not (path.exists() and path.read_bytes() == payload):
            write_atomically(path, payload)
        paths.append(path)
    return paths


def write_ground_truth(data: SimulatedData, path) -> Path:
    """The ground truth as JSON: seed, period, team sizes, scenarios and bad records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data.ground_truth, indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(path, text.encode("utf-8"))
    return path
