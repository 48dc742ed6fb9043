"""A simulated ServiceNow: incident exports and a Table API stand-in, from the simulated organisation.

Nothing can be downloaded at run time, so ServiceNow's data is made from the simulator's
story (``serviceloop.simulator``), the way ServiceNow would hold it:

- ``incident_versions`` walks each ticket's lifecycle events and writes down the incident
  after each update, as ServiceNow's audit history (and an event-log export) has it: the
  state (``Active``, ``Awaiting User Info`` ...), the assignment group (teams are groups
  ``Group 24`` ... as ``GROUPS`` says; ``sources.yml`` maps them back), the assignee
  (``Resolver 12``), the caller (``Caller 41``), ``sys_mod_count``, ``reassignment_count``
  (every group change), ``reopen_count``; an escalation raises the priority one level.
- ``write_export`` writes them as a CSV export with one row per update, in the columns of
  ServiceNow's incident event-log exports (``number, incident_state, active, ...,
  resolved_at, closed_at``), ``?`` for empty and day-first date-times (``29/2/2016 01:16``);
  ``bad_rows`` spoils that many rows with values outside ServiceNow's vocabulary, as real
  exports hold them (the state ``-100``, an unknown priority or contact type, a date that
  does not exist, a negative count).
- ``ServiceNowApi`` serves the incidents' latest versions as of a moment on loopback, as
  ServiceNow's Table API does: ``GET /api/now/table/incident`` (and ``/api/now/v2/...``)
  with ``sysparm_query`` (conditions ``field<op>value`` joined by ``^``, ops ``= != > >= <
  <=``, ``ORDERBY``/``ORDERBYDESC``), ``sysparm_limit`` (default 10000) and
  ``sysparm_offset``, ``sysparm_display_value`` (``false``: stored values, ``true``: display
  values, ``all``: both), ``sysparm_exclude_reference_link``, ``sysparm_fields`` and
  ``sysparm_no_count``; the answer is ``{"result": [...]}`` with ``X-Total-Count`` and a
  ``Link`` header (first, prev, next, last). Stored date-times are UTC
  ``yyyy-MM-dd HH:mm:ss``; display values are in the instance's zone (``display_zone``) and
  format, as ServiceNow shows them to a user. Basic or bearer credentials, 401 as ServiceNow
  words it, and the faults of ``serviceloop.simulated_api`` (429 with Retry-After, 503, slow
  answers, dropped connections). ``hide`` leaves records out of pages after the limit is
  taken, as ACLs do on a real instance.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pandas as pd

from serviceloop.simulated_api import LoopbackApi

# The simulated teams as ServiceNow assignment groups (sources.yml maps them back).
GROUPS = {
    "billing": "Group 24", "tech_support": "Group 56", "accounts": "Group 70", "field_service": "Group 31",
    "onboarding": "Group 45",
}  # fmt: skip
STATE_LABELS = {
    "new": "New", "triaged": "New", "assigned": "Active", "in_progress": "Active",
    "pending_customer": "Awaiting User Info", "pending_third_party": "Awaiting Vendor", "resolved": "Resolved",
    "closed": "Closed", "cancelled": "Canceled",
}  # fmt: skip
STATE_CODES = {"New": "1", "Active": "2", "Awaiting User Info": "3", "Awaiting Vendor": "3", "Resolved": "6",
               "Closed": "7", "Canceled": "8"}  # fmt: skip
HOLD_CODES = {"Awaiting User Info": "1", "Awaiting Vendor": "4"}
PRIORITY_LABELS = {"P1": "1 - Critical", "P2": "2 - High", "P3": "3 - Moderate", "P4": "4 - Low"}
LEVEL_LABELS = {"high": "1 - High", "medium": "2 - Medium", "low": "3 - Low"}
CONTACT_LABELS = {"phone": "Phone", "email": "Email", "chat": "Chat", "web": "Self service", "walk_in": "Walk-in"}
CONTACT_CODES = {
    "Phone": "phone",
    "Email": "email",
    "Chat": "chat",
    "Self service": "self-service",
    "Walk-in": "walk-in",
}
EXPORT_COLUMNS = (
    "number", "incident_state", "active", "reassignment_count", "reopen_count", "sys_mod_count", "made_sla",
    "caller_id", "opened_by", "opened_at", "sys_created_by", "sys_created_at", "sys_updated_by", "sys_updated_at",
    "contact_type", "location", "category", "subcategory", "u_symptom", "cmdb_ci", "impact", "urgency", "priority",
    "assignment_group", "assigned_to", "knowledge", "u_priority_confirmation", "notify", "problem_id", "rfc",
    "vendor", "caused_by", "closed_code", "resolved_by", "resolved_at", "closed_at",
)  # fmt: skip
# What bad_rows does to a row: a column and the value outside ServiceNow's vocabulary.
SPOILERS = (
    ("incident_state", "-100"), ("priority", "6 - Urgent-ish"), ("contact_type", "Carrier pigeon"),
    ("sys_updated_at", "31/2/2016 25:61"), ("reopen_count", "-1"), ("impact", "4 - Huge"),
)  # fmt: skip


def _number(ticket_id: str) -> str:
    digits = re.sub(r"\D", "", ticket_id) or "0"
    return f"INC{int(digits):07d}"


def _sys_id(*parts: str) -> str:
    return hashlib.md5("/".join(parts).encode()).hexdigest()


def _person(kind: str, ident: str | None, index: dict[str, int]) -> str | None:
    if ident is None or (isinstance(ident, float) and pd.isna(ident)):
        return None
    if ident not in index:
        index[ident] = int(re.sub(r"\D", "", ident) or 0) + 1 if kind == "Caller" else len(index) + 1
    return f"{kind} {index[ident]}"


@dataclass
class Incident:
    """An incident after one update (``sys_mod_count``), in ServiceNow's terms."""

    number: str
    mod_count: int
    updated: pd.Timestamp
    state: str
    group: str | None
    assignee: str | None
    caller: str
    opened: pd.Timestamp
    contact_type: str
    category: str
    subcategory: str | None
    impact: str | None
    urgency: str | None
    priority: str
    reassignments: int = 0
    reopens: int = 0
    resolved: pd.Timestamp | None = None
    closed: pd.Timestamp | None = None
    resolver: str | None = None
    close_code: str | None = None
    extra: dict = field(default_factory=dict)

    def copy(self, **changes) -> Incident:
        return Incident(**{**self.__dict__, "extra": dict(self.extra), **changes})


