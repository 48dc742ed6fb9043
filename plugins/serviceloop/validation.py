"""Validate a staged batch against its entity's suite with Great Expectations, in PostgreSQL.

Suites are reviewed YAML files in ``expectations/`` (one per entity). Each expectation has a
``rule`` name, a GX expectation type with its kwargs, and a ``severity``: ``error`` sends the
failing rows to quarantine with the names of the rules they broke; ``warning`` loads them and
records the count; ``hold`` keeps them in quarantine as *held* until what they refer to
arrives (a late parent is not a fault). A suite's ``batch`` section holds the checks on the
batch as a whole (row count against the trailing median, freshness): breaking one stops the
batch.

The batch is validated where it is: ingest stages it as text in ``landing.<table>__<hash>``
and GX's SQL datasource runs the suite on that table. Column rules are aggregated by GX into
a few queries; cross-column and cross-row rules are ``unexpected_rows_expectation`` queries.
GX is asked only which rules failed (``BOOLEAN_ONLY``) and, for a column rule, the query that
selects its failing rows; the rows themselves never leave the database (see ``ingest``).

GX runs on the canonical text form (see ``serviceloop.extract``), so a type rule is a cast
rule: ``expect_column_values_to_be_castable`` (defined here) checks that PostgreSQL would
cast the value, in the layout the contract wants, so ``insert ... select value::type`` never
fails on a value validation let through.

Queries in a suite may use, besides GX's ``{batch}``: ``{content}`` (a digest of a record's
contract columns), ``{known_tickets}`` (every ticket id the warehouse has seen, loaded or
quarantined) and ``{clock_skew}`` (the suite parameter ``clock_skew``, overridden by
``SERVICELOOP_CLOCK_SKEW``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from serviceloop.contract import ENTITIES
from serviceloop.settings import paths

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning", "hold")
UNEXPECTED_ROWS = "unexpected_rows_expectation"
ROW_NUMBER = "_row_number"
# The rule a row gets when its reader could not parse it (``serviceloop.extract.PARSE_ERROR``).
PARSE_ERROR_RULE = "parse_error"
CLOCK_SKEW_ENV = "SERVICELOOP_CLOCK_SKEW"
# "off" skips the Data Docs page of each batch (about half of a small batch's time): for a
# long backfill, whose hundreds of pages nobody reads. The verdict is the same.
DATA_DOCS_ENV = "SERVICELOOP_DATA_DOCS"
KEEP_RESULTS = 50  # validation results per suite kept, with their Data Docs pages (older ones are removed)
_INTERVAL = re.compile(r"\d+(\.\d+)?\s*(second|minute|hour|day)s?", re.IGNORECASE)


class SuiteError(ValueError):
    """A suite file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Rule:
    rule: str
    type: str
    kwargs: dict
    severity: str


@dataclass(frozen=True)
class BatchChecks:
    """Checks on a batch as a whole; see ``ingest.check_batch_health``."""

    trailing_batches: int = 7
    min_batches: int = 3
    min_median: float = 20
    collapse_below: float = 0.1
    explode_above: float = 10.0
    freshness_column: str | None = None
    max_age: str | None = None


@dataclass(frozen=True)
class Suite:
    entity: str
    rules: tuple[Rule, ...]
    batch: BatchChecks
    clock_skew: str


@dataclass(frozen=True)
class FailedRule:
    """A rule some rows broke, and the SQL that selects their ``_row_number`` (first column)."""

    rule: str
    severity: str
    query: str


@dataclass
class Verdict:
    """GX's verdict on one staged table."""

    failed: list[FailedRule] = field(default_factory=list)
    data_docs: Path | None = None
    seconds: float = 0.0


def suite_path(entity: str) -> Path:
    return paths().expectations / f"{entity}.yml"


def _interval(text: str, where: str) -> str:
    if not _INTERVAL.fullmatch(str(text).strip()):
        raise SuiteError(f"{where}: {text!r} is not a duration such as '10 minutes' or '3 days'")
    return str(text).strip()


