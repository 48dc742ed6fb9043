"""The drift monitor's snapshots in an Evidently workspace, so its UI shows each segment over time.

Each drift run adds, per segment and as-of day, one Evidently snapshot to a local workspace in
the state folder (``<home>/evidently``): a ``Report`` over the segment's standard windows (the
tickets resolved in the current 7 days against the 4 weeks before), with the ticket count and
each monitored metric's level (median resolution hours, breach share, mean CSAT, ...), stamped
with the as-of day. A segment is one project (``team tech_support``, ``channel email``, ...),
created on first use with a dashboard of one line chart per metric, so ``make evidently-ui``
(``evidently ui --workspace <home>/evidently`` on 127.0.0.1) shows each segment's metrics day
by day next to the findings in ``monitoring.drift_findings``. Snapshots carry the findings of
their day as tags and metadata.

Re-evaluating a day replaces its snapshot (an index file in the workspace maps segment and day
to the snapshot), so reruns do not pile up. Rendering a snapshot costs about a second (Evidently
draws a distribution plot per metric), so a run that catches up on many days writes snapshots
for its last ``SERVICELOOP_EVIDENTLY_DAYS`` days (default 14; 0 = every day) and for each day a
finding episode starts; a daily run writes every day it evaluates.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pandas as pd

from serviceloop.files import write_atomically

INDEX_FILE = "serviceloop-index.json"
DEFAULT_DAYS = 14


def days_to_snapshot(days: list[dt.date]) -> set[dt.date]:
    """The as-of days of a run that get snapshots whatever they find: the last
    ``SERVICELOOP_EVIDENTLY_DAYS`` (the days a finding episode starts get one too)."""
    text = os.environ.get("SERVICELOOP_EVIDENTLY_DAYS", str(DEFAULT_DAYS)).strip()
    if not text.isdigit():
        raise ValueError(f"SERVICELOOP_EVIDENTLY_DAYS: {text!r} is not a whole number of days (0 = every day)")
    keep = int(text)
    return set(days if keep == 0 else days[-keep:])


def _statistic(metric):
    from evidently.metrics import MeanValue, MedianValue

    return MedianValue if metric.kind == "continuous" else MeanValue


class SnapshotWriter:
    """Adds drift snapshots to the workspace at ``path`` (created when missing)."""

    def __init__(self, path: Path, metrics: list) -> None:
        os.environ.setdefault("DO_NOT_TRACK", "1")
        from evidently.ui.workspace import Workspace

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace.create(str(self.path))
        self.metrics = list(metrics)
        self.projects = {p.name: p for p in self.workspace.list_projects()}
        index = self.path / INDEX_FILE
        self.index: dict[str, list[str]] = json.loads(index.read_text(encoding="utf-8")) if index.exists() else {}

    @staticmethod
    def project_name(seg_type: str, segment: str) -> str:
        return f"{seg_type} {segment}"

    def project(self, seg_type: str, segment: str):
        """The segment's project, created with its dashboard on first use."""
        from evidently.sdk.models import PanelMetric
        from evidently.sdk.panels import counter_panel, line_plot_panel

        name = self.project_name(seg_type, segment)
        if name in self.projects:
            return self.projects[name]
        project = self.workspace.create_project(
            name, description=f"ServiceLoop drift monitor: the {seg_type} {segment}, one snapshot per as-of day"
        )
        project.dashboard.add_panel(
            counter_panel(
                title="Tickets resolved in the current window",
                values=[PanelMetric(legend="tickets", metric="RowCount")],
                size="half",
                aggregation="last",
            )
        )
        for metric in self.metrics:
            statistic = _statistic(metric).__name__
            project.dashboard.add_panel(
                line_plot_panel(
                    title=f"{metric.label} ({'median' if statistic == 'MedianValue' else 'mean'}, last 7 days)",
                    values=[PanelMetric(legend=metric.name, metric=statistic, metric_labels={"column": metric.column})],
                    size="half",
                )
            )
        self.projects[name] = project
        return project

    def add(
        self,
        seg_type: str,
        segment: str,
        as_of: dt.date,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        findings: list[str],
    ) -> str | None:
        """One snapshot of the segment on the as-of day; its id (None: nothing to show)."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import RowCount

        metrics = [m for m in self.metrics if m.column in current and current[m.column].notna().any()]
        metrics = [m for m in metrics if m.column in reference and reference[m.column].notna().any()]
        if not metrics or current.empty or reference.empty:
            return None
        columns = [m.column for m in metrics]
        definition = DataDefinition(numerical_columns=columns)

        def dataset(frame: pd.DataFrame):
            return Dataset.from_pandas(frame[columns].astype(float), data_definition=definition)

        report = Report([RowCount(), *(_statistic(m)(column=m.column) for m in metrics)])
        snapshot = report.run(
            dataset(current),
            dataset(reference),
            timestamp=dt.datetime.combine(as_of, dt.time()),
            tags=[seg_type, segment, *(f"finding:{name}" for name in findings)],
            metadata={"as_of": as_of.isoformat(), "segment_type": seg_type, "segment": segment},
            name=f"{seg_type} {segment} {as_of.isoformat()}",
        )
        project = self.project(seg_type, segment)
        key = f"{seg_type}|{segment}|{as_of.isoformat()}"
        if key in self.index:
            old_project, old_snapshot = self.index[key]
            self.workspace.delete_run(old_project, old_snapshot)
        ref = self.workspace.add_run(project.id, snapshot)
        self.index[key] = [str(project.id), str(ref.id)]
        return str(ref.id)

    def close(self) -> None:
        """Writes the index (which snapshot belongs to which segment and day)."""
        write_atomically(self.path / INDEX_FILE, json.dumps(self.index, indent=0, sort_keys=True).encode("utf-8"))
