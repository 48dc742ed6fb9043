"""ServiceNow: CSV exports imported through validation, and the Table API against a stand-in on loopback.

The sample export (``tests/servicenow/incident_event_log_sample.csv``) is an event-log export:
24 incidents of the simulated organisation written by ``serviceloop.simulated_servicenow``
(``serviceloop servicenow-export``, four rows spoiled with values outside ServiceNow's
vocabulary), and, after them, incidents written by hand the way real exports hold them:

- INC0099001: nine versions on the leap day 29/2/2016 and after; two in the same minute;
  Awaiting Problem and Awaiting Evidence; a reassignment to another group with a higher
  priority; resolved, reopened, resolved again and closed; its last two rows out of order in
  the file; the final resolution and closing times repeated on every row;
- INC0099002: one row that is not the first version (sys_mod_count 4), Direct opening,
  5 - Planning;
- INC0099003: an assignment group no team of the reference data answers to (Group 99);
- INC0099004: its latest row's state is -100;
- INC0099005: a line cut short.

The Table API stand-in (``ServiceNowApi``) serves the simulated organisation's incidents on
loopback; the connector pages through it by offset up to X-Total-Count, through 429 with
Retry-After, 503 and ACL-shortened pages, with basic or bearer credentials. The last test
builds the marts (dbt) from both sources and shows a later export's and the API's updates
in them after the next build.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from serviceloop.ingest import batch_id, ingest_batch
from serviceloop.rest import ApiRequestError, ApiUnavailableError
from serviceloop.servicenow import Settings, api_query, import_export, parse_datetime, parse_export
from serviceloop.simulated_api import Fault
from serviceloop.simulated_servicenow import ServiceNowApi, api_record, incident_versions, write_export
from serviceloop.simulator import SimulationConfig, simulate
from serviceloop.sources import SOURCES, load_sources

SAMPLE = Path(__file__).parent / "servicenow" / "incident_event_log_sample.csv"
UTC = dt.UTC
START = dt.date(2026, 3, 2)
DAY = dt.timedelta(days=1)
PASSWORD = "sn0w-p@ss:word"
TOKEN = "snow-bearer-token-0123456789"

CONFIG = """
sources:
  servicenow:
    kind: servicenow
    connection: {env: SERVICENOW_URL}
    auth: basic
    timeout: 1
    retries: 3
    backoff: 0.05
    max_backoff: 5
    page_size: 7
    overlap: 1d
    entities:
      tickets:
        values:
          team_id: &groups {Group 24: billing, Group 56: tech_support, Group 70: accounts, Group 31: field_service,
                            Group 45: onboarding}
  snow_bearer:
    kind: servicenow
    connection: {env: SERVICENOW_URL}
    auth: bearer
    retries: 0
    page_size: 50
    entities:
      tickets: {values: {team_id: *groups}}
  berlin_export:
    kind: servicenow_csv
    timezone: Europe/Berlin
    entities: {tickets: {values: {team_id: *groups}}, ticket_events: {}}
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    path = tmp_path_factory.mktemp("sn-config") / "sources.yml"
    path.write_text(CONFIG)
    return load_sources(path)


@pytest.fixture
def enabled(monkeypatch, sources):
    """The pipeline's sources plus this module's (their raw tables are created with them)."""
    for name, source in sources.items():
        monkeypatch.setitem(SOURCES, name, source)
    return sources


@pytest.fixture(scope="module")
def export():
    return parse_export(str(SAMPLE), Settings.of(SOURCES["servicenow_export"]))


def _tickets(export) -> dict[str, tuple[dict, str, str | None]]:
    return {r["ticket_id"]: (r, origin, error) for r, origin, error in export.tickets if error is None}


def _one(url: str, sql: str, *args):
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


# --- the export's quirks --------------------------------------------------------------------


