"""Read records from an HTTP API that pages through JSON (a survey tool, a ticketing system).

A ``rest_api`` source (``sources.yml``) names, per entity, an endpoint, the query parameters
that carry the extraction window, its pagination (``offset``: ``offset``/``limit`` until a
short page; ``cursor``: the response's next cursor until there is none) and where the records
are in the response. Each record is mapped onto the contract like a SQL row (``columns``,
``constants``, ``values``) and yielded in the canonical text form, with ``_origin`` saying
which request returned it; a record that is not a JSON object is kept as a parse error.

The connection is the API's base URL with the credentials in its user-info part (resolved
from an Airflow connection or an environment variable at task time). They go into a header
only: the base URL that requests, logs and errors show carries no credentials.

Every request has a timeout and is retried on a timeout, a dropped connection, 429 and 5xx,
waiting ``backoff`` x 2^n seconds (capped at ``max_backoff``), or what ``Retry-After`` asks
on 429 and 503. When the retry budget is spent, or the server asks to wait longer than
``max_backoff``, ``ApiUnavailableError`` fails the batch: nothing of it is loaded and the
watermark does not move, so the next run reads the window again.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import pandas as pd

from serviceloop.contract import ENTITIES, Entity
from serviceloop.extract import ORIGIN, PARSE_ERROR, ContractError, _json_text, map_to_contract
from serviceloop.sources import EntityMapping, RestApiSource

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
USER_AGENT = "serviceloop"


class ApiUnavailableError(RuntimeError):
    """The API did not answer within the retry budget: the batch fails and loads nothing."""


class ApiRequestError(RuntimeError):
    """The API refused a request in a way retrying cannot fix (401, 403, 404, 400 ...)."""


@dataclass(frozen=True)
class Credentials:
    base_url: str
    login: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"Credentials(base_url={self.base_url!r}, login={self.login!r}, password=***)"


def split_credentials(url: str) -> Credentials:
    """The base URL without its user-info, and the login and password that were in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the API connection must be an http(s) URL with a host")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    login = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return Credentials(base, login, password)


@dataclass
class ApiClient:
    """GETs JSON from one API with timeouts, retries and backoff; the credentials in a header."""

    credentials: Credentials
    auth: str = "bearer"
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    name: str = "api"
    _session: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import requests

        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        session.headers["Accept"] = "application/json"
        c = self.credentials
        if self.auth == "bearer":
            if not c.password:
                raise ValueError(f"{self.name}: bearer auth needs a token (the connection's password)")
            session.headers["Authorization"] = f"Bearer {c.password}"
        elif self.auth == "basic":
            if not c.login:
                raise ValueError(f"{self.name}: basic auth needs a login and a password")
            session.auth = (c.login, c.password or "")
        # Credentials come from the connection only, never from ~/.netrc.
        session.trust_env = False
        self._session = session

    def close(self) -> None:
        self._session.close()

    def get(self, path: str, params: dict[str, str]) -> Any:
        """The JSON body of ``GET path?params``, retried as the source allows."""
        return self.get_with_headers(path, params)[0]

    def get_with_headers(self, path: str, params: dict[str, str]) -> tuple[Any, Any]:
        """The JSON body and the response headers of ``GET path?params``, retried as the source allows."""
        import requests

        url = self.credentials.base_url + path
        where = f"{self.name}: GET {path}?{urlencode(params)}"
        attempts = self.retries + 1
        problem = ""
        for attempt in range(attempts):
            wait = min(self.backoff * 2**attempt, self.max_backoff)
            try:
                resp = self._session.get(url, params=params, timeout=self.timeout)
                if resp.status_code == 200:
                    return resp.json(), resp.headers
            except requests.Timeout:
                problem = f"no answer within {self.timeout:g} s"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                problem = f"connection failed ({type(exc).__name__})"
            except requests.JSONDecodeError:
                problem = "the response is not valid JSON (cut off?)"
            else:
                if resp.status_code not in RETRY_STATUSES:
                    raise ApiRequestError(f"{where}: HTTP {resp.status_code} {resp.reason}{_hint(resp.status_code)}")
                problem = f"HTTP {resp.status_code} {resp.reason}"
                asked = (
                    retry_after(resp.headers.get("Retry-After")) if resp.status_code in RETRY_AFTER_STATUSES else None
                )
                if asked is not None:
                    if asked > self.max_backoff:
                        raise ApiUnavailableError(
                            f"{where}: {problem}, Retry-After {asked:g} s is longer than this source waits"
                            f" (max_backoff {self.max_backoff:g} s); the next run reads this window again"
                        )
                    wait = asked
            if attempt + 1 < attempts:
                log.warning("%s: %s; retry %d of %d in %.2f s", where, problem, attempt + 1, self.retries, wait)
                self.sleep(wait)
        raise ApiUnavailableError(
            f"{where}: gave up after {attempts} attempt(s), the last: {problem}; nothing of this batch is loaded"
            " and the next run reads this window again"
        )