def incident_versions(data) -> dict[str, list[Incident]]:
    """Every incident's versions, oldest first, from a simulated snapshot (``simulate(...).as_of(ts)``)."""
    tickets = data.tickets.set_index("ticket_id")
    events = data.ticket_events.sort_values(["ticket_id", "occurred_at", "event_id"])
    callers: dict[str, int] = {}
    resolvers = {a: i + 1 for i, a in enumerate(sorted(data.agents["agent_id"]))}
    out: dict[str, list[Incident]] = {}
    for ticket_id, group in events.groupby("ticket_id", sort=False):
        if ticket_id not in tickets.index:
            continue
        t = tickets.loc[ticket_id]
        current: Incident | None = None
        versions: list[Incident] = []
        for e in group.itertuples(index=False):
            at = pd.Timestamp(e.occurred_at)
            if e.event_type == "created":
                current = Incident(
                    _number(ticket_id), 0, at, "New", None, None, _person("Caller", t.customer_id, callers), at,
                    CONTACT_LABELS.get(t.channel, "Phone"), str(t.category),
                    None if pd.isna(t.subcategory) else str(t.subcategory),
                    LEVEL_LABELS.get(t.impact), LEVEL_LABELS.get(t.urgency), PRIORITY_LABELS[t.priority],
                )  # fmt: skip
                versions.append(current)
                continue
            if current is None:
                break
            agent = None if e.agent_id is None else f"Resolver {resolvers.get(e.agent_id, 0)}"
            change: dict[str, Any] = {}
            if e.event_type == "triaged":
                change["group"] = GROUPS.get(e.to_team) if e.to_team else GROUPS.get(t.team_id)
            elif e.event_type == "assigned":
                change.update(group=GROUPS.get(e.to_team, current.group) if e.to_team else current.group)
                change["assignee"] = agent
            elif e.event_type in ("reassigned", "handoff"):
                change.update(group=GROUPS.get(e.to_team, current.group), assignee=agent,
                              reassignments=current.reassignments + 1)  # fmt: skip
            elif e.event_type == "escalated":
                level = int(current.priority[0])
                change["priority"] = PRIORITY_LABELS[f"P{max(1, level - 1)}"]
            elif e.event_type == "reopened":
                change.update(state="Active", reopens=current.reopens + 1, resolved=None, closed=None)
            elif e.event_type == "resolved":
                change.update(state="Resolved", resolved=at, resolver=agent or current.assignee,
                              close_code=str(t.resolution_code or "solved"))  # fmt: skip
            elif e.event_type == "closed":
                change.update(state="Closed", closed=at)
            elif e.event_type == "status_changed" and e.to_status:
                change["state"] = STATE_LABELS[e.to_status]
                if e.to_status == "in_progress" and agent and current.assignee is None:
                    change["assignee"] = agent
            current = current.copy(mod_count=current.mod_count + 1, updated=at, **change)
            versions.append(current)
        out[_number(ticket_id)] = versions
    return out


