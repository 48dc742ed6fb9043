"""sources.yml: the shipped file loads, and a wrong one is refused naming the file, the key and why."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap

import pytest

from serviceloop.settings import REPO_ROOT
from serviceloop.sources import (
    SCHEDULED,
    SOURCES,
    FileDropSource,
    RestApiSource,
    ServiceNowCsvSource,
    ServiceNowSource,
    SourcesConfigError,
    SqlSource,
    load_sources,
)

VALID = """
sources:
  osticket:
    kind: sql
    connection: {env: OSTICKET_URL}
    schedule: "0 * * * *"
    overlap: 6h
    entities:
      tickets:
        table: helpdesk.ost_ticket
        watermark: lastupdate
        columns: {ticket_id: number, updated_at: lastupdate}
        constants: {source_system: osticket, escalated: false}
        values: {priority: {Emergency: P1, 2: P2}}
  surveys_api:
    kind: rest_api
    connection: {conn_id: survey_tool}
    auth: basic
    timeout: 5
    retries: 3
    entities:
      surveys:
        endpoint: /api/v2/surveys
        pagination: cursor
        records: result.items
        next_cursor: result.next
        window_params: {start: from, end: to}
        columns: {survey_id: id, ticket_id: ticket.ref}
  drop:
    kind: file_drop
    enabled: false
    entities:
      surveys: {}
  snow:
    kind: servicenow
    connection: {conn_id: servicenow}
    auth: bearer
    table: incident
    query: active=true^assignment_group.nameSTARTSWITHService
    page_size: 500
    entities:
      tickets:
        columns: {customer_id: u_customer}
        values: {team_id: {Service Desk: tech_support}}
  snow_export:
    kind: servicenow_csv
    timezone: Europe/Berlin
    date_order: mdy
    entities: {tickets: {}, ticket_events: {}}