@cache
def load(entity: str) -> Suite:
    path = suite_path(entity)
    if not path.exists():
        raise SuiteError(f"{path}: no expectation suite for entity {entity!r}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rules = []
    for i, item in enumerate(doc.get("expectations") or []):
        where = f"{path}: expectations[{i}]"
        for key in ("rule", "type", "kwargs", "severity"):
            if key not in item:
                raise SuiteError(f"{where}: missing key {key!r}")
        if item["severity"] not in SEVERITIES:
            raise SuiteError(f"{where} ({item['rule']}): severity must be one of {SEVERITIES}")
        if item["type"] == UNEXPECTED_ROWS and "{batch}" not in item["kwargs"].get("unexpected_rows_query", ""):
            raise SuiteError(f"{where} ({item['rule']}): unexpected_rows_query must select from {{batch}}")
        rules.append(Rule(item["rule"], item["type"], dict(item["kwargs"]), item["severity"]))
    names = [r.rule for r in rules]
    if len(set(names)) != len(names):
        raise SuiteError(f"{path}: rule names must be unique")
    batch = doc.get("batch") or {}
    row_count, freshness = batch.get("row_count") or {}, batch.get("freshness") or {}
    unknown = set(row_count) - set(BatchChecks.__dataclass_fields__)
    if unknown:
        raise SuiteError(f"{path}: batch.row_count: unknown key(s) {sorted(unknown)}")
    if freshness and set(freshness) != {"column", "max_age"}:
        raise SuiteError(f"{path}: batch.freshness needs exactly 'column' and 'max_age'")
    if freshness and freshness["column"] not in ENTITIES[entity].columns:
        raise SuiteError(f"{path}: batch.freshness.column {freshness['column']!r} is not a field of {entity}")
    checks = BatchChecks(
        **row_count,
        freshness_column=freshness.get("column"),
        max_age=_interval(freshness["max_age"], f"{path}: batch.freshness.max_age") if freshness else None,
    )
    params = doc.get("parameters") or {}
    skew = os.environ.get(CLOCK_SKEW_ENV) or params.get("clock_skew", "10 minutes")
    return Suite(entity, tuple(rules), checks, _interval(skew, f"{path}: parameters.clock_skew ({CLOCK_SKEW_ENV})"))


def load_suite(entity: str) -> tuple[Rule, ...]:
    return load(entity).rules


# --- the SQL a suite's queries may use ------------------------------------------------------


def content_sql(entity: str) -> str:
    """A digest of a record's contract columns: two versions differ iff their digests do."""
    return f"md5(row({', '.join(ENTITIES[entity].columns)})::text)"


def known_tickets_sql() -> str:
    """Every ticket id the warehouse has seen: loaded, or quarantined for faults of its own."""
    from serviceloop.sources import SOURCES, raw_table

    parts = []
    for source in SOURCES.values():
        if "tickets" in [e.name for e in source.entities]:
            table = raw_table(source.name, "tickets")
            parts.append(f"select ticket_id from raw.{table}")
            parts.append(f"select record ->> 'ticket_id' from quarantine.{table} where status = 'quarantined'")
    return "(" + " union all ".join(parts) + ")"


def render_query(rule: Rule, suite: Suite, batch: str | None = None) -> str:
    """A rule's query with ServiceLoop's placeholders filled; ``{batch}`` too when given."""
    query = rule.kwargs["unexpected_rows_query"]
    query = query.replace("{content}", content_sql(suite.entity))
    query = query.replace("{known_tickets}", known_tickets_sql())
    query = query.replace("{clock_skew}", f"interval '{suite.clock_skew}'")
    if batch is not None:
        query = query.replace("{batch}", batch)
    return query


def failing_rows_sql(rule: Rule, suite: Suite, batch: str) -> str:
    """The ``_row_number`` of every row of ``batch`` that breaks an ``unexpected_rows`` rule."""
    return f"select broken.{ROW_NUMBER} from ({render_query(rule, suite, batch)}) as broken"


# --- GX ------------------------------------------------------------------------------------


@cache
def _custom_expectations() -> dict:
    """ServiceLoop's own expectation types, registered with GX once per process."""
    from typing import ClassVar

    import great_expectations.expectations as gxe
    import sqlalchemy as sa
    from great_expectations.execution_engine import SqlAlchemyExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics.map_metric_provider import (
        ColumnMapMetricProvider,
        column_condition_partial,
    )

    class ColumnValuesCastable(ColumnMapMetricProvider):
        condition_metric_name = "column_values.castable"
        condition_value_keys = ("type_name", "regex")

        @column_condition_partial(engine=SqlAlchemyExecutionEngine)
        def _sqlalchemy(cls, column, type_name, regex, **kwargs):
            castable = sa.func.ops.input_is_valid(column, sa.literal(type_name))
            return sa.and_(column.regexp_match(regex), castable) if regex else castable

    class ExpectColumnValuesToBeCastable(ColumnMapExpectation):
        """Each value casts to the PostgreSQL type ``type_name`` and, if given, matches ``regex``."""

        type_name: str
        regex: str | None = None
        map_metric: ClassVar[str] = "column_values.castable"
        success_keys: ClassVar[tuple[str, ...]] = ("type_name", "regex", "mostly")
        args_keys: ClassVar[tuple[str, ...]] = ("column", "type_name")

    class CountedUnexpectedRowsExpectation(gxe.UnexpectedRowsExpectation):
        """GX's ``unexpected_rows_expectation``, asking only how many rows its query returns.

        GX's own also fetches the rows (its driver cursor reads them all, to show 200): an
        orphan check on a first load can return every row of the batch. Which rows fail is
        found by SQL, in the database (``failing_rows_sql``).
        """

        metric_dependencies: ClassVar[tuple[str, ...]] = ("unexpected_rows_query.row_count",)

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine=None):
            count = metrics["unexpected_rows_query.row_count"]
            return {"success": count == 0, "result": {"observed_value": count}}

    return {
        "expect_column_values_to_be_castable": ExpectColumnValuesToBeCastable,
        UNEXPECTED_ROWS: CountedUnexpectedRowsExpectation,
    }


