"""Validate a batch against its entity's suite with Great Expectations.

Suites are reviewed YAML files in ``expectations/`` (one per entity). Each expectation has a
``rule`` name, a GX expectation type with its kwargs, and a ``severity``: ``error`` sends the
failing rows to quarantine with the names of the rules they broke; ``warning`` loads them and
records the count. GX runs on the canonical text form (see ``serviceloop.sources``), so a
type rule is a format rule: a value that would not cast is caught here, not in ``COPY``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from serviceloop.settings import paths

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning")


class SuiteError(ValueError):
    """A suite file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Rule:
    rule: str
    type: str
    kwargs: dict
    severity: str


@dataclass
class Outcome:
    """The verdict on one chunk: which rows pass and why the others do not."""

    valid: pd.DataFrame
    rejected: pd.DataFrame
    failed_rules: dict[int, list[str]]
    warnings: dict[str, int] = field(default_factory=dict)


def suite_path(entity: str) -> Path:
    return paths().expectations / f"{entity}.yml"


@cache
def load_suite(entity: str) -> tuple[Rule, ...]:
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
        rules.append(Rule(item["rule"], item["type"], dict(item["kwargs"]), item["severity"]))
    names = [r.rule for r in rules]
    if len(set(names)) != len(names):
        raise SuiteError(f"{path}: rule names must be unique")
    return tuple(rules)


def _expectation(rule: Rule):
    import great_expectations.expectations as gxe

    class_name = "".join(part.capitalize() for part in rule.type.split("_"))
    cls = getattr(gxe, class_name, None)
    if cls is None:
        raise SuiteError(f"rule {rule.rule}: unknown expectation type {rule.type!r}")
    return cls(**rule.kwargs, meta={"rule": rule.rule, "severity": rule.severity})


class Validator:
    """One GX context and suite per entity, reused for every chunk of a batch."""

    def __init__(self, entity: str):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx

        self.entity = entity
        self.rules = load_suite(entity)
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = {"globally": False}
        asset = self.context.data_sources.add_pandas(f"{entity}_batches").add_dataframe_asset(entity)
        self.batch_definition = asset.add_batch_definition_whole_dataframe("chunk")
        self.suite = self.context.suites.add(
            gx.ExpectationSuite(name=entity, expectations=[_expectation(r) for r in self.rules])
        )

    def validate(self, frame: pd.DataFrame) -> Outcome:
        frame = frame.reset_index(drop=True)
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(self.suite, result_format={"result_format": "COMPLETE"})
        failed: dict[int, list[str]] = {}
        warnings: dict[str, int] = {}
        for res in result.results:
            meta = res.expectation_config.meta or {}
            if res.exception_info and res.exception_info.get("raised_exception"):
                message = res.exception_info.get("exception_message")
                raise SuiteError(f"{self.entity}: rule {meta.get('rule')} could not be evaluated: {message}")
            if res.success:
                continue
            indices = res.result.get("unexpected_index_list") or []
            if meta.get("severity") == "warning":
                warnings[meta["rule"]] = len(indices)
                continue
            for idx in indices:
                failed.setdefault(int(idx), []).append(meta["rule"])
        bad = frame.index.isin(list(failed))
        return Outcome(valid=frame[~bad], rejected=frame[bad], failed_rules=failed, warnings=warnings)