"""


def _load(tmp_path, text: str):
    path = tmp_path / "sources.yml"
    path.write_text(textwrap.dedent(text))
    return load_sources(path)


def test_the_shipped_file_declares_the_demo_sources():
    configured = load_sources(REPO_ROOT / "sources.yml")
    assert isinstance(configured["helpdesk"], SqlSource)
    assert configured["helpdesk"].tables == {
        "tickets": "hd_tickets", "ticket_events": "hd_ticket_events", "agents": "hd_agents", "shifts": "hd_shifts",
    }  # fmt: skip
    assert configured["helpdesk"].conn_id == "serviceloop_helpdesk"
    assert configured["helpdesk"].overlap == dt.timedelta(days=2)
    assert isinstance(configured["survey_drop"], FileDropSource)
    assert (configured["survey_drop"].folder, configured["survey_drop"].prefix) == ("surveys", "surveys")
    # The REST survey source is declared but off: the pipeline runs the enabled ones only.
    assert isinstance(configured["survey_api"], RestApiSource) and not configured["survey_api"].enabled
    # ServiceNow: the Table API off (it needs an instance), the exports on (loaded on demand).
    assert isinstance(configured["servicenow"], ServiceNowSource) and not configured["servicenow"].enabled
    exports = configured["servicenow_export"]
    assert isinstance(exports, ServiceNowCsvSource) and not exports.scheduled
    assert list(exports.mappings) == ["tickets", "ticket_events"]
    assert exports.mappings["tickets"].values["team_id"]["Group 56"] == "tech_support"
    assert list(SOURCES) == ["helpdesk", "survey_drop", "servicenow_export"]
    assert list(SCHEDULED) == ["helpdesk", "survey_drop"]


def test_a_full_file_is_read_with_every_setting(tmp_path):
    sources = _load(tmp_path, VALID)
    osticket = sources["osticket"]
    mapping = osticket.mappings["tickets"]
    assert osticket.connection.env == "OSTICKET_URL" and osticket.schedule == "0 * * * *"
    assert osticket.overlap == dt.timedelta(hours=6)
    assert mapping.table == "helpdesk.ost_ticket" and mapping.watermark_column == "lastupdate"
    assert mapping.source_column("ticket_id") == "number" and mapping.source_column("channel") == "channel"
    assert mapping.constants == {"source_system": "osticket", "escalated": "false"}
    assert mapping.values == {"priority": {"Emergency": "P1", "2": "P2"}}
    api = sources["surveys_api"]
    m = api.mappings["surveys"]
    assert (api.auth, api.timeout, api.retries, api.conn_id) == ("basic", 5, 3, "survey_tool")
    assert (m.pagination, m.records, m.next_cursor, m.window_params) == (
        "cursor",
        "result.items",
        "result.next",
        ("from", "to"),
    )
    assert m.page_params == {"cursor": "cursor", "limit": "limit"}
    assert sources["drop"].enabled is False and sources["drop"].entity_name == "surveys"
    snow = sources["snow"]
    assert (snow.auth, snow.table, snow.page_size, snow.conn_id) == ("bearer", "incident", 500, "servicenow")
    assert snow.query == "active=true^assignment_group.nameSTARTSWITHService" and snow.scheduled
    assert snow.mappings["tickets"].columns == {"customer_id": "u_customer"}
    export = sources["snow_export"]
    assert (export.timezone, export.date_order, export.scheduled, export.connection) == (
        "Europe/Berlin", "mdy", False, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "key", "what"),
    [
        (("kind: sql", "kind: ftp"), "sources.osticket.kind", "expected one of sql, file_drop, rest_api"),
        (("overlap: 6h", "overlap: 6h\n    colour: blue"), "sources.osticket.colour", "unknown key"),
        (("overlap: 6h", "overlap: six hours"), "sources.osticket.overlap", "expected a duration"),
        (("retries: 3", "retries: three"), "sources.surveys_api.retries", "expected an integer"),
        (("timeout: 5", "timeout: [5]"), "sources.surveys_api.timeout", "expected a number"),
        (("      tickets:\n", "      incidents:\n"), "sources.osticket.entities.incidents", "not an entity"),
        (
            ("ticket_id: number,", "ticket_idd: number,"),
            "sources.osticket.entities.tickets.columns.ticket_idd",
            "'ticket_idd' is not a field of entity tickets",
        ),
        (
            ("table: helpdesk.ost_ticket", "table: 'ost_ticket; drop table users'"),
            "sources.osticket.entities.tickets.table",
            "is not a safe SQL identifier",
        ),
        (
            ("watermark: lastupdate", "watermark: 'lastupdate) or (1=1'"),
            "sources.osticket.entities.tickets.watermark",
            "is not a safe SQL identifier",
        ),
        (
            ("ticket_id: number,", 'ticket_id: "number--",'),
            "sources.osticket.entities.tickets.columns.ticket_id",
            "is not a safe SQL identifier",
        ),
        (("table: helpdesk.ost_ticket", "table: a.b.c"), "sources.osticket.entities.tickets.table", "schema.table"),
        (
            ("constants: {source_system: osticket,", "constants: {ticket_id: X, source_system: osticket,"),
            "sources.osticket.entities.tickets.constants",
            "also mapped to a column",
        ),
        (
            ("connection: {env: OSTICKET_URL}", "connection: {env: OSTICKET_URL, conn_id: x}"),
            "sources.osticket.connection",
            "exactly one of conn_id",
        ),
        (("    connection: {env: OSTICKET_URL}\n", ""), "sources.osticket", "missing key 'connection'"),
        (
            ("pagination: cursor", "pagination: pages"),
            "sources.surveys_api.entities.surveys.pagination",
            "offset or cursor",
        ),
        (
            ("endpoint: /api/v2/surveys", "endpoint: https://evil.example/x"),
            "sources.surveys_api.entities.surveys.endpoint",
            "a path on the API",
        ),
        (("auth: basic", "auth: oauth"), "sources.surveys_api.auth", "bearer, basic or none"),
        (('schedule: "0 * * * *"', "schedule: hourly"), "sources.osticket.schedule", "a cron expression"),
        (("  osticket:", "  os-ticket:"), "sources.os-ticket", "a source name"),
        (("  osticket:", "  os__ticket:"), "sources.os__ticket", "a source name"),
        (("enabled: false", "enabled: 'no'"), "sources.drop.enabled", "expected true or false"),
        (("      surveys: {}", "      surveys: {}\n      agents: {}"), "sources.drop.entities", "exactly one entity"),
        (("        table: helpdesk.ost_ticket\n", ""), "sources.osticket.entities.tickets", "missing key 'table'"),
        (("auth: bearer", "auth: none"), "sources.snow.auth", "expected basic or bearer"),
        (("table: incident", "table: 'incident^x'"), "sources.snow.table", "is not a safe SQL identifier"),
        (("STARTSWITHService", "STARTSWITHService^ORDERBYnumber"), "sources.snow.query", "ORDERBY and ^NQ"),
        (
            ("tech_support}}", "tech_support}}\n      surveys: {}"),
            "sources.snow.entities.surveys",
            "gives tickets only",
        ),
        (("timezone: Europe/Berlin", "timezone: Mars/Olympus"), "sources.snow_export.timezone", "IANA time zone"),
        (("date_order: mdy", "date_order: dd/mm"), "sources.snow_export.date_order", "one of dmy, mdy, ymd"),
        (("date_order: mdy", "connection: {env: X}"), "sources.snow_export.connection", "no connection"),
        (
            ("entities: {tickets: {}, ticket_events: {}}", "entities: {ticket_events: {}}"),
            "sources.snow_export.entities",
            "gives tickets: declare them",
        ),
    ],
)
def test_a_wrong_file_is_refused_naming_the_file_the_key_and_why(tmp_path, change, key, what):
    old, new = change
    assert old in VALID
    with pytest.raises(SourcesConfigError) as err:
        _load(tmp_path, VALID.replace(old, new, 1))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'sources.yml'}: {key}: "), message
    assert what in message, message


def test_a_file_that_is_not_yaml_or_missing_says_so(tmp_path):
    with pytest.raises(SourcesConfigError, match="not valid YAML"):
        _load(tmp_path, "sources: [\n")
    with pytest.raises(SourcesConfigError, match="no such file"):
        load_sources(tmp_path / "absent.yml")
    with pytest.raises(SourcesConfigError, match=r"sources.yml: connectors: unknown key \(expected one of: sources\)"):
        _load(tmp_path, "connectors: {}\n")
    with pytest.raises(SourcesConfigError, match=r"sources.yml: \(top level\): expected a mapping, got nothing"):
        _load(tmp_path, "")


def test_a_broken_file_fails_the_dag_import_with_its_message(tmp_path):
    """The ingest DAG is laid out from the file: a bad one is an import error that says what to fix."""
    path = tmp_path / "sources.yml"
    path.write_text(VALID.replace("ticket_id: number,", "ticket_idd: number,"))
    code = "import runpy, sys; runpy.run_path(sys.argv[1])"
    env = {"SERVICELOOP_SOURCES_FILE": str(path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO_ROOT / "dags" / "serviceloop_ingest.py")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode != 0
    assert "SourcesConfigError" in out.stderr
    assert "sources.osticket.entities.tickets.columns.ticket_idd: 'ticket_idd' is not a field" in out.stderr