def _expectation(rule: Rule, suite: Suite):
    import great_expectations.expectations as gxe

    meta = {"rule": rule.rule, "severity": rule.severity}
    if rule.type == UNEXPECTED_ROWS:
        cls = _custom_expectations()[UNEXPECTED_ROWS]
        return cls(unexpected_rows_query=render_query(rule, suite), description=rule.rule, meta=meta)
    cls = _custom_expectations().get(rule.type)
    if cls is None:
        class_name = "".join(part.capitalize() for part in rule.type.split("_"))
        cls = getattr(gxe, class_name, None)
    if cls is None:
        raise SuiteError(f"{suite_path(suite.entity)}: rule {rule.rule}: unknown expectation type {rule.type!r}")
    if rule.type == "expect_column_values_to_be_castable":
        # GX has no renderer for it: the Data Docs show this instead.
        layout = f", in the layout {rule.kwargs['regex']}" if rule.kwargs.get("regex") else ""
        meta["description"] = f"{rule.rule}: values cast to {rule.kwargs['type_name']}{layout}"
        return cls(**rule.kwargs, meta=meta, description=meta.pop("description"))
    return cls(**rule.kwargs, meta=meta)


def sqlalchemy_url(conn) -> str:
    """The SQLAlchemy URL of the database a psycopg2 connection is on (GX opens its own)."""
    from sqlalchemy.engine import URL

    params = conn.get_dsn_parameters()
    # Host (a socket folder for the embedded warehouse), port, TLS settings: as the connection has them.
    keys = ("host", "port", "sslmode", "sslrootcert", "sslcert", "sslkey", "options")
    query = {k: params[k] for k in keys if params.get(k)}
    url = URL.create(
        "postgresql+psycopg2",
        username=params.get("user"),
        password=conn.info.password or None,
        database=params.get("dbname"),
        query=query,
    )
    return url.render_as_string(hide_password=False)


def _exception_message(info: dict | None) -> str | None:
    """The error GX met computing a result: on the result itself, or on one of its metrics."""
    if not info:
        return None
    if info.get("raised_exception"):
        return info.get("exception_message") or "unknown error"
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message") or "unknown error"
    return None