def _hint(status: int) -> str:
    if status in (401, 403):
        return " (check the credentials of the source's connection)"
    if status == 404:
        return " (check the source's endpoint and the connection's base URL)"
    return ""


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _dig(body: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        if not isinstance(body, dict):
            return None
        body = body.get(part)
    return body


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pages(client: ApiClient, mapping: EntityMapping, params: dict[str, str], page_size: int) -> Iterator[tuple]:
    """(records, description of the request) per page, following the mapping's pagination."""
    limit = mapping.page_params["limit"]
    if mapping.pagination == "offset":
        offset = 0
        while True:
            query = {**params, mapping.page_params["offset"]: str(offset), limit: str(page_size)}
            records = _records(client.get(mapping.endpoint, query), mapping)
            yield records, f"{mapping.endpoint} offset {offset}"
            if len(records) < page_size:
                return
            offset += len(records)
    cursor, seen = None, set()
    while True:
        query = {**params, limit: str(page_size)}
        if cursor is not None:
            query[mapping.page_params["cursor"]] = cursor
        body = client.get(mapping.endpoint, query)
        yield _records(body, mapping), f"{mapping.endpoint} cursor {cursor or '(first)'}"
        cursor = _dig(body, mapping.next_cursor)
        if cursor in (None, ""):
            return
        cursor = str(cursor)
        if cursor in seen:
            raise ContractError(f"{client.name}: {mapping.endpoint} returned cursor {cursor!r} a second time")
        seen.add(cursor)


def _records(body: Any, mapping: EntityMapping) -> list:
    records = _dig(body, mapping.records)
    if not isinstance(records, list):
        raise ContractError(
            f"{mapping.endpoint}: no list of records at {mapping.records or 'the top level'!r} of the response"
        )
    return records


def records_frame(records: list, origin: str, entity: Entity, mapping: EntityMapping) -> pd.DataFrame:
    """One page's records in the canonical text form, with ``_origin`` and ``_parse_error``."""
    fields = [f for f in entity.columns if f not in mapping.constants]
    rows, origins, errors = [], [], []
    for i, record in enumerate(records, start=1):
        origins.append(f"{origin} #{i}")
        if isinstance(record, dict):
            rows.append([_json_text(_dig(record, mapping.source_column(f))) for f in fields])
            errors.append(None)
        else:
            rows.append([None] * len(fields))
            errors.append(f"{origin} #{i}: not a JSON object: {str(record)[:200]!r}")
    frame = pd.DataFrame.from_records(rows, columns=fields)
    frame[ORIGIN] = origins
    frame[PARSE_ERROR] = pd.Series(errors, index=frame.index, dtype=object)
    return map_to_contract(frame, entity, mapping)


def read_rest(
    source: RestApiSource,
    entity_name: str,
    window_start: dt.datetime | None,
    window_end: dt.datetime,
    connection: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[pd.DataFrame]:
    """Page through the entity's endpoint for [window_start, window_end), one frame per page."""
    entity = ENTITIES[entity_name]
    mapping = source.mappings[entity_name]
    client = ApiClient(
        split_credentials(connection), auth=source.auth, timeout=source.timeout, retries=source.retries,
        backoff=source.backoff, max_backoff=source.max_backoff, sleep=sleep, name=source.name,
    )  # fmt: skip
    start_param, end_param = mapping.window_params
    params = {end_param: _iso(window_end)}
    if window_start is not None and start_param:
        params[start_param] = _iso(window_start)
    try:
        for records, origin in pages(client, mapping, params, source.page_size):
            if records:
                yield records_frame(records, origin, entity, mapping)
    finally:
        client.close()
