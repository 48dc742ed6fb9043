"""The REST connector against the simulated survey API, a real HTTP server on loopback.

The API pages (by offset and by cursor), rate-limits (429 + Retry-After), fails (503), answers
slowly and drops connections; the connector retries with backoff and either loads every
record of the window or fails the batch, loading nothing and leaving the watermark where it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

import psycopg2
import pytest

from serviceloop.ingest import batch_id, ingest_batch
from serviceloop.pipeline import RunOptions, simulation_config
from serviceloop.rest import ApiRequestError, ApiUnavailableError
from serviceloop.simulated_api import Fault, SurveyApi, survey_records
from serviceloop.simulator import simulate, write_helpdesk
from serviceloop.sources import SOURCES, load_sources

UTC = dt.UTC
START = dt.date(2026, 6, 1)
DAYS = 10
END = dt.datetime(2026, 6, 11, tzinfo=UTC)  # START + DAYS
DAY = dt.timedelta(days=1)
TOKEN = "s3cr3t-survey-token-0123456789"

CONFIG = """
sources:
  survey_api:
    kind: rest_api
    connection: {env: SURVEY_API_URL}
    auth: bearer
    timeout: 1
    retries: 4
    backoff: 0.05
    max_backoff: 5
    page_size: 10
    overlap: 1d
    entities:
      surveys: &surveys
        endpoint: /api/v1/surveys
        pagination: offset
        window_params: {start: submitted_from, end: submitted_to}
        columns:
          survey_id: id
          ticket_id: ticket
          submitted_at: submitted
          csat: csat_score
          nps: nps_score
          complaint: is_complaint
          comment: text
  survey_cursor:
    kind: rest_api
    connection: {env: SURVEY_API_URL}
    auth: basic
    timeout: 1
    retries: 2
    backoff: 0.01
    page_size: 7
    entities:
      surveys:
        <<: *surveys
        endpoint: /api/v2/surveys
        pagination: cursor
        next_cursor: next_cursor