class Validator:
    """One GX context, datasource and suite per entity and database, reused for every batch."""

    def __init__(self, entity: str, url: str):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        # It announces the temporary folder of the ephemeral site, which is replaced below.
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        import great_expectations as gx

        self.entity = entity
        self.suite_config = load(entity)
        self.rules = {r.rule: r for r in self.suite_config.rules}
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = {"globally": False}
        self.docs = paths().data_docs
        self.results = paths().data_docs.parent / "gx-validation-results"
        # The ephemeral context's default site lives in a temporary folder: point it at the state folder.
        default = self.context.variables.data_docs_sites["local_site"]["store_backend"].get("base_directory")
        if default and Path(default).parent == Path(tempfile.gettempdir()):
            shutil.rmtree(default, ignore_errors=True)
        self.context.update_data_docs_site(
            "local_site",
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.docs)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        # Results are kept as files beside the site (the ephemeral context's own store is in
        # memory), so the index lists the validations of every task, not only this process's.
        self.context.add_store(
            "serviceloop_validation_results",
            {
                "class_name": "ValidationResultsStore",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.results)},
            },
        )
        self.context.validation_results_store_name = "serviceloop_validation_results"
        with warnings.catch_warnings():
            # The generic SQL datasource, because PostgresDatasource rejects a unix-socket URL.
            warnings.filterwarnings("ignore", message=".*more specific PostgresDatasource.*")
            self.datasource = self.context.data_sources.add_sql("warehouse", connection_string=url)
        self.suite = self.context.suites.add(
            gx.ExpectationSuite(
                name=entity, expectations=[_expectation(r, self.suite_config) for r in self.suite_config.rules]
            )
        )

    def validate(self, table: str, run_name: str, *, data_docs: bool = True) -> Verdict:
        """Run the suite on ``landing.<table>``; which rules failed, and where their rows are."""
        started = time.perf_counter()
        asset = self.datasource.add_table_asset(table, table_name=table, schema_name="landing")
        try:
            batch = asset.add_batch_definition_whole_table("batch").get_batch()
            result = batch.validate(
                self.suite,
                result_format={
                    "result_format": "BOOLEAN_ONLY",
                    "unexpected_index_column_names": [ROW_NUMBER],
                    "return_unexpected_index_query": True,
                },
            )
        finally:
            self.datasource.delete_asset(table)
        verdict = Verdict()
        for res in result.results:
            meta = res.expectation_config.meta or {}
            rule = self.rules[meta["rule"]]
            message = _exception_message(res.exception_info)
            if message:
                raise SuiteError(f"{suite_path(self.entity)}: rule {rule.rule} could not be evaluated: {message}")
            if res.success:
                continue
            if rule.type == UNEXPECTED_ROWS:
                query = failing_rows_sql(rule, self.suite_config, f"landing.{table}")
            else:
                found = res.result["unexpected_index_query"].strip().rstrip(";")
                query = f"select broken.{ROW_NUMBER} from ({found}) as broken"
            verdict.failed.append(FailedRule(rule.rule, rule.severity, query))
        verdict.seconds = time.perf_counter() - started
        if data_docs and os.environ.get(DATA_DOCS_ENV, "on").strip().lower() not in ("off", "0", "false", "no"):
            verdict.data_docs = self._data_docs(result, run_name, table)
        return verdict

    def _data_docs(self, result, run_name: str, table: str) -> Path | None:
        """Store the result and render its page; returns the page's path."""
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        suite_id = ExpectationSuiteIdentifier(name=self.entity)
        run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC))
        result.meta["run_id"] = run_id
        result.meta["validation_time"] = run_id.run_time
        result_id = ValidationResultIdentifier(
            expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=table
        )
        try:
            self.context.validation_results_store.set(result_id, result)
            self._prune()
            self.context.build_data_docs(resource_identifiers=[result_id, suite_id])
            urls = self.context.get_docs_sites_urls(resource_identifier=result_id, site_names=["local_site"])
        except Exception:  # Data Docs are a report: failing to render one must not fail the batch.
            log.exception("%s: could not build the Data Docs page for %s", self.entity, run_name)
            return None
        url = urls[0]["site_url"] if urls else None
        return Path(url.removeprefix("file://")) if url else None

    def _prune(self) -> None:
        """Keep the latest ``KEEP_RESULTS`` results of the suite and their pages.

        The index is rebuilt from the results each time; a result's page sits at the same
        relative path under ``validations/`` and goes with it, so the folder stays bounded
        however many batches run.
        """
        folder = self.results / self.entity
        if not folder.is_dir():
            return
        runs = sorted(folder.glob("*/*/*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
        pages = self.docs / "validations"
        for old in runs[KEEP_RESULTS:]:
            relative = old.relative_to(self.results)
            old.unlink(missing_ok=True)
            (pages / relative).with_suffix(".html").unlink(missing_ok=True)
            for empty in (old.parent, old.parent.parent, (pages / relative).parent, (pages / relative).parent.parent):
                with contextlib.suppress(OSError):  # not empty, or gone already
                    empty.rmdir()


_validators: dict[tuple[str, str], Validator] = {}


def forget() -> None:
    """Read the suites again on next use (after a suite was fixed, before a replay)."""
    load.cache_clear()
    _validators.clear()


def validator(entity: str, url: str) -> Validator:
    """The process's validator for an entity on a database (building GX's context costs seconds)."""
    key = (entity, url)
    if key not in _validators:
        _validators[key] = Validator(entity, url)
    return _validators[key]
