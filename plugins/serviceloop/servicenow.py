"""ServiceNow incidents, from the Table API or a CSV export, mapped onto the data contract.

**Fields.** An incident's columns map onto a ticket's fields (``DEFAULT_COLUMNS``; a source's
``columns`` in ``sources.yml`` names another column): ``number`` -> ``ticket_id``,
``opened_at`` -> ``created_at``, ``sys_updated_on`` (an export may call it
``sys_updated_at``) -> ``updated_at``, ``contact_type`` -> ``channel``, ``caller_id`` ->
``customer_id``, ``category``/``subcategory``, ``priority``, ``impact``, ``urgency``,
``assignment_group`` -> ``team_id``, ``assigned_to`` -> ``agent_id``, ``incident_state`` (else
``state``) -> ``status``, ``resolved_at``, ``closed_at``, ``reopen_count``,
``reassignment_count``, ``close_code`` (an export may say ``closed_code``) ->
``resolution_code``, ``escalation`` -> ``escalated``. ``source_system`` is ``servicenow``.

**Values.** ServiceNow's choices map onto the contract's vocabularies, by label (what an
export and ``sysparm_display_value=true`` show) or by code (what the API stores):

============================  =========================================================
ServiceNow                     contract
============================  =========================================================
state New (1)                  new
Active, In Progress (2)        in_progress
On Hold (3)                    pending_customer; by hold reason: Awaiting Caller (1) ->
                               pending_customer, Awaiting Problem (3), Awaiting Vendor (4),
                               Awaiting Change (5) -> pending_third_party
Awaiting User Info,            pending_customer (the caller owes an answer; the SLA
Awaiting Caller,               clock pauses, as ServiceNow's default SLAs pause on hold)
Awaiting Evidence
Awaiting Problem,              pending_third_party (the incident waits on a problem fix,
Awaiting Vendor,               a supplier or a change: outside the team, clock running)
Awaiting Change
Resolved (6), Closed (7)       resolved, closed
Canceled (8)                   cancelled
priority 1 - Critical ...      P1, 2 - High P2, 3 - Moderate P3, 4 - Low P4, 5 - Planning P4
impact, urgency 1 - High ...   high, 2 - Medium medium, 3 - Low low
contact_type Phone, IVR        phone; Email email; Self-service / Self service web;
                               Walk-in walk_in; Direct opening (raised at the desk by
                               its staff) walk_in; Chat, Virtual Agent chat; Alert api
escalation Normal (0) ...      escalated = Moderate, High or Overdue (1-3)
============================  =========================================================

A source's ``values`` (``values: {channel: {Direct opening: phone}}``) is consulted first, so
an instance's own choices can be added or remapped. A value that is neither is *outside
ServiceNow's vocabulary*: the record is quarantined, with the column, the value and what was
expected as its reason (in ``_parse_error``), e.g. the ``-100`` states some exports hold.

**Teams.** Every KPI, drift finding and improvement review belongs to a team of the
reference data (``dbt_project/seeds/teams.csv``: its owner gets the alerts). An assignment
group becomes the team that ``values.team_id`` maps it to, or the team whose id or name it
is; a ticket whose group is neither is quarantined with that reason, not loaded under an
unknown team that nobody owns: map the group (or add the team) and import the export again.
Groups met only on the way (a reassignment through another group) are kept in the events
under their own name.

**Exports.** A CSV export (``read_export``) is read with the file-drop reader's line-by-line
decoding (UTF-8, UTF-8 with BOM or GB18030). ``?`` and empty fields are empty; date-times are
``yyyy-MM-dd HH:mm:ss`` or, per the source's ``date_order``, ``29/2/2016 01:16`` (``dmy``), in
the source's ``timezone``. An event-log export has one row per update of an incident:
``tickets`` takes each incident's latest row (highest ``sys_mod_count``, then latest
``sys_updated_at``, then the later line), and ``ticket_events`` the changes between its
consecutive rows:

- ``created`` at ``opened_at``;
- ``triaged`` when the incident first gets an assignment group (routed: intake is over),
  ``assigned`` when it first gets an assignee, ``reassigned`` (from and to team) when the
  group changes;
- ``reopened`` when ``reopen_count`` rises; else ``resolved``, ``closed`` or
  ``status_changed`` (from and to status) when the state changes;
- ``escalated`` when the priority rises.

Each at the ``sys_updated_at`` of the row that shows the change. An incident whose first row
is not its first version (``sys_mod_count`` above 0, or a plain export with one row per
incident) has no known history before that row: it gets ``created`` at ``opened_at`` and,
when it is resolved or closed, ``resolved`` at ``resolved_at`` and ``closed`` at
``closed_at``. Event ids are the incident number, the version (``sys_mod_count``, else the
update time) and the change's rank, so a later export of the same history gives the same ids
and staging keeps one of each. A resolution or closing time on a row whose state has not
reached it (event-log exports repeat the incident's final values on every row) is not taken
for the ticket.

A row that breaks the vocabulary (state, priority, impact, urgency, contact type,
date-times, counts, booleans) or cannot be parsed is kept out of both: it is yielded as a
``tickets`` record with its reason and quarantined; the incident's other rows still count.

**Table API** (``read_table_api``): ``GET /api/now/table/<table>`` with
``sysparm_query=<query>^sys_updated_on>=<start>^sys_updated_on<<end>^ORDERBYsys_updated_on^ORDERBYsys_id``
(date-times as ``yyyy-MM-dd HH:mm:ss`` in UTC, which is how the API takes and returns them
when they are not display values), ``sysparm_display_value=all`` (codes and UTC date-times
from ``value``, group and people names from ``display_value``),
``sysparm_exclude_reference_link=true``, and ``sysparm_limit``/``sysparm_offset`` paging until
the offset reaches ``X-Total-Count`` (without it, until the ``Link`` header has no ``next``):
ServiceNow may return fewer rows than the limit while more follow (rows the integration user
may not read are left out after the limit is taken), so a short page does not end the read,
and the offset moves by the limit, not by the rows returned. Auth, timeouts, retries and ``Retry-After`` are
``serviceloop.rest``'s.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pandas as pd

from serviceloop.contract import ENTITIES
from serviceloop.extract import (
    CANONICAL_TS,
    MAX_RECORD_CHARS,
    ORIGIN,
    PARSE_ERROR,
    ContractError,
    FileReport,
    _lenient_fields,
    _Lines,
    to_canonical,
)
from serviceloop.settings import REPO_ROOT

log = logging.getLogger(__name__)

SOURCE_SYSTEM = "servicenow"
EMPTY = frozenset({"", "?"})
CHUNK = 20_000

# contract field -> the incident columns that may hold it, the first one present wins.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "ticket_id": ("number",),
    "created_at": ("opened_at",),
    "updated_at": ("sys_updated_on", "sys_updated_at"),
    "channel": ("contact_type",),
    "customer_id": ("caller_id",),
    "category": ("category",),
    "subcategory": ("subcategory",),
    "priority": ("priority",),
    "impact": ("impact",),
    "urgency": ("urgency",),
    "team_id": ("assignment_group",),
    "agent_id": ("assigned_to",),
    "status": ("incident_state", "state"),
    "resolved_at": ("resolved_at",),
    "closed_at": ("closed_at",),
    "reopen_count": ("reopen_count",),
    "reassignment_count": ("reassignment_count",),
    "resolution_code": ("close_code", "closed_code"),
    "escalated": ("escalation",),
}
# Columns read besides the contract's: versions, hold reasons, flags checked for vocabulary.
VERSION = "sys_mod_count"
HOLD_REASON = "hold_reason"
BOOLEAN_COLUMNS = ("active", "made_sla", "knowledge", "u_priority_confirmation")
TIMESTAMP_FIELDS = ("created_at", "updated_at", "resolved_at", "closed_at")
COUNT_FIELDS = ("reopen_count", "reassignment_count")
# The API returns these as a reference's or a choice's display value; the rest as stored.
DISPLAYED = frozenset({"customer_id", "team_id", "agent_id", "category", "subcategory", "resolution_code"})


def _key(text: str) -> str:
    """A label or code as compared: case, spaces, hyphens and underscores do not matter."""
    return re.sub(r"[\s_\-]+", " ", text.strip().lower()).strip()


class Vocabulary:
    """A ServiceNow choice list: label (as ServiceNow shows it) and code -> contract value."""

    def __init__(self, column: str, labels: dict[str, str], codes: dict[str, str] | None = None):
        self.column = column
        self.labels = labels
        self._index = {_key(k): v for k, v in {**labels, **(codes or {})}.items()}

    def lookup(self, value: str) -> str | None:
        return self._index.get(_key(value))

    def expected(self) -> str:
        return ", ".join(self.labels)


STATES = Vocabulary(
    "incident_state",
    {
        "New": "new", "In Progress": "in_progress", "Active": "in_progress", "On Hold": "pending_customer",
        "Awaiting User Info": "pending_customer", "Awaiting Caller": "pending_customer",
        "Awaiting Evidence": "pending_customer", "Awaiting Problem": "pending_third_party",
        "Awaiting Vendor": "pending_third_party", "Awaiting Change": "pending_third_party",
        "Resolved": "resolved", "Closed": "closed", "Canceled": "cancelled", "Cancelled": "cancelled",
    },
    {"1": "new", "2": "in_progress", "3": "pending_customer", "6": "resolved", "7": "closed", "8": "cancelled"},
)  # fmt: skip
ON_HOLD = frozenset({_key("On Hold"), "3"})
HOLD_REASONS = Vocabulary(
    "hold_reason",
    {"Awaiting Caller": "pending_customer", "Awaiting Problem": "pending_third_party",
     "Awaiting Vendor": "pending_third_party", "Awaiting Change": "pending_third_party"},
    {"1": "pending_customer", "3": "pending_third_party", "4": "pending_third_party", "5": "pending_third_party"},
)  # fmt: skip
PRIORITIES = Vocabulary(
    "priority",
    {"1 - Critical": "P1", "2 - High": "P2", "3 - Moderate": "P3", "4 - Low": "P4", "5 - Planning": "P4"},
    {"1": "P1", "2": "P2", "3": "P3", "4": "P4", "5": "P4"},
)
LEVELS = {"1 - High": "high", "2 - Medium": "medium", "3 - Low": "low"}
LEVEL_CODES = {"1": "high", "2": "medium", "3": "low"}
IMPACTS = Vocabulary("impact", LEVELS, LEVEL_CODES)
URGENCIES = Vocabulary("urgency", LEVELS, LEVEL_CODES)
CONTACT_TYPES = Vocabulary(
    "contact_type",
    {
        "Phone": "phone", "IVR": "phone", "Email": "email", "Self-service": "web", "Self service": "web",
        "Walk-in": "walk_in", "Direct opening": "walk_in", "Chat": "chat", "Virtual Agent": "chat", "Alert": "api",
    },
    {"virtual_agent": "chat", "alert": "api"},
)  # fmt: skip
ESCALATIONS = Vocabulary(
    "escalation",
    {"Normal": "false", "Moderate": "true", "High": "true", "Overdue": "true"},
    {"0": "false", "1": "true", "2": "true", "3": "true"},
)
BOOLEANS = {"true": "true", "false": "false", "1": "true", "0": "false"}
VOCABULARIES = {
    "status": STATES, "priority": PRIORITIES, "impact": IMPACTS, "urgency": URGENCIES,
    "channel": CONTACT_TYPES, "escalated": ESCALATIONS,
}  # fmt: skip
PRIORITY_RANK = {"P1": 1, "P2": 2, "P3": 3, "P4": 4}


@cache
def reference_teams() -> dict[str, str]:
    """Team id and team name (compared as ``_key``) -> team id, from the teams reference data."""
    path = REPO_ROOT / "dbt_project" / "seeds" / "teams.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for row in rows:
        out[_key(row["team_name"])] = row["team_id"]
        out[_key(row["team_id"])] = row["team_id"]
    return out


# --- one incident version -------------------------------------------------------------------


@dataclass
class Version:
    """One version of an incident (an export row, an API record), mapped and judged."""

    origin: str
    values: dict[str, str | None]  # contract fields, canonical text
    group: str | None  # the assignment group as ServiceNow names it
    mod_count: int | None
    updated: dt.datetime | None
    line: int
    errors: list[str] = field(default_factory=list)
    team_error: str | None = None

    @property
    def number(self) -> str | None:
        return self.values.get("ticket_id")

    @property
    def status(self) -> str | None:
        return self.values.get("status")

    def order(self) -> tuple:
        return (
            -1 if self.mod_count is None else self.mod_count,
            self.updated or dt.datetime.min.replace(tzinfo=dt.UTC),
            self.line,
        )


@dataclass(frozen=True)
class Settings:
    """How a source reads its incidents: column overrides, value maps, time zone, date order."""

    columns: dict[str, str]
    values: dict[str, dict[str, str]]
    constants: dict[str, str]
    zone: dt.tzinfo = dt.UTC
    date_order: str = "dmy"

    @classmethod
    def of(cls, source) -> Settings:
        mapping = source.mappings["tickets"]
        return cls(
            dict(mapping.columns), {f: dict(t) for f, t in mapping.values.items()}, dict(mapping.constants),
            zoneinfo.ZoneInfo(getattr(source, "timezone", "UTC")), getattr(source, "date_order", "dmy"),
        )  # fmt: skip

    def column(self, field_name: str, present) -> str | None:
        """The column holding a contract field among those ``present``, or None."""
        if field_name in self.columns:
            return self.columns[field_name]
        return next((c for c in DEFAULT_COLUMNS.get(field_name, ()) if c in present), None)


_TIME = r"(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?)"
# Where year, month and day sit in each shape: ISO first, then the source's order.
_SHAPES = {
    "iso": (re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})" + _TIME + r"?(?:\.\d+)?(?:Z|\+00:?00)?"), (0, 1, 2)),
    "dmy": (re.compile(r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})" + _TIME), (2, 1, 0)),
    "mdy": (re.compile(r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})" + _TIME), (2, 0, 1)),
    "ymd": (re.compile(r"(\d{4})[/.](\d{1,2})[/.](\d{1,2})" + _TIME), (0, 1, 2)),
}
DATE_SHAPES = {"dmy": "d/m/yyyy HH:MM[:SS]", "mdy": "m/d/yyyy HH:MM[:SS]", "ymd": "yyyy/m/d HH:MM[:SS]"}


def parse_datetime(text: str, order: str = "dmy", zone: dt.tzinfo = dt.UTC) -> dt.datetime | None:
    """A ServiceNow date-time (``2016-02-29 01:16:00``, or ``29/2/2016 01:16`` by ``order``) in UTC; None if it is not one."""
    text = text.strip()
    for shape in ("iso", order):
        pattern, (y, m, d) = _SHAPES[shape]
        match = pattern.fullmatch(text)
        if not match:
            continue
        g = match.groups()
        try:
            local = dt.datetime(int(g[y]), int(g[m]), int(g[d]), int(g[3] or 0), int(g[4] or 0), int(g[5] or 0))
        except ValueError:
            return None
        return local.replace(tzinfo=zone).astimezone(dt.UTC)
    return None


def _canonical_ts(ts: dt.datetime | None) -> str | None:
    return None if ts is None else ts.strftime(CANONICAL_TS)


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value in EMPTY else value


def version(row: dict[str, str | None], origin: str, line: int, settings: Settings) -> Version:
    """One incident version from its columns (text, ``?`` for empty), mapped onto the contract and judged."""
    errors: list[str] = []
    out: dict[str, str | None] = dict.fromkeys(ENTITIES["tickets"].columns)

    def raw(field_name: str) -> str | None:
        column = settings.column(field_name, row)
        return None if column is None else _text(row.get(column))

    def judged(field_name: str, vocabulary: Vocabulary) -> str | None:
        value = raw(field_name)
        if value is None:
            return None
        mapped = settings.values.get(field_name, {}).get(value) or vocabulary.lookup(value)
        if mapped is None:
            column = settings.column(field_name, row) or vocabulary.column
            errors.append(
                f"{column} {value!r} is outside ServiceNow's vocabulary (expected one of {vocabulary.expected()})"
            )
            return value
        return mapped

    for name in ("ticket_id", "customer_id", "category", "subcategory", "agent_id", "resolution_code"):
        out[name] = raw(name)
    if out["ticket_id"] is None:
        errors.append(f"{settings.column('ticket_id', row) or 'number'} is empty")
    for name, vocabulary in VOCABULARIES.items():
        out[name] = judged(name, vocabulary)
    if out["status"] is None and raw("status") is None:
        errors.append(f"{settings.column('status', row) or 'incident_state'} is empty")
    state = raw("status")
    hold = _text(row.get(HOLD_REASON))
    if state is not None and _key(state) in ON_HOLD and hold is not None:
        out["status"] = HOLD_REASONS.lookup(hold) or out["status"]
    stamps: dict[str, dt.datetime | None] = {}
    for name in TIMESTAMP_FIELDS:
        value = raw(name)
        stamps[name] = None
        if value is None:
            continue
        parsed = parse_datetime(value, settings.date_order, settings.zone)
        if parsed is None:
            column = settings.column(name, row)
            errors.append(
                f"{column} {value!r} is not a date-time ({DATE_SHAPES[settings.date_order]} or yyyy-MM-dd HH:mm:ss)"
            )
            out[name] = value
        else:
            stamps[name] = parsed
            out[name] = _canonical_ts(parsed)
    if out["created_at"] is None and stamps["updated_at"] is not None:
        # An incident without opened_at was opened when it was created.
        created = _text(row.get("sys_created_on")) or _text(row.get("sys_created_at"))
        parsed = parse_datetime(created, settings.date_order, settings.zone) if created else None
        out["created_at"] = _canonical_ts(parsed)
    for name in COUNT_FIELDS:
        value = raw(name)
        out[name] = value
        if value is not None and not value.isdigit():
            errors.append(f"{settings.column(name, row)} {value!r} is not a count (0, 1, 2 ...)")
    mod = _text(row.get(VERSION))
    if mod is not None and not mod.isdigit():
        errors.append(f"{VERSION} {mod!r} is not a count (0, 1, 2 ...)")
    for column in BOOLEAN_COLUMNS:
        value = _text(row.get(column))
        if value is not None and value.lower() not in BOOLEANS:
            errors.append(f"{column} {value!r} is outside ServiceNow's vocabulary (expected true or false)")
    # A later stage's time on an earlier state's row is the incident's final value, repeated.
    if out["status"] not in ("resolved", "closed"):
        out["resolved_at"] = None if stamps["resolved_at"] is not None else out["resolved_at"]
    if out["status"] not in ("closed", "cancelled"):
        out["closed_at"] = None if stamps["closed_at"] is not None else out["closed_at"]
    group = raw("team_id")
    team_error = None
    if group is not None:
        team = settings.values.get("team_id", {}).get(group) or reference_teams().get(_key(group))
        if team is None:
            team_error = (
                f"{settings.column('team_id', row)} {group!r} is no team of the reference data"
                " (dbt_project/seeds/teams.csv): map it in sources.yml (entities.tickets.values.team_id)"
            )
        out["team_id"] = team or group
    out["source_system"] = SOURCE_SYSTEM
    for name, value in settings.constants.items():
        out[name] = value
    return Version(
        origin, out, group, int(mod) if mod is not None and mod.isdigit() else None, stamps["updated_at"], line,
        errors, team_error,
    )  # fmt: skip


def _ticket(latest: Version, derived: list[dict]) -> dict[str, str | None]:
    """The ticket of an incident's latest version: escalated when an event says so, counts 0 when not given."""
    values = dict(latest.values)
    if values["escalated"] is None:
        values["escalated"] = "true" if any(e["event_type"] == "escalated" for e in derived) else "false"
    for name in COUNT_FIELDS:
        values[name] = values[name] if values[name] is not None else "0"
    return values


