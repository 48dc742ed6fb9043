"""The pipeline on Airflow's CeleryExecutor, as a team server runs it: one process per component.

Against the machine's PostgreSQL (127.0.0.1:5432, user ``postgres``) and Redis (127.0.0.1:6379),
and skipped with a message where either is absent, the test starts ``airflow api-server``,
``airflow scheduler``, ``airflow dag-processor`` and two ``airflow celery worker`` processes
with hostnames of their own. It simulates a small organisation into a helpdesk database,
triggers ``serviceloop_ingest`` through the REST API with the official ``apache-airflow-client``
and lets the scheduler start transform and drift through their Assets. Then: tasks ran on
both workers, and the marts and the reviews opened equal those of the embedded default
(``serviceloop run``) on the same simulation, run meanwhile in a state folder of its own.

Everything it creates is its own and removed at the end: three databases with a unique
prefix and the role that owns them, the Redis keys under a unique prefix, the processes it
started (by process group).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.slow

PG_URL = os.environ.get("SERVICELOOP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SERVICELOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Both deployments pseudonymise customers with one key, as a move between them would keep it;
# otherwise each state folder generates its own and every customer id differs.
SHARED_KEY = {"SERVICELOOP_PSEUDONYM_KEY": "the-key-both-deployments-share"}

DAYS = 60
TICKETS_PER_DAY = 100
# The ingest DAG runs daily for the day that just ended. The simulated period ends at
# today's midnight (UTC), so the run triggered below is the one the schedule would create
# for it: same logical date, same data interval; the scheduler sees it exists and adds none.
PERIOD_END = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), dt.UTC)
START = (PERIOD_END - dt.timedelta(days=DAYS)).date()
SHORTAGE = START + dt.timedelta(days=45)
SCENARIO = f"staffing_shortage(team=tech_support,start={SHORTAGE},days=10,severity=0.5)"
SIMULATION = ["--days", str(DAYS), "--tickets-per-day", str(TICKETS_PER_DAY), "--start", str(START)]
SIMULATION += ["--scenario", SCENARIO]

DAG_IDS = ("serviceloop_ingest", "serviceloop_transform", "serviceloop_drift")
WORKERS = ("serviceloop-worker-a", "serviceloop-worker-b")
RUN_TIMEOUT = 15 * 60

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _servers_or_skip():
    try:
        with contextlib.closing(psycopg2.connect(PG_URL, connect_timeout=3)):
            pass
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {PG_URL} (set SERVICELOOP_TEST_PG_URL): {exc}".strip())
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL} (set SERVICELOOP_TEST_REDIS_URL): {exc}")
    return client


def _celery_or_fail() -> None:
    try:
        import airflow.providers.celery.executors.celery_executor_utils  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the Celery executor cannot start in this environment (see celery's pin in pyproject.toml): {exc}")


def _admin(sql: str) -> None:
    with contextlib.closing(psycopg2.connect(PG_URL)) as conn:
        conn.autocommit = True
        conn.cursor().execute(sql)


def _db_url(name: str, role: tuple[str, str], driver: str = "postgresql") -> str:
    url = make_url(PG_URL).set(drivername=driver, database=name, username=role[0], password=role[1])
    return url.render_as_string(hide_password=False)


class Processes:
    """Long-running processes, each in a process group of its own, stopped together."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"processes ended early {dead}:\n{self.tails(list(dead))}"

    def tails(self, names: list[str] | None = None, chars: int = 3000) -> str:
        out = []
        for name in names or list(self.procs):
            log = self.log_dir / f"{name}.log"
            if log.exists():
                out.append(f"--- {name} ---\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # Stragglers and the children a component forked (task runners, API server workers).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _serviceloop(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    proc = subprocess.run([str(BIN / "serviceloop"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"serviceloop {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


PREPARE = """
import json, sys
from pathlib import Path
from serviceloop import airflow_env, warehouse

log = Path(sys.argv[1])
warehouse.start()  # on a server: creates the Airflow and helpdesk databases beside the warehouse
airflow_env.migrate(log)
airflow_env.dbt_parse(log)
print(json.dumps({"env": airflow_env.environment(), "login": airflow_env.ui_login()}))
"""


def _prepare(env: dict[str, str], log: Path) -> dict:
    """Migrate Airflow's metadata, write the dbt manifest; the environment Airflow runs with and the login."""
    proc = subprocess.run(
        [sys.executable, "-c", PREPARE, str(log)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{log.read_text()[-3000:] if log.exists() else ''}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _token(base: str, user: str, password: str) -> str:
    req = urllib.request.Request(
        f"{base}/auth/token",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["access_token"]


def _wait_for_api(base: str, procs: Processes, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=3) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    pytest.fail(f"the API server did not answer in {timeout} s:\n{procs.tails(['api-server'])}")


# When this installation loaded or built a row: bookkeeping of the run, not a fact about the
# tickets or the KPIs. Every other column must match.
BOOKKEEPING_COLUMNS = ("source_loaded_at", "content_changed_through", "built_through")


def _checksums(cur, table: str) -> dict:
    """Row count and one digest per column of a mart, so a difference names its column."""
    cur.execute(
        """
        select column_name from information_schema.columns
        where table_schema = 'marts' and table_name = %s and column_name <> all(%s)
        order by ordinal_position
        """,
        (table, list(BOOKKEEPING_COLUMNS)),
    )
    columns = [name for (name,) in cur.fetchall()]
    # Rows in one order on both servers, whatever their collations: by every column's text.
    order_by = ", ".join(f'"{c}"::text collate "C"' for c in columns)
    digests = ", ".join(f"""md5(string_agg(coalesce("{c}"::text, 'NULL'), '|' order by {order_by}))""" for c in columns)
    cur.execute(f"select count(*), {digests} from marts.{table}")
    count, *values = cur.fetchone()
    return {"rows": count, "columns": dict(zip(columns, values, strict=True))}


def _snapshot(dsn: str) -> dict:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        # Timestamps become text in the session's time zone; both servers must agree on it.
        cur.execute("set timezone = 'UTC'")
        out = {
            "kpi_daily": _checksums(cur, "kpi_daily"),
            "fct_tickets": _checksums(cur, "fct_tickets"),
        }
        # The reviews as the drift DAG opened them (what a manager does next is not the pipeline's).
        cur.execute(
            """
            select coalesce(json_agg(json_build_array(review_id, segment, metric, since, detected_on)
                order by review_id), '[]') from monitoring.improvement_reviews
            """
        )
        out["reviews"] = cur.fetchone()[0]
        cur.execute(
            """
            select json_agg(json_build_array(batch_id, rows_read, rows_loaded, rows_quarantined) order by batch_id)
            from ops.batches
            """
        )
        out["batches"] = cur.fetchone()[0]
    return out


def _embedded_run(home: Path) -> subprocess.Popen:
    env = {**os.environ, "SERVICELOOP_HOME": str(home), **SHARED_KEY}
    for key in ("AIRFLOW_HOME", "SERVICELOOP_WAREHOUSE_URL", "SERVICELOOP_AIRFLOW_DB", "SERVICELOOP_HELPDESK_DB"):
        env.pop(key, None)
    out = (home / "run.out").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "serviceloop"), "run", *SIMULATION], env=env, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out.close()
    return proc


def _stop_embedded(proc: subprocess.Popen, home: Path) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    env = {**os.environ, "SERVICELOOP_HOME": str(home)}
    env.pop("AIRFLOW_HOME", None)
    env.pop("SERVICELOOP_WAREHOUSE_URL", None)
    subprocess.run([str(BIN / "serviceloop"), "warehouse", "stop"], env=env, capture_output=True, timeout=120)


def _run_distributed(tmp: Path, procs: Processes, names: dict[str, str], role: tuple[str, str], redis_prefix: str):
    import airflow_client.client as api
    from airflow_client.client.api.dag_api import DAGApi
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.api.task_instance_api import TaskInstanceApi
    from airflow_client.client.models.dag_patch_body import DAGPatchBody
    from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

    port = _free_port()
    env = {**os.environ, "SERVICELOOP_HOME": str(tmp / "distributed"), **SHARED_KEY}
    env.pop("AIRFLOW_HOME", None)
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    env.update(
        {
            "SERVICELOOP_WAREHOUSE_URL": _db_url(names["warehouse"], role),
            "SERVICELOOP_AIRFLOW_DB": names["airflow"],
            "SERVICELOOP_HELPDESK_DB": names["helpdesk"],
            "SERVICELOOP_UI_PORT": str(port),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
            "AIRFLOW__CELERY__RESULT_BACKEND": _db_url(names["airflow"], role, "db+postgresql"),
            # Every key the broker writes carries the prefix: a shared Redis stays shared.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": redis_prefix,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__API__WORKERS": "1",
            # One parse of each DAG file is enough here; reparsing only costs CPU.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        }
    )
    prepared = _prepare(env, tmp / "logs" / "prepare.log")
    airflow_env, login = prepared["env"], prepared["login"]
    _serviceloop(env, "simulate", *SIMULATION)
    assert airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(f"/{names['airflow']}")
    airflow = str(BIN / "airflow")

    procs.start("api-server", [airflow, "api-server", "--port", str(port)], airflow_env)
    procs.start("scheduler", [airflow, "scheduler"], airflow_env)
    procs.start("dag-processor", [airflow, "dag-processor"], airflow_env)
    for name in WORKERS:
        worker_env = {
            **airflow_env,
            "SERVICELOOP_WORKER_NAME": name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "serviceloop.airflow_env.worker_hostname",
        }
        # Task logs are files in the shared AIRFLOW_HOME; two workers on one host would
        # otherwise contend for the log server's port.
        args = [airflow, "celery", "worker", "-H", f"{name}@%h", "--skip-serve-logs"]
        procs.start(name, args, worker_env)

    base = f"http://127.0.0.1:{port}"
    _wait_for_api(base, procs)
    config = api.Configuration(host=base, access_token=_token(base, *login))
    with api.ApiClient(config) as client:
        dags, runs, tis = DAGApi(client), DagRunApi(client), TaskInstanceApi(client)
        deadline = time.monotonic() + 240
        # The pipeline's three DAGs (the weekly report DAG is parsed too, and stays paused).
        while not set(DAG_IDS) <= {d.dag_id for d in dags.get_dags(dag_id_pattern="serviceloop").dags}:
            procs.check_alive()
            assert time.monotonic() < deadline, f"DAGs not parsed:\n{procs.tails(['dag-processor'])}"
            time.sleep(3)

        # Triggered while the DAG is still paused (as DAGs are when first parsed), so the
        # scheduler meets this run before it would create the scheduled one for the day.
        interval_start = PERIOD_END - dt.timedelta(days=1)
        trigger = TriggerDAGRunPostBody(
            dag_run_id=f"distributed__{PERIOD_END:%Y%m%d}",
            logical_date=interval_start,
            data_interval_start=interval_start,
            data_interval_end=PERIOD_END,
            note="tests/test_distributed.py",
        )
        runs.trigger_dag_run("serviceloop_ingest", trigger)
        for dag_id in reversed(DAG_IDS):
            dags.patch_dag(dag_id, DAGPatchBody(is_paused=False))

        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            procs.check_alive()
            by_dag = {dag_id: runs.get_dag_runs(dag_id).dag_runs for dag_id in DAG_IDS}
            failed = [(r.dag_id, r.dag_run_id) for rs in by_dag.values() for r in rs if r.state.value == "failed"]
            assert not failed, f"failed DAG runs {failed}:\n{procs.tails(list(WORKERS))}"
            if any(r.state.value == "success" for r in by_dag["serviceloop_drift"]):
                break
            assert time.monotonic() < deadline, f"no drift run succeeded in {RUN_TIMEOUT} s: {by_dag}"
            time.sleep(5)

        instances = tis.get_task_instances("~", "~", dag_id_prefix_pattern="serviceloop_", limit=1000).task_instances
    return {"runs": by_dag, "task_instances": instances, "warehouse": env["SERVICELOOP_WAREHOUSE_URL"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    redis_client = _servers_or_skip()
    _celery_or_fail()
    tmp = tmp_path_factory.mktemp("distributed")
    tag = f"sl_{uuid.uuid4().hex[:8]}"
    names = {kind: f"{tag}_{kind}" for kind in ("warehouse", "airflow", "helpdesk")}
    redis_prefix = f"{tag}:"
    (tmp / "embedded").mkdir()
    (tmp / "logs").mkdir()
    procs = Processes(tmp / "logs")
    # The embedded default on the same simulation, alongside (it needs nothing shared).
    embedded = _embedded_run(tmp / "embedded")
    role = (tag, uuid.uuid4().hex)
    try:
        # A role of its own, with a password as a server's roles have (dbt's profile needs
        # one); it creates the Airflow and helpdesk databases beside the warehouse.
        _admin(f"create role \"{role[0]}\" login createdb password '{role[1]}'")
        _admin(f'create database "{names["warehouse"]}" owner "{role[0]}"')
        distributed = _run_distributed(tmp, procs, names, role, redis_prefix)
        distributed["snapshot"] = _snapshot(distributed["warehouse"])
        assert embedded.wait(timeout=600) == 0, (tmp / "embedded" / "run.out").read_text()[-4000:]
        url = _serviceloop({**os.environ, "SERVICELOOP_HOME": str(tmp / "embedded")}, "warehouse", "url").strip()
        yield {
            **distributed,
            "embedded": _snapshot(url),
            "embedded_outbox": sorted(p.name for p in (tmp / "embedded" / "outbox").glob("*.opened.eml")),
            "outbox": sorted(p.name for p in (tmp / "distributed" / "outbox").glob("*.opened.eml")),
        }
    finally:
        procs.stop()
        _stop_embedded(embedded, tmp / "embedded")
        for name in names.values():
            _admin(f'drop database if exists "{name}" with (force)')
        _admin(f'drop role if exists "{role[0]}"')
        keys = list(redis_client.scan_iter(match=f"{redis_prefix}*", count=1000))
        if keys:
            redis_client.delete(*keys)


def test_transform_and_drift_ran_through_their_assets_after_the_triggered_ingest(runs):
    (ingest,) = runs["runs"]["serviceloop_ingest"]
    assert ingest.run_type.value == "manual" and ingest.state.value == "success"
    assert ingest.data_interval_end == PERIOD_END
    for dag_id in ("serviceloop_transform", "serviceloop_drift"):
        assert runs["runs"][dag_id], dag_id
        assert {r.run_type.value for r in runs["runs"][dag_id]} == {"asset_triggered"}, dag_id
        assert {r.state.value for r in runs["runs"][dag_id]} == {"success"}, dag_id


def test_tasks_ran_on_both_celery_workers(runs):
    instances = runs["task_instances"]
    succeeded = [ti for ti in instances if ti.state and ti.state.value == "success"]
    # The scheduler marks an EmptyOperator done without sending it to a worker (Cosmos' watcher
    # task group has one, after its dbt build): it records no host. Every other task ran on one.
    ran = [ti for ti in succeeded if ti.operator != "EmptyOperator"]
    assert len(ran) > len(succeeded) // 2
    assert {ti.hostname for ti in ran} == set(WORKERS), {(ti.task_id, ti.hostname) for ti in ran}
    assert {ti.dag_id for ti in instances} == set(DAG_IDS)


def test_marts_and_reviews_equal_those_of_the_embedded_run(runs):
    distributed, embedded = runs["snapshot"], runs["embedded"]
    assert embedded["kpi_daily"]["rows"] > 0 and embedded["fct_tickets"]["rows"] > DAYS * 50
    assert embedded["reviews"], "the injected staffing shortage opened no review"
    for mart in ("kpi_daily", "fct_tickets"):
        differing = {
            c for c, digest in embedded[mart]["columns"].items() if distributed[mart]["columns"].get(c) != digest
        }
        assert distributed[mart]["rows"] == embedded[mart]["rows"], mart
        assert differing == set(), f"marts.{mart}: these columns differ from the embedded run's"
    assert distributed == embedded
    assert runs["outbox"] == runs["embedded_outbox"]
