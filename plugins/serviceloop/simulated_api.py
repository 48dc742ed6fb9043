"""The simulated survey tool's REST API: a real HTTP server on loopback.

It serves the simulator's surveys the way a survey tool's API would, under its own names
(``id``, ``ticket``, ``submitted``, ``csat_score``, ``nps_score``, ``is_complaint``,
``text``, ``updated``), filtered by submission time (``submitted_from`` <= submitted <
``submitted_to``) and ordered by submission time and id:

- ``GET /api/v1/surveys?offset=&limit=`` pages by offset: ``{"data": [...], "total": n}``;
- ``GET /api/v2/surveys?cursor=&limit=`` pages by an opaque cursor:
  ``{"data": [...], "next_cursor": "..." | null}``.

It checks a bearer token or basic credentials when given them, and misbehaves on demand, as
real APIs do: ``fail(...)`` queues faults that the next requests meet one by one (``429``
with ``Retry-After``, ``503``, a slow answer, a connection dropped halfway through the
body), and ``fail_every_request`` makes every request meet one. Every request is recorded
(``requests``) with its status and when it arrived, so a test can check what a client did.
``serviceloop survey-api`` serves the simulated organisation's surveys with it.

``LoopbackApi`` is the server without the survey tool's routes: the faults, the credentials
and the request log; ``serviceloop.simulated_servicenow`` serves ServiceNow's Table API on it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Fault:
    """What one request meets: ``status`` (with ``retry_after``), ``slow`` (``delay`` s) or ``drop``."""

    kind: str
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0

    @classmethod
    def rate_limited(cls, retry_after: float = 1) -> Fault:
        return cls("status", 429, retry_after=f"{retry_after:g}")

    @classmethod
    def unavailable(cls, retry_after: float | None = None) -> Fault:
        return cls("status", 503, retry_after=None if retry_after is None else f"{retry_after:g}")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        return cls("slow", delay=delay)

    @classmethod
    def dropped(cls) -> Fault:
        return cls("drop")


@dataclass
class Request:
    """A request as it arrived (``at``: monotonic seconds); ``status`` 0 until answered, and for a drop."""

    path: str
    query: dict[str, str]
    at: float
    status: int = 0


def survey_records(surveys) -> list[dict[str, Any]]:
    """The simulator's surveys (a DataFrame of the contract's survey fields) in the API's own names."""
    import pandas as pd

    out = []
    for r in surveys.itertuples(index=False):
        at = pd.Timestamp(r.submitted_at)
        stamp = (at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append(
            {
                "id": r.survey_id,
                "ticket": r.ticket_id,
                "submitted": stamp,
                "csat_score": None if pd.isna(r.csat) else int(r.csat),
                "nps_score": None if pd.isna(r.nps) else int(r.nps),
                "is_complaint": bool(r.complaint),
                "text": r.comment if isinstance(r.comment, str) else None,
                "updated": stamp,
            }
        )
    return out


def _parse_ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


class LoopbackApi:
    """A JSON API on 127.0.0.1 and a random port, in a background thread; a context manager.

    Subclasses answer ``route(path, query)`` with (status, body, headers); this class meets
    the queued faults first, then checks the credentials, and records every request.
    """

    name = "api"

    def __init__(
        self,
        *,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self._lock = threading.Lock()
        self.token = token
        self.basic = basic
        self.faults: deque[Fault] = deque()
        self.fail_every_request: Fault | None = None
        self.requests: list[Request] = []
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail(self, *faults: Fault) -> None:
        """The next requests meet these faults, one each, in order."""
        with self._lock:
            self.faults.extend(faults)

    # --- what subclasses answer ----------------------------------------------------------

    def route(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def unauthorised(self) -> tuple[int, Any, dict[str, str]]:
        return 401, {"error": "unauthorised"}, {"WWW-Authenticate": "Bearer"}

    def unavailable(self, status: int) -> Any:
        return {"error": "try again later"}

    # --- serving ---------------------------------------------------------------------------

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self.faults:
                return self.faults.popleft()
            return self.fail_every_request

    def _authorised(self, header: str | None) -> bool:
        if self.token is not None:
            return header == f"Bearer {self.token}"
        if self.basic is not None:
            expected = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            return header == f"Basic {expected}"
        return True

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self):
                # A client that gave up (a timeout) has closed its end: nothing to answer.
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
                log.debug(f"{api.name}: " + format, *args)

            def do_GET(self):  # noqa: N802 - the stdlib's name
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                request = Request(parts.path, query, time.monotonic())
                with api._lock:
                    api.requests.append(request)
                request.status = self._serve(parts.path, query)

            def _serve(self, path: str, query: dict[str, str]) -> int:
                fault = api._next_fault()
                if fault is not None and fault.kind == "slow":
                    time.sleep(fault.delay)
                elif fault is not None and fault.kind == "status":
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    return self._json(fault.status, api.unavailable(fault.status), headers)
                if not api._authorised(self.headers.get("Authorization")):
                    return self._json(*api.unauthorised())
                status, body, headers = api.route(path, query)
                if status == 200 and fault is not None and fault.kind == "drop":
                    return self._drop(body)
                return self._json(status, body, headers)

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> int:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
                return status

            def _drop(self, body: Any) -> int:
                """Announce the whole body, send half of it, and hang up."""
                payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return 0

        return Handler


class SurveyApi(LoopbackApi):
    """The survey API on 127.0.0.1 and a random port, in a background thread; a context manager."""

    name = "survey-api"

    def __init__(self, records: list[dict[str, Any]], **kwargs):
        super().__init__(**kwargs)
        self._records = {r["id"]: dict(r) for r in records}

    def upsert(self, record: dict[str, Any]) -> None:
        """A survey submitted or changed in the tool."""
        with self._lock:
            self._records[record["id"]] = {**self._records.get(record["id"], {}), **record}

    def record(self, survey_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._records[survey_id])

    # --- serving ---------------------------------------------------------------------------

    def _select(self, query: dict[str, str]) -> list[dict[str, Any]]:
        start = _parse_ts(query["submitted_from"]) if "submitted_from" in query else None
        end = _parse_ts(query["submitted_to"]) if "submitted_to" in query else None
        with self._lock:
            rows = [dict(r) for r in self._records.values()]
        chosen = []
        for r in rows:
            at = _parse_ts(r["submitted"])
            if (start is None or at >= start) and (end is None or at < end):
                chosen.append(r)
        return sorted(chosen, key=lambda r: (r["submitted"], r["id"]))

    def route(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        try:
            limit = min(int(query.get("limit", "100")), MAX_LIMIT)
            rows = self._select(query)
            if path == "/api/v1/surveys":
                offset = int(query.get("offset", "0"))
                return 200, {"data": rows[offset : offset + limit], "total": len(rows), "offset": offset}, {}
            if path == "/api/v2/surveys":
                offset = int(base64.urlsafe_b64decode(query["cursor"]).decode()) if "cursor" in query else 0
                more = offset + limit < len(rows)
                cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else None
                return 200, {"data": rows[offset : offset + limit], "next_cursor": cursor}, {}
            return 404, {"error": f"no such endpoint {path}"}, {}
        except (ValueError, KeyError) as exc:
            return 400, {"error": f"bad request: {exc}"}, {}


def serve(days: int = 120, tickets_per_day: int = 200, seed: int = 7, port: int = 8765, token: str | None = None):
    """Serve the simulated organisation's surveys until interrupted (``serviceloop survey-api``)."""
    from serviceloop.pipeline import RunOptions, simulation_config
    from serviceloop.simulator import simulate

    options = RunOptions(seed=seed, days=days, tickets_per_day=tickets_per_day)
    data = simulate(simulation_config(options))
    api = SurveyApi(survey_records(data.surveys), token=token, port=port)
    with api:
        print(f"survey API on {api.url}/api/v1/surveys (offset) and /api/v2/surveys (cursor); Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