def test_day_first_timestamps_question_marks_priorities_and_contact_types_map_onto_the_contract(export, sources):
    assert parse_datetime("29/2/2016 01:16") == dt.datetime(2016, 2, 29, 1, 16, tzinfo=UTC)
    assert parse_datetime("2016-02-29 01:16:09") == dt.datetime(2016, 2, 29, 1, 16, 9, tzinfo=UTC)
    assert parse_datetime("31/2/2016 01:16") is None and parse_datetime("29/2/2016 25:00") is None
    # mdy and a zone are the source's to say: Berlin is an hour ahead of UTC in winter.
    assert parse_datetime("2/29/2016 01:16", "mdy") == dt.datetime(2016, 2, 29, 1, 16, tzinfo=UTC)
    berlin = parse_export(str(SAMPLE), Settings.of(sources["berlin_export"]))
    assert _tickets(berlin)["INC0099001"][0]["created_at"] == "2016-02-29T00:16:00+00:00"

    ticket, origin, _ = _tickets(export)["INC0099001"]
    assert ticket["created_at"] == "2016-02-29T01:16:00+00:00"
    assert ticket["updated_at"] == "2016-03-06T12:00:00+00:00"
    assert (ticket["priority"], ticket["impact"], ticket["urgency"], ticket["channel"]) == (
        "P2",
        "medium",
        "high",
        "phone",
    )
    assert (ticket["team_id"], ticket["agent_id"], ticket["customer_id"]) == ("accounts", "Resolver 31", "Caller 2403")
    assert (ticket["status"], ticket["reopen_count"], ticket["reassignment_count"]) == ("closed", "1", "1")
    assert (ticket["resolved_at"], ticket["closed_at"]) == ("2016-03-03T16:45:00+00:00", "2016-03-06T12:00:00+00:00")
    assert (ticket["escalated"], ticket["resolution_code"], ticket["source_system"]) == ("true", "code 5", "servicenow")
    # ? is empty: no subcategory problem, no first response ServiceNow does not record.
    assert ticket["first_response_at"] is None and ticket["customer_segment"] is None
    plain = _tickets(export)["INC0099002"][0]
    assert (plain["channel"], plain["priority"], plain["team_id"], plain["closed_at"]) == (
        "walk_in",
        "P4",
        "billing",
        None,
    )
    # Every generated incident's latest row became a ticket in the contract's vocabulary.
    generated = [r for r, _, e in export.tickets if e is None and r["ticket_id"] < "INC0099000"]
    assert len(generated) == 24
    assert {r["status"] for r in generated} <= {"new", "in_progress", "pending_customer", "pending_third_party",
                                               "resolved", "closed"}  # fmt: skip
    assert {r["channel"] for r in generated} <= {"phone", "email", "chat", "web", "walk_in"}


def test_consecutive_updates_become_events_and_the_latest_version_is_the_ticket(export):
    events = [e for e, _, _ in export.events if e["ticket_id"] == "INC0099001"]
    steps = [(e["occurred_at"][:16], e["event_type"], e["from_status"], e["to_status"], e["from_team"], e["to_team"])
             for e in sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))]  # fmt: skip
    assert steps == [
        ("2016-02-29T01:16", "created", None, "new", None, None),
        ("2016-02-29T01:23", "triaged", None, None, None, "tech_support"),
        ("2016-02-29T01:23", "assigned", None, None, None, "tech_support"),
        ("2016-02-29T01:23", "status_changed", "new", "in_progress", None, None),
        ("2016-02-29T08:53", "status_changed", "in_progress", "pending_third_party", None, None),
        ("2016-02-29T11:29", "reassigned", None, None, "tech_support", "accounts"),
        ("2016-02-29T11:29", "escalated", None, None, None, None),
        ("2016-02-29T11:29", "status_changed", "pending_third_party", "in_progress", None, None),
        ("2016-03-01T11:29", "resolved", "in_progress", "resolved", None, None),
        ("2016-03-02T09:10", "reopened", "resolved", "in_progress", None, None),
        ("2016-03-02T10:00", "status_changed", "in_progress", "pending_customer", None, None),
        ("2016-03-03T16:45", "resolved", "pending_customer", "resolved", None, None),
        ("2016-03-06T12:00", "closed", "resolved", "closed", None, None),
    ]
    assert len({e["event_id"] for e in events}) == len(events)
    # No history before a row that is not the first version: created, then the resolution by its time.
    plain = [(e["event_type"], e["occurred_at"]) for e, _, _ in export.events if e["ticket_id"] == "INC0099002"]
    assert plain == [("created", "2016-03-15T09:05:00+00:00"), ("resolved", "2016-03-16T10:00:00+00:00")]
    # The latest row's state is -100: the version before it is the ticket, the -100 row is kept out.
    assert _tickets(export)["INC0099004"][0]["status"] == "in_progress"


