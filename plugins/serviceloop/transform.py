"""The dbt project as an Airflow task group: one `dbt build`, one task per dbt node to watch it.

Cosmos' watcher mode runs the whole project as one ``dbt build`` in a producer task, with
dbt's threads, and gives every model and seed, and every model's tests, a task of its own that
reports what dbt did to it: the Airflow UI still shows each one's state, its dbt log lines and
compiled SQL, and a failed model can be retried alone (its task then builds that model only).
One task per model, each starting dbt, cost ~40 dbt start-ups a run: at 20k tickets 239 s for
a transform that one ``dbt build`` does in 40-66 s.

Choices, each measured on ``make run``'s warehouse (``airflow dags test serviceloop_transform``):

- The node tasks start once the producer has finished (``all_done``: after a failed build each
  still reports its node: built, failed, or not built because something upstream failed).
  Cosmos leaves them free to poll while the build runs, which pays only on an executor with
  free slots and a triggerer; ``airflow dags test`` runs one task at a time, and a node task
  that came before the producer would wait for it forever.
- dbt runs as a subprocess whose JSON log the producer reads: in-process, dbt's threads wait
  on each status the producer records in XCom (4-6 per node, 618 nodes), and the build took
  99 s against 36 s.
- ``AIRFLOW__COSMOS__ENABLE_WATCHER_RELIABLE_RETRY=false`` (``airflow_env``, compose, Helm):
  Cosmos otherwise rewrites a Variable holding every status so far after each one, which made
  the build 355 s against 115 s. The statuses are still saved when the producer fails (its
  retry and failure callbacks), so a retry finds them; only a producer killed outright loses
  them, and then each node task builds its node itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serviceloop.settings import WAREHOUSE_CONN_ID, paths

if TYPE_CHECKING:
    from cosmos import DbtTaskGroup

GROUP_ID = "dbt"
# Airflow settings every deployment of the transform carries (airflow_env, compose, Helm).
COSMOS_SETTINGS = {"AIRFLOW__COSMOS__ENABLE_WATCHER_RELIABLE_RETRY": "False"}


def dbt_task_group(threads: int = 2) -> DbtTaskGroup:
    """The project's models, seeds and tests in a task group ``dbt``, laid out from the manifest.

    ``threads``: dbt's, as in ``dbt_project/profiles.yml`` (what ``serviceloop dbt`` uses).
    """
    from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import PRODUCER_WATCHER_TASK_ID, ExecutionMode, InvocationMode, LoadMode, TestBehavior
    from cosmos.profiles import PostgresUserPasswordProfileMapping

    project = paths()
    group = DbtTaskGroup(
        group_id=GROUP_ID,
        project_config=ProjectConfig(
            dbt_project_path=project.dbt_project,
            manifest_path=project.dbt_manifest,
            install_dbt_deps=False,
        ),
        profile_config=ProfileConfig(
            profile_name="serviceloop",
            target_name="warehouse",
            profile_mapping=PostgresUserPasswordProfileMapping(
                conn_id=WAREHOUSE_CONN_ID, profile_args={"schema": "public", "threads": threads}
            ),
        ),
        execution_config=ExecutionConfig(
            execution_mode=ExecutionMode.WATCHER, invocation_mode=InvocationMode.SUBPROCESS
        ),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            # The producer's `dbt build` tests each model before anything downstream builds on
            # it; each model's tests get a task that reports their outcome.
            test_behavior=TestBehavior.AFTER_EACH,
            # A test with two parents (relationships) reports with each parent's tests: the build
            # runs it once, after both; a task of its own would start dbt to watch it.
            should_detach_multiple_parents_tests=False,
            # Asset URIs built from a unix-socket host are not valid; the DAG publishes its own.
            emit_datasets=False,
        ),
    )
    producer = group.tasks_map[PRODUCER_WATCHER_TASK_ID]
    for node_task in group.iter_tasks():
        if node_task is not producer and hasattr(node_task, "producer_task_id") and not node_task.upstream_task_ids:
            producer >> node_task
            node_task.trigger_rule = "all_done"
    return group