"""


@pytest.fixture(scope="module")
def simulation():
    return simulate(simulation_config(RunOptions(start=START, days=DAYS, tickets_per_day=40)))


@pytest.fixture
def sources(monkeypatch, tmp_path):
    path = tmp_path / "sources.yml"
    path.write_text(CONFIG)
    loaded = load_sources(path)
    for name, source in loaded.items():
        monkeypatch.setitem(SOURCES, name, source)
    return loaded


@pytest.fixture
def warehouse(fresh_db, simulation, sources):
    """A warehouse whose helpdesk tickets are loaded, so that surveys find their tickets."""
    write_helpdesk(simulation, fresh_db, as_of=END)
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        ingest_batch(conn, "helpdesk", "tickets", END - DAY, END, source_dsn=fresh_db)
        conn.commit()
    return fresh_db


@pytest.fixture
def api(simulation):
    with SurveyApi(survey_records(simulation.surveys), token=TOKEN) as server:
        yield server


def _url(api: SurveyApi, userinfo: str) -> str:
    return api.url.replace("http://", f"http://{userinfo}@")


def _ingest(url: str, api: SurveyApi, end: dt.datetime, source: str = "survey_api", userinfo: str = f":{TOKEN}"):
    with contextlib.closing(psycopg2.connect(url)) as conn:
        result = ingest_batch(conn, source, "surveys", end - DAY, end, source_dsn=_url(api, userinfo))
        conn.commit()
    return result


def _in_window(api: SurveyApi, start: dt.datetime | None, end: dt.datetime) -> int:
    query = {"submitted_to": end.isoformat()}
    if start is not None:
        query["submitted_from"] = start.isoformat()
    return len(api._select(query))


def _one(url: str, sql: str, *args):
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def _checksum(url: str, table: str, bid: str) -> tuple[int, str]:
    return _one(
        url,
        f"""
        select count(*), md5(coalesce(string_agg(r::text, '|' order by r::text), ''))
        from (select survey_id, ticket_id, submitted_at, csat, nps, complaint, comment, _batch_id
              from raw.{table} where _batch_id = %s) as r
        """,
        bid,
    )


def test_offset_pages_are_read_through_rate_limits_errors_timeouts_and_drops(warehouse, api, caplog):
    caplog.set_level(logging.DEBUG)
    api.fail(Fault.rate_limited(retry_after=1), Fault.unavailable(), Fault.slow(2.5), Fault.dropped())
    result = _ingest(warehouse, api, END - DAY)

    expected = _in_window(api, None, END - DAY)
    assert expected > 30, "several pages of 10"
    assert result.rows_read == expected
    assert result.rows_read == result.rows_loaded + result.rows_quarantined
    assert _one(warehouse, "select count(*) from raw.survey_api__surveys")[0] == result.rows_loaded
    # The mapping turned the API's names into the contract's.
    survey_id, ticket_id, complaint, csat = _one(
        warehouse,
        "select survey_id, ticket_id, complaint, csat from raw.survey_api__surveys order by survey_id limit 1",
    )
    record = api.record(survey_id)
    assert (ticket_id, complaint, csat) == (record["ticket"], record["is_complaint"], record["csat_score"])
    # The four faults were met and retried; the retry after the 429 waited what Retry-After asked.
    statuses = [r.status for r in api.requests]
    assert statuses[:2] == [429, 503] and statuses.count(200) >= expected // 10 + 1
    assert api.requests[1].at - api.requests[0].at >= 0.95
    assert len(api.requests) == (expected // 10 + 1) + 4
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 4 and any("HTTP 429" in m for m in retries) and any("within 1 s" in m for m in retries)
    assert TOKEN not in caplog.text


def test_a_rerun_loads_nothing_twice_and_a_late_update_shows_after_the_next_run(warehouse, api):
    _ingest(warehouse, api, END - DAY)
    second = _ingest(warehouse, api, END)
    # The second batch starts the overlap (one day) before the first ended.
    assert second.window_start == (END - 2 * DAY).isoformat()
    assert second.rows_read == _in_window(api, END - 2 * DAY, END)
    bid = batch_id("survey_api", "surveys", END)
    before = _checksum(warehouse, "survey_api__surveys", bid)
    total = _one(warehouse, "select count(*) from raw.survey_api__surveys")[0]
    rerun = _ingest(warehouse, api, END)
    assert (rerun.rows_read, rerun.rows_loaded) == (second.rows_read, second.rows_loaded)
    assert _checksum(warehouse, "survey_api__surveys", bid) == before
    assert _one(warehouse, "select count(*) from raw.survey_api__surveys")[0] == total

    # After that: a loaded survey's comment changes, and a survey stamped yesterday arrives late.
    (loaded_id,) = _one(
        warehouse,
        "select survey_id from raw.survey_api__surveys where submitted_at >= %s order by submitted_at desc limit 1",
        END - DAY,
    )
    changed = api.record(loaded_id)
    api.upsert({"id": changed["id"], "text": "Edited: the fix worked after all."})
    late = {**changed, "id": "SV-LATE-1", "submitted": (END - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    api.upsert(late)
    third = _ingest(warehouse, api, END + DAY)
    assert third.rows_read == _in_window(api, END - DAY, END + DAY)
    assert third.rows_read == third.rows_loaded + third.rows_quarantined
    latest = _one(
        warehouse,
        "select comment from raw.survey_api__surveys where survey_id = %s order by _loaded_at desc limit 1",
        changed["id"],
    )
    assert latest == ("Edited: the fix worked after all.",)
    assert _one(warehouse, "select count(*) from raw.survey_api__surveys where survey_id = 'SV-LATE-1'")[0] == 1


def test_cursor_pages_with_basic_auth_read_the_same_records(warehouse, simulation):
    with SurveyApi(survey_records(simulation.surveys), basic=("loop", "p@ss:word")) as api:
        result = _ingest(warehouse, api, END - DAY, source="survey_cursor", userinfo="loop:p%40ss%3Aword")
        expected = _in_window(api, None, END - DAY)
        assert result.rows_read == expected == result.rows_loaded + result.rows_quarantined
        cursors = [r.query.get("cursor") for r in api.requests]
        assert cursors[0] is None and all(cursors[1:]) and len(set(cursors[1:])) == len(cursors) - 1
        assert len(api.requests) == -(-expected // 7), "one request per page, none after the last cursor"


def _nothing_loaded(url: str, table: str, bid: str) -> None:
    assert _one(url, "select count(*) from ops.batches where batch_id = %s", bid)[0] == 0, "the watermark moved"
    assert _one(url, f"select count(*) from raw.{table} where _batch_id = %s", bid)[0] == 0
    assert _one(url, "select count(*) from pg_tables where schemaname = 'landing'")[0] == 0


def test_a_spent_retry_budget_fails_the_batch_and_the_next_run_catches_up(warehouse, api, caplog):
    caplog.set_level(logging.DEBUG)
    api.fail(*[Fault.rate_limited(retry_after=0)] * 2)
    api.fail_every_request = Fault.unavailable()
    with pytest.raises(ApiUnavailableError) as err:
        _ingest(warehouse, api, END - DAY)
    message = str(err.value)
    assert "survey_api: GET /api/v1/surveys?" in message and "gave up after 5 attempt(s)" in message
    assert "HTTP 503" in message and "nothing of this batch is loaded" in message
    assert TOKEN not in message and TOKEN not in caplog.text
    # After the 429s' Retry-After of 0, the backoff doubles: 0.05 x 2^2, then 0.05 x 2^3 seconds.
    times = [r.at for r in api.requests]
    assert len(times) == 5 and [r.status for r in api.requests] == [429, 429, 503, 503, 503]
    assert times[1] - times[0] < 0.19 and times[3] - times[2] >= 0.19 and times[4] - times[3] >= 0.39
    bid = batch_id("survey_api", "surveys", END - DAY)
    _nothing_loaded(warehouse, "survey_api__surveys", bid)

    # A server that asks for a longer wait than the source allows fails at once.
    api.fail_every_request = None
    api.fail(Fault.rate_limited(retry_after=3600))
    with pytest.raises(ApiUnavailableError, match="Retry-After 3600 s is longer than this source waits"):
        _ingest(warehouse, api, END - DAY)
    _nothing_loaded(warehouse, "survey_api__surveys", bid)

    # Once the API is back the same batch reads its whole window.
    result = _ingest(warehouse, api, END - DAY)
    assert result.window_start is None and result.rows_read == _in_window(api, None, END - DAY)


def test_refused_credentials_fail_at_once_without_showing_them(warehouse, api, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-9876543210"
    with pytest.raises(ApiRequestError) as err:
        _ingest(warehouse, api, END - DAY, userinfo=f":{wrong}")
    assert "HTTP 401" in str(err.value) and "check the credentials" in str(err.value)
    assert wrong not in str(err.value) and wrong not in caplog.text
    assert [r.status for r in api.requests] == [401], "an authorisation failure is not retried"
    _nothing_loaded(warehouse, "survey_api__surveys", batch_id("survey_api", "surveys", END - DAY))


def test_an_airflow_http_connection_becomes_the_base_url_and_token(api, sources):
    from airflow.sdk import Connection

    from serviceloop.rest import read_rest
    from serviceloop.tasks import _api_url

    host, port = api.url.removeprefix("http://").split(":")
    conn = Connection(conn_id="survey_tool", conn_type="http", host=host, port=int(port), schema="http", password=TOKEN)
    url = _api_url(conn)
    frames = list(read_rest(sources["survey_api"], "surveys", None, END - DAY, url))
    assert sum(len(f) for f in frames) == _in_window(api, None, END - DAY)
    assert {r.status for r in api.requests} == {200}