def test_rows_outside_servicenow_s_vocabulary_are_kept_out_with_their_reason(export):
    reasons = {origin: error for _, origin, error in export.tickets if error}
    assert export.rows == 176 and export.rejected == 6 and export.incidents == 28
    expected = {
        "incident_event_log_sample.csv:41": "incident_state '-100' is outside ServiceNow's vocabulary",
        "incident_event_log_sample.csv:73": "priority '6 - Urgent-ish' is outside ServiceNow's vocabulary",
        "incident_event_log_sample.csv:113": "contact_type 'Carrier pigeon' is outside ServiceNow's vocabulary",
        "incident_event_log_sample.csv:145": "sys_updated_at '31/2/2016 25:61' is not a date-time",
        "incident_event_log_sample.csv:176": "incident_state '-100' is outside ServiceNow's vocabulary",
        "incident_event_log_sample.csv:177": "5 fields where the header has 36",
        "incident_event_log_sample.csv:173": "assignment_group 'Group 99' is no team of the reference data",
    }
    assert set(reasons) == set(expected)
    for origin, words in expected.items():
        assert words in reasons[origin], (origin, reasons[origin])
    assert "expected one of New, In Progress, Active" in reasons["incident_event_log_sample.csv:41"]


# --- the import through validation ------------------------------------------------------------


def _counts(url: str, table: str) -> tuple[int, int]:
    return _one(url, f"select (select count(*) from raw.{table}), (select count(*) from quarantine.{table})")


