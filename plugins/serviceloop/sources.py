"""The source systems ServiceLoop pulls from, declared in ``sources.yml``, and which entity lives where.

One YAML file (``sources.yml`` at the repository root; ``SERVICELOOP_SOURCES_FILE`` points
elsewhere) declares every source: its kind (``sql``, ``file_drop``, ``rest_api``,
``servicenow`` for ServiceNow's Table API, ``servicenow_csv`` for its incident exports), how to
reach it (an Airflow connection id or an environment variable, resolved at task time), its
schedule and overlap window, and for each contract entity it holds, where the records are
(a table, an endpoint, a folder) and how the source's names map onto the contract's fields.

The file is validated when it is loaded. Anything wrong stops the load with an error naming
the file, the key and what is wrong: an unknown key, a value of the wrong type, an entity or
field the contract does not have, and every value that becomes an SQL identifier (tables,
columns, source names) must be a plain identifier, so configuration cannot inject SQL.

Kept free of heavy imports: DAG files read it at parse time to lay out one task per source
and entity. Each source reads its records with ``read(...)``, which imports its reader
(``serviceloop.extract``, ``serviceloop.rest``, ``serviceloop.servicenow``) only when called.

A ``servicenow_csv`` source is not scheduled: its exports are loaded when someone runs
``serviceloop import servicenow-csv PATH``. It still has raw tables, validation and quarantine
like every source, but no ingest task and no asset (``SCHEDULED`` leaves it out).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serviceloop.contract import ENTITIES, Entity
from serviceloop.settings import REPO_ROOT

# What a file drop can hold (CSV in UTF-8, UTF-8 with BOM or GBK; JSON Lines; Parquet), and
# how long a file must stay unchanged to count as completely written.
DROP_FORMATS = ("csv", "jsonl", "parquet")
DROP_SETTLE = dt.timedelta(seconds=2)
# The ingest DAG's own schedule; a source on another one gets a DAG of its own.
DEFAULT_SCHEDULE = "0 0 * * *"
KINDS = ("sql", "file_drop", "rest_api", "servicenow", "servicenow_csv")
# How a ServiceNow CSV export writes its date-times (day-first is what the sample exports use).
DATE_ORDERS = ("dmy", "mdy", "ymd")

# A name that becomes part of an SQL identifier or a task id: raw.<source>__<entity>.
SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
# One SQL identifier part: letters, digits, underscores; nothing to quote, nothing to inject.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
JSON_PATH = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
ENDPOINT = re.compile(r"/[A-Za-z0-9_\-./~]*")
DURATION = re.compile(r"(\d+)\s*([smhd])")
CRON = re.compile(r"@(hourly|daily|weekly|monthly|yearly)|(\S+\s+){4}\S+")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# A drop's folder: a name under the state folder's drops/, or an fsspec URL (protocol://path).
DROP_FOLDER = re.compile(r"[A-Za-z0-9_\-.]+|[a-z][a-z0-9+.\-]*://[^\s]*")


class SourcesConfigError(ValueError):
    """``sources.yml`` says something that cannot be right; the message names the file and the key."""


@dataclass(frozen=True)
class ConnectionRef:
    """Where a source's connection comes from: an Airflow connection id, or an environment variable.

    The environment variable holds a URL: an SQLAlchemy URL for ``sql`` sources, the API's base
    URL for ``rest_api`` sources (credentials in its user-info part, ``https://:TOKEN@host/``
    for a bearer token, ``https://user:password@host/`` for basic auth).
    """

    conn_id: str | None = None
    env: str | None = None

    def describe(self) -> str:
        return f"Airflow connection {self.conn_id}" if self.conn_id else f"environment variable {self.env}"


@dataclass(frozen=True)
class EntityMapping:
    """How one entity's records sit in a source, and how its names map onto the contract.

    ``columns`` maps a contract field to the source's column (or JSON key) holding it; a field
    not named there is read from the column of its own name. ``constants`` gives a field one
    value for every record (``source_system: osticket``). ``values`` maps the source's values
    of a field onto the contract's vocabulary (``priority: {Emergency: P1}``); a value without a
    mapping is kept as it is, for validation to judge. ``watermark`` is the source column the
    extraction window filters on (by default the one mapped to the entity's watermark field).
    """

    entity: str
    table: str | None = None
    endpoint: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    watermark: str | None = None
    # rest_api only
    records: str = "data"
    pagination: str = "offset"
    window_params: tuple[str | None, str] = ("since", "until")
    page_params: dict[str, str] = field(default_factory=dict)
    next_cursor: str = "next_cursor"

    def source_column(self, field_name: str) -> str:
        return self.columns.get(field_name, field_name)

    @property
    def watermark_column(self) -> str:
        return self.watermark or self.source_column(ENTITIES[self.entity].watermark)


@dataclass(frozen=True)
class _Source:
    name: str
    mappings: dict[str, EntityMapping]
    overlap: dt.timedelta
    schedule: str = DEFAULT_SCHEDULE
    enabled: bool = True
    connection: ConnectionRef | None = None

    @property
    def entities(self) -> list[Entity]:
        return [ENTITIES[e] for e in self.mappings]

    @property
    def conn_id(self) -> str | None:
        return self.connection.conn_id if self.connection else None

    # An ingest task per entity on the source's schedule (False: loaded on demand only).
    scheduled = True


@dataclass(frozen=True)
class SqlSource(_Source):
    """A helpdesk application's own database (any SQLAlchemy URL), read table by table."""

    kind = "sql"

    @property
    def tables(self) -> dict[str, str]:
        return {e: m.table for e, m in self.mappings.items()}

    def read(self, entity_name: str, window_start, window_end, *, connection: str | None = None, **_) -> Iterator:
        """Stream the entity's records whose watermark is in [window_start, window_end) from the database at
        ``connection`` (an SQLAlchemy URL, or a libpq DSN)."""
        from serviceloop.extract import read_sql

        if connection is None:
            raise ValueError(f"source {self.name} is a database: give its connection")
        mapping = self.mappings[entity_name]
        return read_sql(connection, mapping.table, ENTITIES[entity_name], window_start, window_end, mapping=mapping)

    def stream(self, entity_name: str, window_start, window_end, *, connection: str | None = None, **_):
        """The same records as ``read``, as canonical CSV text the batch ``COPY``s into its landing
        table without pandas (``serviceloop.sqlstream``); None when the table's column types need
        ``read``."""
        from serviceloop.sqlstream import stream_sql

        if connection is None:
            raise ValueError(f"source {self.name} is a database: give its connection")
        mapping = self.mappings[entity_name]
        return stream_sql(connection, mapping.table, ENTITIES[entity_name], window_start, window_end, mapping=mapping)


@dataclass(frozen=True)
class FileDropSource(_Source):
    """A folder a tool exports files into, one file per day (``<prefix>_YYYYMMDD.<format>``).

    ``folder`` is relative to the state folder's ``drops/``, or an fsspec URL (``s3://bucket/x``,
    ``memory://drops``, ``file:///srv/drops``) read with fsspec; ``formats`` are the suffixes read (a
    subset of ``DROP_FORMATS``); a file changed less than ``settle`` ago may still be being
    written and is checked again before it is read.
    """

    kind = "file_drop"
    folder: str = ""
    prefix: str = ""
    formats: tuple[str, ...] = DROP_FORMATS
    settle: dt.timedelta = DROP_SETTLE

    @property
    def entity_name(self) -> str:
        return next(iter(self.mappings))

    def read(self, entity_name: str, window_start, window_end, *, drop_root=None, warehouse=None, batch_id=None, **_):
        """The records of the drop's daily files in the window; the manifest lives in ``warehouse``'s transaction."""
        from serviceloop.extract import DropManifest, read_drop

        if drop_root is None and "://" not in self.folder:
            raise ValueError(f"source {self.name} is a file drop: give its folder")
        manifest = DropManifest(warehouse, self.name, batch_id) if warehouse is not None else None
        folder = self.folder if "://" in self.folder else Path(drop_root) / self.folder
        return read_drop(
            folder, self.prefix, ENTITIES[entity_name], window_start, window_end,
            formats=self.formats, settle=self.settle, manifest=manifest,
        )  # fmt: skip


@dataclass(frozen=True)
class RestApiSource(_Source):
    """An HTTP API (a survey tool, a ticketing system) that pages through JSON records.

    ``auth`` is how the connection's credentials are sent (``bearer``: the password as a bearer
    token; ``basic``; ``none``). Each request times out after ``timeout`` seconds and is retried
    ``retries`` times on a timeout, a dropped connection, 429 or 5xx, waiting ``backoff`` x 2^n
    seconds (at most ``max_backoff``) or what ``Retry-After`` asks, if that is not longer.
    """

    kind = "rest_api"
    auth: str = "bearer"
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    page_size: int = 100

    def read(self, entity_name: str, window_start, window_end, *, connection: str | None = None, **_) -> Iterator:
        """Page through the entity's endpoint for the window, from the API at ``connection`` (its base URL)."""
        from serviceloop.rest import read_rest

        if connection is None:
            raise ValueError(f"source {self.name} is an API: give its base URL")
        return read_rest(self, entity_name, window_start, window_end, connection)


@dataclass(frozen=True)
class ServiceNowSource(_Source):
    """ServiceNow's Table API: ``GET /api/now/table/<table>`` paged by offset, filtered on ``sys_updated_on``.

    ``table`` is the incident table (or one extending it); ``query`` an encoded query that every
    request adds to the window (``active=true``, ``assignment_group.nameSTARTSWITHService``). The
    connection, auth and retry settings are a ``rest_api`` source's; incident fields map onto the
    contract as ``serviceloop.servicenow`` describes, ``columns`` and ``values`` overriding it.
    """

    kind = "servicenow"
    auth: str = "basic"
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    page_size: int = 1000
    table: str = "incident"
    query: str = ""

    def read(self, entity_name: str, window_start, window_end, *, connection: str | None = None, **_) -> Iterator:
        """The incidents updated in [window_start, window_end), from the instance at ``connection`` (its base URL)."""
        from serviceloop.servicenow import read_table_api

        if connection is None:
            raise ValueError(f"source {self.name} is a ServiceNow instance: give its base URL")
        return read_table_api(self, entity_name, window_start, window_end, connection)


@dataclass(frozen=True)
class ServiceNowCsvSource(_Source):
    """ServiceNow incident exports (CSV), loaded by ``serviceloop import servicenow-csv PATH``.

    Plain exports (one row per incident) and event-log exports (one row per update of an
    incident) alike: ``tickets`` takes each incident's latest row, ``ticket_events`` the
    changes between consecutive rows. ``timezone`` is the zone the export's date-times are in
    (the exporting user's), ``date_order`` how they are written (``dmy``: ``29/2/2016 01:16``).
    """

    kind = "servicenow_csv"
    scheduled = False
    checks_batch_health = False
    timezone: str = "UTC"
    date_order: str = "dmy"

    def read(self, entity_name: str, window_start, window_end, *, connection=None, warehouse=None, **_) -> Iterator:
        """The export file at ``connection`` (a path or fsspec URL) as records of ``entity_name``."""
        from serviceloop.servicenow import read_export

        if connection is None:
            raise ValueError(f"source {self.name} holds ServiceNow exports: give the export's path")
        return read_export(self, entity_name, connection)


Source = SqlSource | FileDropSource | RestApiSource | ServiceNowSource | ServiceNowCsvSource


def raw_table(source: str, entity: str) -> str:
    return f"{source}__{entity}"


# --- loading and validating ---------------------------------------------------------------


def sources_file() -> Path:
    value = os.environ.get("SERVICELOOP_SOURCES_FILE")
    return Path(value).resolve() if value else REPO_ROOT / "sources.yml"


class _Checker:
    """Reads one part of the file, raising errors that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, what: str) -> SourcesConfigError:
        return SourcesConfigError(f"{self.path}: {key or '(top level)'}: {what}")

    def mapping(self, value: Any, key: str, allowed: set[str] | None = None, required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_kind(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"key {k!r} is not a string")
            if allowed is not None and k not in allowed:
                raise self.fail(
                    f"{key}.{k}" if key else k, f"unknown key (expected one of: {', '.join(sorted(allowed))})"
                )
        for k in required:
            if k not in value:
                raise self.fail(key, f"missing key {k!r}")
        return value

    def text(self, value: Any, key: str, pattern: re.Pattern | None = None, what: str = "") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {_kind(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value!r} is not {what}")
        return value

    def identifier(self, value: Any, key: str, qualified: bool = False) -> str:
        text = self.text(value, key)
        parts = text.split(".")
        if len(parts) > (2 if qualified else 1) or not all(IDENTIFIER.fullmatch(p) for p in parts):
            shape = "a safe SQL identifier ([A-Za-z_][A-Za-z0-9_]*" + (
                ", optionally schema.table)" if qualified else ")"
            )
            raise self.fail(key, f"{text!r} is not {shape}")
        return text

    def number(self, value: Any, key: str, *, integer: bool = False, minimum: float = 0) -> float:
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            raise self.fail(key, f"expected {'an integer' if integer else 'a number'}, got {_kind(value)}")
        if value < minimum:
            raise self.fail(key, f"{value} is below {minimum}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def duration(self, value: Any, key: str) -> dt.timedelta:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return dt.timedelta(seconds=value)
        m = DURATION.fullmatch(value) if isinstance(value, str) else None
        if m is None:
            raise self.fail(key, f"expected a duration like 2d, 12h, 30m or 45s, got {value!r}")
        return dt.timedelta(**{UNITS[m.group(2)]: int(m.group(1))})

    def scalar(self, value: Any, key: str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str):
            return str(value)
        raise self.fail(key, f"expected a string, number or boolean, got {_kind(value)}")

    def field_name(self, entity: Entity, name: Any, key: str) -> str:
        if name not in entity.columns:
            raise self.fail(
                key, f"{name!r} is not a field of entity {entity.name} (fields: {', '.join(entity.columns)})"
            )
        return name


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


COMMON_KEYS = {"kind", "enabled", "connection", "schedule", "overlap", "entities", "description"}
API_KEYS = {"auth", "timeout", "retries", "backoff", "max_backoff", "page_size"}
KIND_KEYS = {
    "sql": set(),
    "file_drop": {"folder", "prefix", "formats", "settle"},
    "rest_api": API_KEYS,
    "servicenow": API_KEYS | {"table", "query"},
    "servicenow_csv": {"timezone", "date_order"},
}
MAPPING_KEYS = {"columns", "constants", "values", "watermark"}
ENTITY_KEYS = {
    "sql": {"table"} | MAPPING_KEYS,
    "file_drop": set(),
    "rest_api": {"endpoint", "records", "pagination", "window_params", "page_params", "next_cursor"} | MAPPING_KEYS,
    # ServiceNow's incident columns map onto the contract by default (serviceloop.servicenow).
    "servicenow": MAPPING_KEYS - {"watermark"},
    "servicenow_csv": MAPPING_KEYS - {"watermark"},
}
# The entities a ServiceNow source can give: the Table API reads incidents; an export also
# gives the lifecycle events between an incident's consecutive rows.
SERVICENOW_ENTITIES = {"servicenow": ("tickets",), "servicenow_csv": ("tickets", "ticket_events")}
DEFAULT_OVERLAP = {
    "sql": dt.timedelta(days=2), "file_drop": dt.timedelta(days=1), "rest_api": dt.timedelta(days=1),
    "servicenow": dt.timedelta(days=1), "servicenow_csv": dt.timedelta(0),
}  # fmt: skip
PAGE_PARAMS = {"offset": {"offset": "offset", "limit": "limit"}, "cursor": {"cursor": "cursor", "limit": "limit"}}


def load_sources(path: Path | None = None) -> dict[str, Source]:
    """Every source the file declares, enabled or not, validated."""
    path = Path(path) if path is not None else sources_file()
    check = _Checker(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourcesConfigError(f"{path}: no such file (set SERVICELOOP_SOURCES_FILE to the sources file)") from None
    except yaml.YAMLError as exc:
        raise SourcesConfigError(f"{path}: not valid YAML: {exc}") from None
    doc = check.mapping(doc, "", {"sources"}, ("sources",))
    declared = check.mapping(doc["sources"], "sources")
    if not declared:
        raise check.fail("sources", "no source declared")
    out: dict[str, Source] = {}
    for name, spec in declared.items():
        key = f"sources.{name}"
        if not SOURCE_NAME.fullmatch(name) or "__" in name:
            raise check.fail(key, "a source name is lowercase letters, digits and single underscores (at most 40)")
        out[name] = _source(check, name, spec, key)
    return out


def _source(check: _Checker, name: str, spec: Any, key: str) -> Source:
    kind = check.mapping(spec, key).get("kind")
    if kind not in KINDS:
        raise check.fail(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got {_kind(kind)}")
    check.mapping(spec, key, COMMON_KEYS | KIND_KEYS[kind], ("kind", "entities"))
    common: dict[str, Any] = {
        "name": name,
        "enabled": check.boolean(spec.get("enabled", True), f"{key}.enabled"),
        "overlap": check.duration(spec["overlap"], f"{key}.overlap") if "overlap" in spec else DEFAULT_OVERLAP[kind],
        "schedule": check.text(spec.get("schedule", DEFAULT_SCHEDULE), f"{key}.schedule", CRON, "a cron expression"),
        "mappings": _mappings(check, kind, spec["entities"], f"{key}.entities"),
    }
    if kind in SERVICENOW_ENTITIES:
        extra = [e for e in common["mappings"] if e not in SERVICENOW_ENTITIES[kind]]
        if extra:
            raise check.fail(
                f"{key}.entities.{extra[0]}",
                f"a {kind} source gives {' and '.join(SERVICENOW_ENTITIES[kind])} only",
            )
        if "tickets" not in common["mappings"]:
            raise check.fail(f"{key}.entities", "a ServiceNow source gives tickets: declare them")
    if kind == "servicenow_csv":
        return _servicenow_csv(check, spec, key, common)
    if kind != "file_drop":
        if "connection" not in spec:
            raise check.fail(key, "missing key 'connection'")
        common["connection"] = _connection(check, spec["connection"], f"{key}.connection")
    if kind == "sql":
        return SqlSource(**common)
    if kind == "file_drop":
        if len(common["mappings"]) != 1:
            raise check.fail(f"{key}.entities", "a file drop holds exactly one entity")
        formats = spec.get("formats", list(DROP_FORMATS))
        if not isinstance(formats, list) or not formats or any(f not in DROP_FORMATS for f in formats):
            raise check.fail(f"{key}.formats", f"expected a list of {', '.join(DROP_FORMATS)}, got {_kind(formats)}")
        return FileDropSource(
            **common,
            folder=check.text(
                spec.get("folder", name), f"{key}.folder", DROP_FOLDER, "a folder name or an fsspec URL (s3://bucket/x)"
            ),
            prefix=check.identifier(spec.get("prefix", name), f"{key}.prefix"),
            formats=tuple(formats),
            settle=check.duration(spec["settle"], f"{key}.settle") if "settle" in spec else DROP_SETTLE,
        )
    if kind == "servicenow":
        return ServiceNowSource(
            **common,
            **_api_settings(
                check, spec, key, default_auth="basic", default_page=1000, allowed_auth=("basic", "bearer")
            ),
            table=check.identifier(spec.get("table", "incident"), f"{key}.table"),
            query=_encoded_query(check, spec.get("query", ""), f"{key}.query"),
        )
    return RestApiSource(**common, **_api_settings(check, spec, key))


def _api_settings(
    check: _Checker, spec: dict, key: str, *, default_auth: str = "bearer", default_page: int = 100,
    allowed_auth: tuple[str, ...] = ("bearer", "basic", "none"),
) -> dict[str, Any]:  # fmt: skip
    auth = spec.get("auth", default_auth)
    if auth not in allowed_auth:
        raise check.fail(
            f"{key}.auth", f"expected {', '.join(allowed_auth[:-1])} or {allowed_auth[-1]}, got {_kind(auth)}"
        )
    return {
        "auth": auth,
        "timeout": check.number(spec.get("timeout", 30), f"{key}.timeout", minimum=0.001),
        "retries": int(check.number(spec.get("retries", 5), f"{key}.retries", integer=True)),
        "backoff": check.number(spec.get("backoff", 1), f"{key}.backoff"),
        "max_backoff": check.number(spec.get("max_backoff", 60), f"{key}.max_backoff"),
        "page_size": int(
            check.number(spec.get("page_size", default_page), f"{key}.page_size", integer=True, minimum=1)
        ),
    }


# An encoded query's conditions: field, operator, value, joined by ^ (no ORDERBY: the reader orders).
ENCODED_QUERY = re.compile(r"[^\x00-\x1f]*")


def _encoded_query(check: _Checker, value: Any, key: str) -> str:
    if value == "":
        return ""
    text = check.text(value, key, ENCODED_QUERY, "an encoded query on one line")
    if "ORDERBY" in text or "^NQ" in text:
        raise check.fail(key, "ORDERBY and ^NQ are the reader's: give conditions only (field=value^field2>value2)")
    return text


def _servicenow_csv(check: _Checker, spec: dict, key: str, common: dict) -> ServiceNowCsvSource:
    import zoneinfo

    if "connection" in spec:
        raise check.fail(f"{key}.connection", "a servicenow_csv source reads the files it is given: no connection")
    zone = check.text(spec.get("timezone", "UTC"), f"{key}.timezone")
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise check.fail(f"{key}.timezone", f"{zone!r} is not an IANA time zone (UTC, Europe/Berlin ...)") from None
    order = spec.get("date_order", "dmy")
    if order not in DATE_ORDERS:
        raise check.fail(f"{key}.date_order", f"expected one of {', '.join(DATE_ORDERS)}, got {_kind(order)}")
    return ServiceNowCsvSource(**common, timezone=zone, date_order=order)


def _connection(check: _Checker, spec: Any, key: str) -> ConnectionRef:
    spec = check.mapping(spec, key, {"conn_id", "env"})
    if len(spec) != 1:
        raise check.fail(key, "give exactly one of conn_id (an Airflow connection id) or env (an environment variable)")
    if "conn_id" in spec:
        return ConnectionRef(conn_id=check.text(spec["conn_id"], f"{key}.conn_id", re.compile(r"[\w.\-]+"), "an id"))
    return ConnectionRef(env=check.text(spec["env"], f"{key}.env", re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), "a name"))


def _mappings(check: _Checker, kind: str, spec: Any, key: str) -> dict[str, EntityMapping]:
    spec = check.mapping(spec, key)
    if not spec:
        raise check.fail(key, "no entity declared")
    out = {}
    for name, body in spec.items():
        if name not in ENTITIES:
            raise check.fail(f"{key}.{name}", f"not an entity of the contract (entities: {', '.join(ENTITIES)})")
        out[name] = _mapping(check, kind, ENTITIES[name], body if body is not None else {}, f"{key}.{name}")
    return out


def _mapping(check: _Checker, kind: str, entity: Entity, spec: Any, key: str) -> EntityMapping:
    required = {"sql": ("table",), "rest_api": ("endpoint",)}.get(kind, ())
    spec = check.mapping(spec, key, ENTITY_KEYS[kind], required)
    # SQL names and ServiceNow column names become identifiers; API names are JSON keys (dotted for nested objects).
    if kind in ("sql", "servicenow", "servicenow_csv"):
        name_check = check.identifier
    else:
        name_check = lambda v, k: check.text(v, k, JSON_PATH, "a JSON key path")  # noqa: E731
    columns = {
        check.field_name(entity, f, f"{key}.columns.{f}"): name_check(c, f"{key}.columns.{f}")
        for f, c in check.mapping(spec.get("columns", {}), f"{key}.columns").items()
    }
    constants = {
        check.field_name(entity, f, f"{key}.constants.{f}"): check.scalar(v, f"{key}.constants.{f}")
        for f, v in check.mapping(spec.get("constants", {}), f"{key}.constants").items()
    }
    both = sorted(set(columns) & set(constants))
    if both:
        raise check.fail(f"{key}.constants", f"field(s) {', '.join(both)} also mapped to a column: one or the other")
    for f in (entity.key, entity.watermark):
        if f in constants:
            raise check.fail(f"{key}.constants.{f}", f"{f} identifies or orders the records; it cannot be a constant")
    values = {}
    for f, table in check.mapping(spec.get("values", {}), f"{key}.values").items():
        check.field_name(entity, f, f"{key}.values.{f}")
        if not isinstance(table, dict):
            raise check.fail(
                f"{key}.values.{f}", f"expected a mapping of source value to contract value, got {_kind(table)}"
            )
        values[f] = {
            check.scalar(k, f"{key}.values.{f}"): check.scalar(v, f"{key}.values.{f}.{k}") for k, v in table.items()
        }
    mapping: dict[str, Any] = {"entity": entity.name, "columns": columns, "constants": constants, "values": values}
    if "watermark" in spec:
        mapping["watermark"] = name_check(spec["watermark"], f"{key}.watermark")
    if kind == "sql":
        mapping["table"] = check.identifier(spec["table"], f"{key}.table", qualified=True)
    if kind == "rest_api":
        mapping.update(_rest_mapping(check, spec, key))
    return EntityMapping(**mapping)


def _rest_mapping(check: _Checker, spec: dict, key: str) -> dict[str, Any]:
    endpoint = check.text(spec["endpoint"], f"{key}.endpoint", ENDPOINT, "a path on the API (starting with /)")
    pagination = spec.get("pagination", "offset")
    if pagination not in PAGE_PARAMS:
        raise check.fail(f"{key}.pagination", f"expected offset or cursor, got {_kind(pagination)}")
    window = check.mapping(spec.get("window_params", {}), f"{key}.window_params", {"start", "end"})
    param = re.compile(r"[A-Za-z0-9_\-.\[\]]+")
    window_params = (
        check.text(window["start"], f"{key}.window_params.start", param, "a query parameter name")
        if "start" in window
        else "since",
        check.text(window.get("end", "until"), f"{key}.window_params.end", param, "a query parameter name"),
    )
    pages = check.mapping(spec.get("page_params", {}), f"{key}.page_params", set(PAGE_PARAMS[pagination]))
    page_params = {
        k: check.text(pages.get(k, default), f"{key}.page_params.{k}", param, "a query parameter name")
        for k, default in PAGE_PARAMS[pagination].items()
    }
    records = spec.get("records", "data")
    if records != "":
        check.text(records, f"{key}.records", JSON_PATH, "a JSON key path ('' for a bare list)")
    return {
        "endpoint": endpoint,
        "pagination": pagination,
        "window_params": window_params,
        "page_params": page_params,
        "records": records,
        "next_cursor": check.text(
            spec.get("next_cursor", "next_cursor"), f"{key}.next_cursor", JSON_PATH, "a JSON key path"
        ),
    }


def enabled(sources: dict[str, Source]) -> dict[str, Source]:
    return {n: s for n, s in sources.items() if s.enabled}


def scheduled(sources: dict[str, Source]) -> dict[str, Source]:
    return {n: s for n, s in sources.items() if s.scheduled}


CONFIGURED: dict[str, Source] = load_sources()
# The sources the pipeline knows (raw tables, validation, quarantine): the enabled ones.
SOURCES: dict[str, Source] = enabled(CONFIGURED)
# The ones it pulls from on a schedule (an ingest task each); the others are loaded on demand.
SCHEDULED: dict[str, Source] = scheduled(SOURCES)
