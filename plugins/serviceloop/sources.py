"""The source systems ServiceLoop pulls from, and which entity lives where.

Kept free of heavy imports: DAG files read it at parse time to lay out one task per
source and entity. The readers are in ``serviceloop.extract``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from serviceloop.contract import ENTITIES, Entity
from serviceloop.settings import HELPDESK_CONN_ID


@dataclass(frozen=True)
class SqlSource:
    """A helpdesk application's own database, read table by table."""

    name: str
    conn_id: str
    tables: dict[str, str]
    overlap: dt.timedelta = dt.timedelta(days=2)

    @property
    def entities(self) -> list[Entity]:
        return [ENTITIES[e] for e in self.tables]


@dataclass(frozen=True)
class FileDropSource:
    """A folder a tool exports files into, one file per day (``<prefix>_YYYYMMDD.csv``)."""

    name: str
    entity_name: str
    folder: str
    prefix: str
    overlap: dt.timedelta = dt.timedelta(days=1)

    @property
    def entities(self) -> list[Entity]:
        return [ENTITIES[self.entity_name]]


SOURCES: dict[str, SqlSource | FileDropSource] = {
    "helpdesk": SqlSource(
        name="helpdesk",
        conn_id=HELPDESK_CONN_ID,
        tables={
            "tickets": "hd_tickets",
            "ticket_events": "hd_ticket_events",
            "agents": "hd_agents",
            "shifts": "hd_shifts",
        },
    ),
    "survey_drop": FileDropSource(name="survey_drop", entity_name="surveys", folder="surveys", prefix="surveys"),
}


def raw_table(source: str, entity: str) -> str:
    return f"{source}__{entity}"