def test_an_import_loads_through_validation_once_and_a_later_export_adds_only_its_updates(
    fresh_db, tmp_path, monkeypatch
):
    from serviceloop import cli

    monkeypatch.setenv("SERVICELOOP_WAREHOUSE_URL", fresh_db)
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["import", "servicenow-csv", str(SAMPLE)]) == 0
    text = out.getvalue()
    assert "176 rows, 28 incidents, 6 rows kept out (outside ServiceNow's vocabulary, or unreadable;" in text
    printed = {line.split()[0]: line.split()[1:4] for line in text.splitlines() if line.startswith("ticket")}
    # Read = loaded + quarantined, per entity: 28 incidents' tickets and the 6 rows kept out
    # (Group 99's ticket is quarantined too); every event derived loads.
    events_derived = len(parse_export(str(SAMPLE), Settings.of(SOURCES["servicenow_export"])).events)
    assert printed == {"tickets": ["34", "27", "7"], "ticket_events": [str(events_derived), str(events_derived), "0"]}
    assert "incident_event_log_sample.csv:41: line 41: incident_state '-100'" in text
    first = _all(fresh_db, "select batch_id from ops.batches order by batch_id")
    reasons = _all(
        fresh_db, "select unnest(failed_rules), count(*) from quarantine.servicenow_export__tickets group by 1"
    )
    assert reasons == [("parse_error", 7)]
    origin, reason = _one(
        fresh_db,
        "select origin, record ->> '_parse_error' from quarantine.servicenow_export__tickets"
        " where record ->> 'ticket_id' = 'INC0099003'",
    )
    assert origin == "incident_event_log_sample.csv:173" and "map it in sources.yml" in reason
    assert _one(fresh_db, "select status, team_id from raw.servicenow_export__tickets where ticket_id = 'INC0099004'") == (
        "in_progress", "field_service",
    )  # fmt: skip
    # The batches' interval is the export's first to last valid update: the marts are as of its end.
    span = _one(fresh_db, "select min(interval_start), max(window_end), count(*) from ops.batches")
    assert span[0] == dt.datetime(2016, 2, 29, 1, 23, tzinfo=UTC) and span[2] == 2
    assert span[1] == parse_export(str(SAMPLE), Settings.of(SOURCES["servicenow_export"])).last
    before = (_counts(fresh_db, "servicenow_export__tickets"), _counts(fresh_db, "servicenow_export__ticket_events"))

    # The same file again, under another name: its batches are replaced, nothing is loaded twice.
    again_path = tmp_path / "copy of the export.csv"
    shutil.copy(SAMPLE, again_path)
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        again = import_export(conn, str(again_path))
    assert again.imported_before and [(b.batch_id,) for b in again.batches] == sorted(first, reverse=True)
    assert (
        _counts(fresh_db, "servicenow_export__tickets"),
        _counts(fresh_db, "servicenow_export__ticket_events"),
    ) == before

    # A later export (one more update of INC0099004: it is resolved) adds that version and its event.
    later = tmp_path / "later.csv"
    lines = SAMPLE.read_text().splitlines()
    resolved = lines[175].replace(",-100,", ",Resolved,").replace(",2,true,", ",3,true,", 1)
    resolved = resolved.replace("21/3/2016 10:15", "22/3/2016 10:15").rsplit(",", 2)[0] + ",22/3/2016 10:15,?"
    later.write_text("\n".join([*lines[:175], resolved]) + "\n")
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        update = import_export(conn, str(later))
    assert not update.imported_before
    latest = _one(
        fresh_db,
        "select status, resolved_at from raw.servicenow_export__tickets where ticket_id = 'INC0099004'"
        " order by updated_at desc, _loaded_at desc limit 1",
    )
    assert latest == ("resolved", dt.datetime(2016, 3, 22, 10, 15, tzinfo=UTC))
    new_events = _one(
        fresh_db,
        "select count(*), count(distinct event_id) from raw.servicenow_export__ticket_events where event_id in"
        " (select event_id from raw.servicenow_export__ticket_events group by event_id having count(*) = 1)",
    )
    assert new_events[0] == new_events[1] == 1, "one new event: INC0099004 resolved"
    batches = _one(
        fresh_db, "select count(*), sum(rows_read) - sum(rows_loaded) - sum(rows_quarantined) from ops.batches"
    )
    assert batches == (4, 0)


# --- the Table API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organisation():
    return simulate(SimulationConfig(seed=4, start=START, days=6, tickets_per_day=12, scenarios=[]))


def _url(api: ServiceNowApi, userinfo: str) -> str:
    return api.url.replace("http://", f"http://{userinfo}@")


def _api_batch(url: str, api: ServiceNowApi, end: dt.datetime, source: str = "servicenow", userinfo=None):
    userinfo = userinfo or f"integration:{PASSWORD.replace('@', '%40').replace(':', '%3A')}"
    with contextlib.closing(psycopg2.connect(url)) as conn:
        result = ingest_batch(conn, source, "tickets", end - DAY, end, source_dsn=_url(api, userinfo))
        conn.commit()
    return result


def _updated_before(api: ServiceNowApi, start: dt.datetime | None, end: dt.datetime) -> int:
    fmt = "%Y-%m-%d %H:%M:%S"
    query = f"sys_updated_on<{end:{fmt}}" + (f"^sys_updated_on>={start:{fmt}}" if start else "")
    return len(api.select(query))