def _stamp(ts: pd.Timestamp | None) -> str:
    """A date-time as the event-log export writes it: day-first, no leading zeros, minutes."""
    if ts is None:
        return "?"
    ts = ts.tz_convert("UTC")
    return f"{ts.day}/{ts.month}/{ts.year} {ts.hour:02d}:{ts.minute:02d}"


def export_row(v: Incident) -> dict[str, str]:
    """One version as a row of an event-log export (``?`` for empty)."""
    n = int(v.number[3:])
    row = {
        "number": v.number, "incident_state": v.state, "active": "false" if v.state in ("Closed", "Canceled") else "true",
        "reassignment_count": str(v.reassignments), "reopen_count": str(v.reopens), "sys_mod_count": str(v.mod_count),
        "made_sla": "true", "caller_id": v.caller, "opened_by": f"Opened by {n % 17 + 1}", "opened_at": _stamp(v.opened),
        "sys_created_by": f"Created by {n % 11 + 1}", "sys_created_at": _stamp(v.opened),
        "sys_updated_by": f"Updated by {(n + v.mod_count) % 23 + 1}", "sys_updated_at": _stamp(v.updated),
        "contact_type": v.contact_type, "location": f"Location {n % 40 + 1}", "category": v.category,
        "subcategory": v.subcategory or "?", "u_symptom": f"Symptom {n % 60 + 1}", "cmdb_ci": "?",
        "impact": v.impact or "?", "urgency": v.urgency or "?", "priority": v.priority,
        "assignment_group": v.group or "?", "assigned_to": v.assignee or "?", "knowledge": "false",
        "u_priority_confirmation": "false", "notify": "Do Not Notify", "problem_id": "?", "rfc": "?", "vendor": "?",
        "caused_by": "?", "closed_code": v.close_code or "?", "resolved_by": v.resolver.replace("Resolver", "Resolved by")
        if v.resolver else "?", "resolved_at": _stamp(v.resolved), "closed_at": _stamp(v.closed),
    }  # fmt: skip
    return row


@dataclass
class ExportResult:
    path: Path
    rows: int
    incidents: int
    spoiled: list[tuple[int, str, str]]  # (line, column, value)


def write_export(data, path: Path, *, bad_rows: int = 0, seed: int = 1, limit: int | None = None) -> ExportResult:
    """An event-log export of a simulated snapshot: one row per update, oldest incident first.

    ``limit`` keeps the first that many incidents; ``bad_rows`` spoils that many rows (not the
    first row of an incident) with a value outside ServiceNow's vocabulary, noted with its line.
    """
    versions = incident_versions(data)
    numbers = sorted(versions)[:limit] if limit else sorted(versions)
    rows = [export_row(v) for number in numbers for v in versions[number]]
    rng = random.Random(seed)
    candidates = [i for i, r in enumerate(rows) if r["sys_mod_count"] != "0"]
    spoiled = []
    for k, i in enumerate(sorted(rng.sample(candidates, min(bad_rows, len(candidates))))):
        column, value = SPOILERS[k % len(SPOILERS)]
        rows[i][column] = value
        spoiled.append((i + 2, column, value))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return ExportResult(path, len(rows), len(numbers), spoiled)


# --- the Table API stand-in -----------------------------------------------------------------

STORED_FORMAT = "%Y-%m-%d %H:%M:%S"
DISPLAY_FORMAT = "%d/%m/%Y %H:%M:%S"
REFERENCES = ("caller_id", "assignment_group", "assigned_to", "resolved_by")
STAMPS = ("opened_at", "sys_created_on", "sys_updated_on", "resolved_at", "closed_at")


def _stored(ts: pd.Timestamp | None) -> str:
    return "" if ts is None else ts.tz_convert("UTC").strftime(STORED_FORMAT)