# --- events between versions ----------------------------------------------------------------


def events(versions: list[Version]) -> list[dict[str, str | None]]:
    """The lifecycle events of one incident, from its valid versions in order (see the module docstring)."""
    first = versions[0]
    number = first.number
    by_mod = all(v.mod_count is not None for v in versions)
    out: list[dict[str, str | None]] = []

    def emit(v: Version | None, rank: int, event_type: str, at: str | None, **fields) -> None:
        if v is None:
            stamp = "000000"
        elif by_mod:
            stamp = f"{v.mod_count + 1:06d}"
        else:
            stamp = v.updated.strftime("%Y%m%dT%H%M%S") if v.updated else "000000"
        out.append(
            {
                "event_id": f"{number}#{stamp}.{rank}", "ticket_id": number, "occurred_at": at,
                "event_type": event_type, "from_status": fields.get("from_status"),
                "to_status": fields.get("to_status"), "from_team": fields.get("from_team"),
                "to_team": fields.get("to_team"), "agent_id": fields.get("agent_id"),
            }
        )  # fmt: skip

    emit(None, 0, "created", first.values["created_at"] or first.values["updated_at"], to_status="new")
    known_start = first.mod_count == 0
    previous: Version | None = None
    for v in versions:
        if previous is None and not known_start:
            previous = v
            continue
        at = v.values["updated_at"]
        before_group = previous.group if previous else None
        before_team = previous.values["team_id"] if previous else None
        before_agent = previous.values["agent_id"] if previous else None
        before_status = previous.status if previous else "new"
        before_priority = previous.values["priority"] if previous else v.values["priority"]
        before_reopens = int(previous.values["reopen_count"] or 0) if previous else 0
        rank = 0
        team, agent = v.values["team_id"], v.values["agent_id"]
        if v.group is not None and before_group is None:
            rank += 1
            emit(v, rank, "triaged", at, to_team=team)
        elif v.group is not None and v.group != before_group:
            rank += 1
            emit(v, rank, "reassigned", at, from_team=before_team, to_team=team, agent_id=agent)
        if agent is not None and before_agent is None:
            rank += 1
            emit(v, rank, "assigned", at, to_team=team, agent_id=agent)
        priority = v.values["priority"]
        if PRIORITY_RANK.get(priority, 9) < PRIORITY_RANK.get(before_priority, 0):
            rank += 1
            emit(v, rank, "escalated", at, agent_id=agent)
        reopens = int(v.values["reopen_count"] or 0)
        if reopens > before_reopens:
            rank += 1
            emit(v, rank, "reopened", at, from_status=before_status, to_status=v.status, agent_id=agent)
        elif v.status != before_status:
            kind = {"resolved": "resolved", "closed": "closed"}.get(v.status or "", "status_changed")
            rank += 1
            emit(v, rank, kind, at, from_status=before_status, to_status=v.status, agent_id=agent)
        previous = v
    if not known_start and len(versions) == 1:
        # No history: the resolution and the closing are known by their times only.
        last = versions[-1]
        if last.status in ("resolved", "closed") and last.values["resolved_at"]:
            emit(last, 1, "resolved", last.values["resolved_at"], to_status="resolved")
        if last.status == "closed" and last.values["closed_at"]:
            emit(last, 2, "closed", last.values["closed_at"], to_status="closed")
    return out


