"""The data contract: the entities every source maps onto (PRODUCT.md §2).

One place defines each entity's fields, their types, whether they are required and the
vocabularies they draw from. The warehouse DDL, the validation suites and the simulator
all read it, so a field is added here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHANNELS = ("phone", "email", "chat", "web", "walk_in", "api")
PRIORITIES = ("P1", "P2", "P3", "P4")
TICKET_STATUSES = (
    "new",
    "triaged",
    "assigned",
    "in_progress",
    "pending_customer",
    "pending_third_party",
    "resolved",
    "closed",
    "cancelled",
)
EVENT_TYPES = (
    "created",
    "triaged",
    "assigned",
    "reassigned",
    "status_changed",
    "handoff",
    "escalated",
    "customer_replied",
    "resolved",
    "reopened",
    "closed",
)
INTERNAL_DELAY_CAUSES = (
    "staffing_shortage",
    "technical_fault",
    "internal_communication",
    "process_design",
)
EXTERNAL_DELAY_CAUSES = (
    "customer_change",
    "third_party",
    "regulatory_change",
    "emergency_event",
)
DELAY_CAUSES = INTERNAL_DELAY_CAUSES + EXTERNAL_DELAY_CAUSES

# The layout a timestamp has in the canonical text form (and the layouts validation accepts):
# the castable rules of expectations/*.yml and ops.to_timestamptz use it.
ISO_TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:?\d{2})$"

# Field types, named for what the warehouse stores.
TEXT = "text"
TIMESTAMP = "timestamptz"
INTEGER = "integer"
NUMERIC = "numeric"
BOOLEAN = "boolean"


@dataclass(frozen=True)
class Field:
    name: str
    type: str = TEXT
    required: bool = True
    allowed: tuple[str, ...] | None = None
    min_value: float | None = None
    max_value: float | None = None


@dataclass(frozen=True)
class Entity:
    name: str
    key: str
    fields: tuple[Field, ...]
    # The column that says when a record last changed; extraction is incremental on it.
    watermark: str
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def required(self) -> list[str]:
        return [f.name for f in self.fields if f.required]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


TICKET = Entity(
    name="tickets",
    key="ticket_id",
    watermark="updated_at",
    description="A customer request and its current state.",
    fields=(
        Field("ticket_id"),
        Field("source_system"),
        Field("created_at", TIMESTAMP),
        Field("updated_at", TIMESTAMP),
        Field("channel", allowed=CHANNELS),
        Field("customer_id"),
        Field("customer_segment", required=False),
        Field("category"),
        Field("subcategory", required=False),
        Field("priority", allowed=PRIORITIES),
        Field("impact", required=False),
        Field("urgency", required=False),
        Field("team_id"),
        Field("agent_id", required=False),
        Field("status", allowed=TICKET_STATUSES),
        Field("first_response_at", TIMESTAMP, required=False),
        Field("resolved_at", TIMESTAMP, required=False),
        Field("closed_at", TIMESTAMP, required=False),
        Field("reopen_count", INTEGER, min_value=0),
        Field("reassignment_count", INTEGER, min_value=0),
        Field("escalated", BOOLEAN),
        Field("resolution_code", required=False),
        Field("delay_cause", required=False, allowed=DELAY_CAUSES),
    ),
)

TICKET_EVENT = Entity(
    name="ticket_events",
    key="event_id",
    watermark="occurred_at",
    description="One step in a ticket's lifecycle.",
    fields=(
        Field("event_id"),
        Field("ticket_id"),
        Field("occurred_at", TIMESTAMP),
        Field("event_type", allowed=EVENT_TYPES),
        Field("from_status", required=False, allowed=TICKET_STATUSES),
        Field("to_status", required=False, allowed=TICKET_STATUSES),
        Field("from_team", required=False),
        Field("to_team", required=False),
        Field("agent_id", required=False),
    ),
)

SURVEY = Entity(
    name="surveys",
    key="survey_id",
    watermark="submitted_at",
    description="A customer's rating of a resolved ticket.",
    fields=(
        Field("survey_id"),
        Field("ticket_id"),
        Field("submitted_at", TIMESTAMP),
        Field("csat", INTEGER, required=False, min_value=1, max_value=5),
        Field("nps", INTEGER, required=False, min_value=0, max_value=10),
        Field("complaint", BOOLEAN),
        Field("comment", required=False),
    ),
)

AGENT = Entity(
    name="agents",
    key="agent_id",
    watermark="updated_at",
    description="A person who works tickets, and what an hour of their time costs.",
    fields=(
        Field("agent_id"),
        Field("team_id"),
        Field("hourly_cost", NUMERIC, min_value=0),
        Field("updated_at", TIMESTAMP),
    ),
)

SHIFT = Entity(
    name="shifts",
    key="shift_id",
    watermark="shift_start",
    description="A period an agent was on duty.",
    fields=(
        Field("shift_id"),
        Field("agent_id"),
        Field("shift_start", TIMESTAMP),
        Field("shift_end", TIMESTAMP),
    ),
)

ENTITIES: dict[str, Entity] = {e.name: e for e in (TICKET, TICKET_EVENT, SURVEY, AGENT, SHIFT)}