def api_record(v: Incident) -> dict[str, dict[str, str]]:
    """An incident as the Table API holds it: per field its stored value and its display value."""
    hold = HOLD_CODES.get(v.state, "")
    state = STATE_CODES[v.state]

    def ref(display: str | None, table: str) -> dict[str, str]:
        return {"value": _sys_id(table, display) if display else "", "display_value": display or ""}

    def choice(label: str | None, code: str | None = None) -> dict[str, str]:
        if label is None:
            return {"value": "", "display_value": ""}
        return {"value": code if code is not None else label.split(" - ")[0], "display_value": label}

    def stamp(ts: pd.Timestamp | None) -> dict[str, Any]:
        return {"value": _stored(ts), "display_value": ts}  # rendered per request, in the display zone

    display_state = "On Hold" if state == "3" else v.state
    return {
        "sys_id": {"value": _sys_id("incident", v.number), "display_value": _sys_id("incident", v.number)},
        "number": {"value": v.number, "display_value": v.number},
        "opened_at": stamp(v.opened), "sys_created_on": stamp(v.opened), "sys_updated_on": stamp(v.updated),
        "resolved_at": stamp(v.resolved), "closed_at": stamp(v.closed),
        "state": choice(display_state, state), "incident_state": choice(display_state, state),
        "hold_reason": choice({"1": "Awaiting Caller", "4": "Awaiting Vendor"}.get(hold), hold or None),
        "active": {"value": "false" if state in ("7", "8") else "true", "display_value": "false" if state in ("7", "8") else "true"},
        "priority": choice(v.priority), "impact": choice(v.impact), "urgency": choice(v.urgency),
        "contact_type": choice(v.contact_type, CONTACT_CODES.get(v.contact_type, v.contact_type.lower())),
        "category": {"value": v.category, "display_value": v.category.replace("_", " ").title()},
        "subcategory": {"value": v.subcategory or "", "display_value": (v.subcategory or "").replace("_", " ").title()},
        "caller_id": ref(v.caller, "sys_user"), "assignment_group": ref(v.group, "sys_user_group"),
        "assigned_to": ref(v.assignee, "sys_user"), "resolved_by": ref(v.resolver, "sys_user"),
        "reopen_count": {"value": str(v.reopens), "display_value": str(v.reopens)},
        "reassignment_count": {"value": str(v.reassignments), "display_value": str(v.reassignments)},
        "sys_mod_count": {"value": str(v.mod_count), "display_value": str(v.mod_count)},
        "close_code": {"value": v.close_code or "", "display_value": (v.close_code or "").replace("_", " ").title()},
        "escalation": {"value": "0", "display_value": "Normal"},
    }  # fmt: skip


_CONDITION = re.compile(r"([a-z_][a-z0-9_.]*)(>=|<=|!=|=|>|<)(.*)", re.I)