# --- CSV exports ----------------------------------------------------------------------------


@dataclass
class Export:
    """An export read and judged: tickets, events and the rows kept out, each with its origin."""

    rows: int = 0
    incidents: int = 0
    tickets: list[tuple[dict, str, str | None]] = field(default_factory=list)
    events: list[tuple[dict, str, str | None]] = field(default_factory=list)
    rejected: int = 0
    encodings: set[str] = field(default_factory=set)
    # The first and last update among the valid rows: the export's data interval.
    first: dt.datetime | None = None
    last: dt.datetime | None = None


def _open(location: str):
    """A binary file object for a path or an fsspec URL."""
    import fsspec

    return fsspec.open(location, "rb").open()


def _name(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


_PARSED: dict[tuple[str, str], Export] = {}


def parse_export(location: str, settings: Settings) -> Export:
    """Every row of a ServiceNow CSV export, judged; each incident's latest version and its events.

    An import reads the file for its span, its tickets and its events: the last export parsed
    is kept (by location, settings and the content's checksum) so that it is parsed once.
    """
    key = (f"{location}|{settings!r}", checksum(location))
    if key not in _PARSED:
        _PARSED.clear()
        _PARSED[key] = _parse_export(location, settings)
    return _PARSED[key]


def checksum(location: str) -> str:
    """The SHA-256 of a file's bytes (a path or fsspec URL)."""
    import hashlib

    digest = hashlib.sha256()
    with _open(location) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _parse_export(location: str, settings: Settings) -> Export:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_CHARS))
    name = _name(location)
    export = Export()
    report = FileReport()
    by_incident: dict[str, list[Version]] = {}
    bad: list[tuple[dict, str, str]] = []
    with _open(location) as fh:
        lines = _Lines(iter(fh), report)
        reader = csv.reader(lines, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ContractError(f"file {name}: empty (no header)") from None
        except csv.Error as exc:
            raise ContractError(f"file {name}: the header line cannot be parsed ({exc})") from None
        if settings.column("ticket_id", header) not in header or settings.column("status", header) not in header:
            raise ContractError(
                f"file {name}: not a ServiceNow incident export: the header needs number and incident_state (or"
                f" state), it has {', '.join(header[:12])}{' ...' if len(header) > 12 else ''}"
            )
        if settings.column("updated_at", header) not in header:
            raise ContractError(f"file {name}: the header has no sys_updated_on (or sys_updated_at) column")
        while True:
            lines.start_record()
            try:
                fields_ = next(reader)
                error = None
            except StopIteration:
                break
            except csv.Error as exc:
                error = f"bad quoting ({exc})"
                fields_ = _lenient_fields(lines.record[0][1])
            if not fields_ and error is None:
                continue
            line = lines.first_line
            export.rows += 1
            error = error or next(iter(lines.line_errors()), None)
            if error is None and len(fields_) != len(header):
                error = f"{len(fields_)} fields where the header has {len(header)}"
            row = dict(zip(header, fields_, strict=False))
            v = version(row, f"{name}:{line}", line, settings)
            if error is not None:
                v.errors.insert(0, error)
            if v.errors:
                bad.append((v.values, v.origin, f"line {line}: " + "; ".join(v.errors)))
                continue
            by_incident.setdefault(v.number, []).append(v)
    export.encodings = report.encodings
    for versions in by_incident.values():
        versions.sort(key=Version.order)
        derived = events(versions)
        latest = versions[-1]
        export.tickets.append((_ticket(latest, derived), latest.origin, latest.team_error))
        for v in versions:
            export.first = min(export.first or v.updated, v.updated) if v.updated else export.first
            export.last = max(export.last or v.updated, v.updated) if v.updated else export.last
        export.events += [(e, latest.origin, None) for e in derived]
    export.incidents = len(by_incident)
    export.rejected = len(bad)
    export.tickets += bad
    return export


def _frames(records: list[tuple[dict, str, str | None]], entity_name: str) -> Iterator[pd.DataFrame]:
    entity = ENTITIES[entity_name]
    for start in range(0, len(records), CHUNK):
        part = records[start : start + CHUNK]
        frame = pd.DataFrame.from_records(
            [[r.get(c) for c in entity.columns] for r, _, _ in part], columns=entity.columns
        )
        frame = to_canonical(frame, entity, lenient_timestamps=True)
        frame[ORIGIN] = [o for _, o, _ in part]
        frame[PARSE_ERROR] = pd.Series([e for _, _, e in part], index=frame.index, dtype=object)
        yield frame


def read_export(source, entity_name: str, location: str) -> Iterator[pd.DataFrame]:
    """A ServiceNow CSV export at ``location`` (a path or fsspec URL) as canonical chunks of one entity."""
    export = parse_export(location, Settings.of(source))
    records = export.tickets if entity_name == "tickets" else export.events
    if entity_name == "ticket_events":
        # An event's origin is the incident's latest row; its own line is the version in its id.
        records = [(r, f"{o} ({r['event_id']})", e) for r, o, e in records]
    log.info(
        "%s: %d rows, %d incidents, %d rows kept out, %d events", _name(location), export.rows, export.incidents,
        export.rejected, len(export.events),
    )  # fmt: skip
    yield from _frames(records, entity_name)


# --- Table API ------------------------------------------------------------------------------


def _api_text(field_name: str, value: Any) -> str | None:
    """A Table API field (``sysparm_display_value=all``: ``{value, display_value}``) as the text to map."""
    if isinstance(value, dict):
        if field_name in DISPLAYED and value.get("display_value") not in (None, ""):
            value = value.get("display_value")
        else:
            value = value.get("value")
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def api_query(source, window_start: dt.datetime | None, window_end: dt.datetime) -> str:
    """The encoded query of one window: the source's conditions, the window on sys_updated_on, the order."""
    fmt = "%Y-%m-%d %H:%M:%S"
    parts = [source.query] if source.query else []
    if window_start is not None:
        parts.append(f"sys_updated_on>={window_start.astimezone(dt.UTC):{fmt}}")
    parts.append(f"sys_updated_on<{window_end.astimezone(dt.UTC):{fmt}}")
    return "^".join([*parts, "ORDERBYsys_updated_on", "ORDERBYsys_id"])


def read_table_api(source, entity_name: str, window_start, window_end, connection: str, *, sleep=None):
    """The incidents updated in [window_start, window_end), one canonical frame per page."""
    import time

    from serviceloop.rest import ApiClient, split_credentials

    if entity_name != "tickets":
        raise ContractError(f"{source.name}: the Table API gives tickets only, not {entity_name}")
    settings = Settings.of(source)
    # The incident column -> the contract field it feeds, to choose its display or stored value.
    field_of = {c: f for f, columns in DEFAULT_COLUMNS.items() for c in columns} | {
        c: f for f, c in settings.columns.items()
    }
    client = ApiClient(
        split_credentials(connection), auth=source.auth, timeout=source.timeout, retries=source.retries,
        backoff=source.backoff, max_backoff=source.max_backoff, sleep=sleep or time.sleep, name=source.name,
    )  # fmt: skip
    path = f"/api/now/table/{source.table}"
    params = {
        "sysparm_query": api_query(source, window_start, window_end),
        "sysparm_display_value": "all",
        "sysparm_exclude_reference_link": "true",
        "sysparm_limit": str(source.page_size),
    }
    offset = 0
    try:
        while True:
            body, headers = client.get_with_headers(path, {**params, "sysparm_offset": str(offset)})
            records = body.get("result") if isinstance(body, dict) else None
            if not isinstance(records, list):
                raise ContractError(f"{source.name}: GET {path} answered without a result list")
            total = headers.get("X-Total-Count")
            rows = []
            for i, record in enumerate(records, start=1):
                origin = f"{path} offset {offset} #{i}"
                if not isinstance(record, dict):
                    rows.append(({}, origin, f"{origin}: not a JSON object: {str(record)[:200]!r}"))
                    continue
                text = {k: _api_text(field_of.get(k, k), v) for k, v in record.items()}
                v = version(text, origin, offset + i, settings)
                reasons = v.errors + ([v.team_error] if v.team_error else [])
                values = v.values
                if values["escalated"] is None:
                    values["escalated"] = "false"
                for name in COUNT_FIELDS:
                    values[name] = values[name] if values[name] is not None else "0"
                rows.append((values, origin, f"{origin}: " + "; ".join(reasons) if reasons else None))
            if rows:
                yield from _frames(rows, "tickets")
            # The offset counts the query's rows before ACLs take theirs out: a page may be short.
            offset += source.page_size
            if total is not None and total.isdigit():
                if offset >= int(total):
                    return
            elif "Link" in headers:
                if 'rel="next"' not in headers["Link"]:
                    return
            elif len(records) < source.page_size:
                return
    finally:
        client.close()


# --- importing an export --------------------------------------------------------------------


@dataclass
class ImportResult:
    """What ``serviceloop import servicenow-csv`` did: the export's rows and a batch per entity."""

    location: str
    checksum: str
    rows: int
    incidents: int
    rows_kept_out: int
    imported_before: bool
    batches: list = field(default_factory=list)


def import_export(conn, location: str, source_name: str = "servicenow_export") -> ImportResult:
    """Load a ServiceNow CSV export through the ingest (landing, GX, raw and quarantine), one batch per entity.

    The batches are named by the file's checksum: importing the same export again replaces
    them, so nothing is loaded twice; a later export (other content) is new batches, whose
    newer versions of an incident win downstream. Their data interval is the export's first
    to last update (``ops.batches``), so the marts are as of its last update. Each entity's
    batch is committed on its own, tickets first: the events are judged against them.
    """
    from serviceloop import schema
    from serviceloop.ingest import ingest_batch
    from serviceloop.sources import SOURCES, raw_table

    source = SOURCES.get(source_name)
    if source is None or source.kind != "servicenow_csv":
        kinds = [n for n, s in SOURCES.items() if s.kind == "servicenow_csv"]
        raise ValueError(
            f"{source_name!r} is not an enabled servicenow_csv source of sources.yml"
            f" ({'one of: ' + ', '.join(kinds) if kinds else 'none is declared'})"
        )
    digest = checksum(location)
    export = parse_export(location, Settings.of(source))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    first, last = export.first or now, export.last or now
    key = f"import_{digest[:16]}"
    schema.ensure(conn)
    conn.commit()
    with conn.cursor() as cur:
        cur.execute(
            "select count(*) from ops.batches where batch_id = %s",
            (f"{raw_table(source_name, 'tickets')}__{key}",),
        )
        before = cur.fetchone()[0] > 0
    result = ImportResult(str(location), digest, export.rows, export.incidents, export.rejected, before)
    for entity in ("tickets", "ticket_events"):
        if entity not in source.mappings:
            continue
        result.batches.append(
            ingest_batch(conn, source_name, entity, first, last, source_dsn=str(location), batch_key=key)
        )
        conn.commit()
    return result