def test_the_table_api_is_paged_by_offset_to_x_total_count_through_429_503_and_short_pages(
    fresh_db, enabled, organisation, caplog
):
    caplog.set_level(logging.DEBUG)
    end = dt.datetime.combine(START + dt.timedelta(days=4), dt.time(), UTC)
    with ServiceNowApi.of(organisation.as_of(end), basic=("integration", PASSWORD)) as api:
        expected = _updated_before(api, None, end)
        assert expected > 21, "several pages of 7"
        # ACLs leave a record out of its page after the limit is taken: a short page, more follow.
        api.hide = {
            api.select(f"sys_updated_on<{end:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on^ORDERBYsys_id")[3]["number"][
                "value"
            ]
        }
        api.fail(Fault.rate_limited(retry_after=1), Fault.unavailable())
        result = _api_batch(fresh_db, api, end)
        assert result.rows_read == expected - 1 == result.rows_loaded + result.rows_quarantined
        assert result.rows_quarantined == 0
        statuses = [r.status for r in api.requests]
        assert statuses[:2] == [429, 503] and api.requests[1].at - api.requests[0].at >= 0.95
        pages = [r for r in api.requests if r.status == 200]
        assert [int(r.query["sysparm_offset"]) for r in pages] == list(range(0, expected, 7))
        first = pages[0].query
        assert (
            first["sysparm_query"]
            == api_query(SOURCES["servicenow"], None, end)
            == (f"sys_updated_on<{end:%Y-%m-%d %H:%M:%S}^ORDERBYsys_updated_on^ORDERBYsys_id")
        )
        assert (first["sysparm_display_value"], first["sysparm_exclude_reference_link"], first["sysparm_limit"]) == (
            "all", "true", "7",
        )  # fmt: skip
        assert PASSWORD not in caplog.text
        # The incident's fields came out in the contract's terms: codes and UTC times by value, names by display.
        number = api.select("ORDERBYsys_updated_on^ORDERBYsys_id")[0]["number"]["value"]
        stored = api.record(number)
        row = _one(
            fresh_db,
            "select team_id, customer_id, priority, updated_at, status from raw.servicenow__tickets where ticket_id = %s",
            number,
        )
        assert row[1] == stored["caller_id"]["display_value"] and row[2] == f"P{stored['priority']['value']}"
        assert row[3].strftime("%Y-%m-%d %H:%M:%S") == stored["sys_updated_on"]["value"]


def test_the_table_api_reruns_load_nothing_twice_and_a_late_update_shows_after_the_next_run(
    fresh_db, enabled, organisation
):
    end = dt.datetime.combine(START + dt.timedelta(days=4), dt.time(), UTC)
    with ServiceNowApi.of(organisation.as_of(end), basic=("integration", PASSWORD)) as api:
        _api_batch(fresh_db, api, end - DAY)
        second = _api_batch(fresh_db, api, end)
        assert second.window_start == (end - 2 * DAY).isoformat()
        assert second.rows_read == _updated_before(api, end - 2 * DAY, end)
        bid = batch_id("servicenow", "tickets", end)
        content = (
            "select count(*), md5(string_agg((ticket_id, status, team_id, updated_at, _batch_id)::text, '|'"
            " order by ticket_id, _batch_id)) from raw.servicenow__tickets"
        )
        before = _one(fresh_db, content)
        rerun = _api_batch(fresh_db, api, end)
        assert (rerun.rows_read, rerun.rows_loaded) == (second.rows_read, second.rows_loaded)
        assert _one(fresh_db, content) == before, "the rerun replaced its batch with the same rows"
        # An incident loaded before is closed on the instance after that batch ran.
        number = _one(
            fresh_db, "select ticket_id from raw.servicenow__tickets where status <> 'closed' order by 1 limit 1"
        )[0]
        versions = incident_versions(organisation.full_lifecycle())[number]
        closed = versions[-1].copy(updated=pd.Timestamp(end + dt.timedelta(hours=3)))
        api.upsert(api_record(closed))
        third = _api_batch(fresh_db, api, end + DAY)
        assert third.rows_read == third.rows_loaded + third.rows_quarantined
        latest = _one(
            fresh_db,
            "select status from raw.servicenow__tickets where ticket_id = %s order by updated_at desc, _loaded_at desc limit 1",
            number,
        )
        assert latest == ("closed",)
        assert _one(fresh_db, "select count(*) from ops.batches where batch_id = %s", bid)[0] == 1