class ServiceNowApi(LoopbackApi):
    """ServiceNow's Table API for ``incident`` on loopback (see the module docstring)."""

    name = "servicenow-api"

    def __init__(self, records: list[dict], *, display_zone: str = "UTC", hide: set[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        import zoneinfo

        self.display_zone = zoneinfo.ZoneInfo(display_zone)
        self.hide = set(hide or ())
        self._records = {r["number"]["value"]: r for r in records}

    @classmethod
    def of(cls, data, **kwargs) -> ServiceNowApi:
        """The incidents of a simulated snapshot, each at its latest version."""
        return cls([api_record(vs[-1]) for vs in incident_versions(data).values()], **kwargs)

    def upsert(self, record: dict) -> None:
        """An incident created or updated on the instance (``api_record`` form)."""
        with self._lock:
            self._records[record["number"]["value"]] = record

    def record(self, number: str) -> dict:
        with self._lock:
            return self._records[number]

    def unauthorised(self):
        body = {"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
                "status": "failure"}  # fmt: skip
        return 401, body, {"WWW-Authenticate": 'BASIC realm="Service-now"'}

    def unavailable(self, status: int) -> Any:
        message = "Too many requests" if status == 429 else "Service Unavailable"
        return {"error": {"message": message, "detail": None}, "status": "failure"}

    # --- the query language ------------------------------------------------------------

    def select(self, query: str) -> list[dict]:
        """The records an encoded query selects, in its order (by default, by sys_id)."""
        with self._lock:
            rows = list(self._records.values())
        order: list[tuple[str, bool]] = []
        for part in filter(None, query.split("^")):
            if part.startswith("ORDERBYDESC"):
                order.append((part[len("ORDERBYDESC") :], True))
                continue
            if part.startswith("ORDERBY"):
                order.append((part[len("ORDERBY") :], False))
                continue
            m = _CONDITION.fullmatch(part)
            if m is None:
                # ServiceNow ignores a part it cannot read (glide.invalid_query.returns_no_rows off).
                continue
            name, op, value = m.groups()
            rows = [r for r in rows if name in r and _compare(r[name]["value"], op, value)]
        for name, descending in reversed(order or [("sys_id", False)]):
            rows.sort(key=lambda r, n=name: r.get(n, {}).get("value", ""), reverse=descending)
        return rows

    def route(self, path: str, query: dict[str, str]):
        m = re.fullmatch(r"/api/now/(?:v[12]/)?table/([a-z_0-9]+)", path)
        if m is None or m.group(1) != "incident":
            detail = f"Invalid table {m.group(1)}" if m else f"no such resource {path}"
            return 400 if m else 404, {"error": {"message": detail, "detail": None}, "status": "failure"}, {}
        try:
            limit = int(query.get("sysparm_limit", "10000"))
            offset = int(query.get("sysparm_offset", "0"))
        except ValueError as exc:
            return 400, {"error": {"message": f"bad paging parameter: {exc}", "detail": None}, "status": "failure"}, {}
        rows = self.select(query.get("sysparm_query", ""))
        page = [r for r in rows[offset : offset + limit] if r["number"]["value"] not in self.hide]
        mode = query.get("sysparm_display_value", "false").lower()
        links = query.get("sysparm_exclude_reference_link", "false").lower() != "true"
        fields = [f for f in query.get("sysparm_fields", "").split(",") if f]
        result = [self._render(r, mode, links, fields) for r in page]
        headers = {}
        if query.get("sysparm_no_count", "false").lower() != "true":
            headers["X-Total-Count"] = str(len(rows))
        headers["Link"] = self._links(path, query, offset, limit, len(rows))
        return 200, {"result": result}, headers

    def _render(self, record: dict, mode: str, links: bool, fields: list[str]) -> dict:
        out = {}
        for name, cell in record.items():
            if fields and name not in fields:
                continue
            display = cell["display_value"]
            if name in STAMPS:
                display = "" if display is None else display.tz_convert(self.display_zone).strftime(DISPLAY_FORMAT)
            value = cell["value"]
            if mode == "all":
                rendered: Any = {"display_value": display, "value": value}
            elif mode == "true":
                rendered = display
            else:
                rendered = value
            if name in REFERENCES and links and value:
                link = (
                    f"{self.url}/api/now/table/{'sys_user_group' if name == 'assignment_group' else 'sys_user'}/{value}"
                )
                rendered = (
                    {**rendered, "link": link} if isinstance(rendered, dict) else {"link": link, "value": rendered}
                )
            out[name] = rendered
        return out

    def _links(self, path: str, query: dict[str, str], offset: int, limit: int, total: int) -> str:
        def url(at: int) -> str:
            return f"{self.url}{path}?{urlencode({**query, 'sysparm_offset': str(at), 'sysparm_limit': str(limit)})}"

        last = max(0, (total - 1) // limit * limit) if limit else 0
        parts = [f'<{url(0)}>;rel="first"']
        if offset > 0:
            parts.append(f'<{url(max(0, offset - limit))}>;rel="prev"')
        if offset + limit < total:
            parts.append(f'<{url(offset + limit)}>;rel="next"')
        parts.append(f'<{url(last)}>;rel="last"')
        return ",".join(parts)


def _compare(stored: str, op: str, value: str) -> bool:
    # Stored date-times (yyyy-MM-dd HH:mm:ss) and sys_ids compare as text; counts as numbers.
    if stored.isdigit() and value.isdigit():
        a, b = int(stored), int(value)
    else:
        a, b = stored, value
    return {"=": a == b, "!=": a != b, ">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


def serve(days: int = 120, tickets_per_day: int = 200, seed: int = 7, port: int = 8766, basic=None, token=None):
    """Serve the simulated organisation's incidents until interrupted (``serviceloop servicenow-api``)."""
    from serviceloop.pipeline import RunOptions, simulation_config
    from serviceloop.simulator import simulate

    data = simulate(simulation_config(RunOptions(seed=seed, days=days, tickets_per_day=tickets_per_day)))
    api = ServiceNowApi.of(data, basic=basic, token=token, port=port)
    with api:
        print(
            f"ServiceNow Table API on {api.url}/api/now/table/incident ({len(api._records)} incidents); Ctrl-C stops it"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
