"""Every DAG imports cleanly, follows the house rules and does no heavy work at parse time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serviceloop.settings import REPO_ROOT, paths

DAG_FILES = sorted((REPO_ROOT / "dags").glob("*.py"))
EXPECTED = {"serviceloop_ingest", "serviceloop_transform", "serviceloop_drift", "serviceloop_report"}


@pytest.fixture(scope="module")
def dagbag(warehouse_url, state_dir):
    from serviceloop import airflow_env

    # The transform DAG is laid out from the dbt manifest, as after `serviceloop prepare`.
    airflow_env.dbt_parse(state_dir / "logs" / "dbt-parse.log")
    saved = dict(os.environ)
    os.environ.update(airflow_env.environment())
    from airflow.dag_processing.dagbag import DagBag

    yield DagBag(dag_folder=str(REPO_ROOT / "dags"))
    # Later modules start their own installations: none may inherit this one's metadata DB.
    os.environ.clear()
    os.environ.update(saved)


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_follows_the_house_rules(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags and "serviceloop" in dag.tags
    assert dag.doc_md and dag_id in dag.doc_md, "the module docstring doubles as doc_md"
    assert dag.catchup is False
    for task in dag.tasks:
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
        callbacks = (
            task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback]
        )
        assert any(type(c).__name__ == "DataEngineersNotifier" for c in callbacks), (
            f"{dag_id}.{task.task_id} does not alert the data engineers on failure"
        )
    # A cycle would have failed the import; a topological sort must cover every task.
    assert len(dag.topological_sort()) == len(dag.tasks)


def test_ingest_has_one_task_per_source_entity_emitting_its_asset(dagbag):
    from serviceloop.sources import SCHEDULED, SOURCES, raw_table

    dag = dagbag.dags["serviceloop_ingest"]
    expected = {raw_table(s.name, e.name) for s in SCHEDULED.values() for e in s.entities}
    # An import-only source (ServiceNow exports) has raw tables but no task.
    assert "servicenow_export" in SOURCES and "servicenow_export" not in SCHEDULED
    assert {t.task_id for t in dag.tasks} == expected
    for task in dag.tasks:
        assert [a.name for a in task.outlets] == [f"serviceloop.raw.{task.task_id}"]


def test_transform_runs_every_dbt_model_and_publishes_the_kpi_asset(dagbag):
    dag = dagbag.dags["serviceloop_transform"]
    ids = {t.task_id for t in dag.tasks}
    assert any(i.startswith("dbt.fct_tickets") for i in ids), sorted(ids)
    assert any(i.startswith("dbt.kpi_daily") for i in ids), sorted(ids)
    publish = dag.get_task("publish_kpis")
    assert [a.name for a in publish.outlets] == ["serviceloop.marts.kpi_daily"]
    assert publish.upstream_task_ids, "KPIs are published only after dbt"


def test_transform_builds_once_and_every_node_task_reports_after_the_build(dagbag):
    """One `dbt build` (the producer); a task per node that runs after it, never before.

    ``airflow dags test`` runs one task at a time: a node task scheduled before the build
    would wait for it forever.
    """
    from cosmos.constants import PRODUCER_WATCHER_TASK_ID

    dag = dagbag.dags["serviceloop_transform"]
    producer = dag.get_task(f"dbt.{PRODUCER_WATCHER_TASK_ID}")
    assert type(producer).__name__ == "DbtProducerWatcherOperator"
    node_tasks = [t for t in dag.tasks if hasattr(t, "producer_task_id") and t is not producer]
    assert {"dbt.fct_tickets.run", "dbt.fct_tickets.test", "dbt.teams.seed"} <= {t.task_id for t in node_tasks}
    for task in node_tasks:
        assert producer.task_id in task.get_flat_relative_ids(upstream=True), task.task_id
        assert not type(task).__name__.endswith("LocalOperator"), f"{task.task_id} would start dbt itself"


def test_every_dbt_node_fits_the_xcom_keys_its_status_travels_under(dagbag):
    """The build reports each node under an XCom key made of its name; Airflow keeps 512 characters."""
    import json

    from airflow.models.xcom import XComModel
    from cosmos.operators._watcher.aggregation import get_tests_status_xcom_key
    from cosmos.operators._watcher.state import get_compiled_sql_xcom_key, get_dbt_event_xcom_key

    limit = XComModel.__table__.c.key.type.length
    manifest = json.loads(paths().dbt_manifest.read_text())
    for unique_id in manifest["nodes"]:
        for key in (get_dbt_event_xcom_key(unique_id), get_compiled_sql_xcom_key(unique_id)):
            assert len(key) <= limit, f"{unique_id}: name it (`name:` in its YAML) to fit {limit} characters"
        assert len(get_tests_status_xcom_key(unique_id)) <= limit, unique_id


@pytest.mark.parametrize("path", [p for p in DAG_FILES if p.stem != "serviceloop_transform"], ids=lambda p: p.name)
def test_parsing_imports_no_heavy_library(path: Path):
    """Heavy imports belong inside tasks: parsing must not pull pandas, GX or Evidently."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        "heavy = [m for m in ('pandas', 'great_expectations', 'evidently') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _scheduled_on(dag) -> set[str]:
    return {asset.name for asset in dag.timetable.asset_condition.objects}


def test_the_dags_form_one_chain_through_their_assets(dagbag):
    """transform waits for everything ingest emits; drift waits for what transform publishes."""
    ingest, transform, drift = (
        dagbag.dags[d] for d in ("serviceloop_ingest", "serviceloop_transform", "serviceloop_drift")
    )
    emitted = {a.name for t in ingest.tasks for a in t.outlets}
    assert _scheduled_on(transform) == emitted
    assert _scheduled_on(drift) == {a.name for a in transform.get_task("publish_kpis").outlets}