def test_bearer_credentials_a_refusal_and_a_spent_retry_budget_load_nothing(fresh_db, enabled, organisation, caplog):
    caplog.set_level(logging.DEBUG)
    end = dt.datetime.combine(START + dt.timedelta(days=3), dt.time(), UTC)
    with ServiceNowApi.of(organisation.as_of(end), token=TOKEN) as api:
        result = _api_batch(fresh_db, api, end, source="snow_bearer", userinfo=f":{TOKEN}")
        assert result.rows_read == _updated_before(api, None, end) > 0
        wrong = "not-the-token-987654321"
        with pytest.raises(ApiRequestError, match="HTTP 401.*check the credentials"):
            _api_batch(fresh_db, api, end + DAY, source="snow_bearer", userinfo=f":{wrong}")
        assert api.requests[-1].status == 401 and wrong not in caplog.text and TOKEN not in caplog.text
        api.fail_every_request = Fault.unavailable()
        with pytest.raises(ApiUnavailableError, match="gave up after 1 attempt"):
            _api_batch(fresh_db, api, end + DAY, source="snow_bearer", userinfo=f":{TOKEN}")
    bid = batch_id("snow_bearer", "tickets", end + DAY)
    assert _one(fresh_db, "select count(*) from ops.batches where batch_id = %s", bid)[0] == 0, "the watermark moved"


# --- the marts ------------------------------------------------------------------------------------


# The marts this test reads and what they are built from (test_kpis.py builds them all).
MARTS = ("+fct_tickets", "+fct_ticket_stages")


@pytest.mark.slow
def test_the_marts_show_both_sources_and_their_later_updates_after_the_next_build(
    fresh_db, enabled, organisation, tmp_path
):
    from test_kpis import _dbt

    end = dt.datetime.combine(START + dt.timedelta(days=4), dt.time(), UTC)
    snapshot, later = organisation.as_of(end), organisation.as_of(end + 2 * DAY)
    now, then = incident_versions(snapshot), incident_versions(later)
    numbers = sorted(now)
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        import_export(conn, str(write_export(snapshot, tmp_path / "export-1.csv", limit=30).path))
    with ServiceNowApi([api_record(now[n][-1]) for n in numbers[30:]], basic=("integration", PASSWORD)) as api:
        _api_batch(fresh_db, api, end)
        target = tmp_path / "dbt"
        _dbt(fresh_db, target, "seed")
        _dbt(fresh_db, target, "run", "--select", *MARTS)
        loaded = _one(
            fresh_db,
            "select count(distinct ticket_id) from (select ticket_id from raw.servicenow__tickets"
            " union all select ticket_id from raw.servicenow_export__tickets) as t",
        )[0]
        built = _one(fresh_db, "select count(*), count(distinct team_id), count(*) filter (where ticket_id <= %s)"
                     " from marts.fct_tickets", numbers[29])  # fmt: skip
        assert built[:2] == (loaded, 5) and loaded > 40 and built[2] > 25
        # An open ticket of each source that the next two days resolve or close.
        open_now = [t for (t,) in _all(fresh_db, "select ticket_id from marts.fct_tickets"
                                        " where status not in ('resolved', 'closed') order by 1")]  # fmt: skip
        moving = [t for t in open_now if then[t][-1].state in ("Resolved", "Closed")]
        from_export = next(t for t in moving if t <= numbers[29])
        from_api = next(t for t in moving if t > numbers[29])

        # Two days later: a later export of the same incidents, and the API's incidents updated since.
        with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
            import_export(conn, str(write_export(later, tmp_path / "export-2.csv", limit=30).path))
        for n in numbers[30:]:
            api.upsert(api_record(then[n][-1]))
        _api_batch(fresh_db, api, end + 2 * DAY)
        _dbt(fresh_db, target, "run", "--select", *MARTS)
    for ticket in (from_export, from_api):
        status, resolved_at = _one(
            fresh_db, "select status, resolved_at from marts.fct_tickets where ticket_id = %s", ticket
        )
        assert status == then[ticket][-1].state.lower() and resolved_at is not None, ticket
    # The export's events gave its incidents their stages; the API's incidents have no events.
    staged = _one(
        fresh_db, "select count(distinct ticket_id) from marts.fct_ticket_stages where ticket_id <= %s", numbers[29]
    )
    assert staged[0] == built[2]


def _all(url: str, sql: str, *args) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()
