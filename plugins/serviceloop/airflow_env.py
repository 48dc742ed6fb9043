"""The Airflow installation of the embedded default: its environment, metadata DB and UI.

Airflow runs from the project's virtualenv with ``AIRFLOW_HOME`` in the state folder and its
metadata in the ``serviceloop_airflow`` database of the warehouse server. Connections are
passed as ``AIRFLOW_CONN_*`` environment variables built from the warehouse settings, and
generated secrets (Fernet key, API secrets, the UI password) are kept in the state folder,
never in the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from serviceloop import warehouse
from serviceloop.settings import AIRFLOW_DB, HELPDESK_CONN_ID, HELPDESK_DB, WAREHOUSE_CONN_ID, WAREHOUSE_DB, paths
from serviceloop.transform import COSMOS_SETTINGS

UI_HOST = "127.0.0.1"
UI_PORT = int(os.environ.get("SERVICELOOP_UI_PORT", "8080"))
UI_USER = "admin"


def _secrets() -> dict:
    path = paths().airflow_home / "serviceloop_secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    from cryptography.fernet import Fernet

    values = {
        "fernet_key": Fernet.generate_key().decode(),
        "api_secret_key": secrets.token_urlsafe(32),
        "jwt_secret": secrets.token_urlsafe(32),
        "ui_password": secrets.token_urlsafe(12),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(values))
    return values


def _connection(database: str) -> str:
    parts = warehouse.connection_parts(database)
    return json.dumps({"conn_type": "postgres", **parts})


def dbt_profile_env() -> dict[str, str]:
    """What ``dbt_project/profiles.yml`` reads, for running dbt outside Airflow."""
    parts = warehouse.connection_parts(WAREHOUSE_DB)
    return {
        "SERVICELOOP_PG_HOST": str(parts["host"]),
        "SERVICELOOP_PG_PORT": str(parts["port"]),
        "SERVICELOOP_PG_USER": parts["login"],
        "SERVICELOOP_PG_PASSWORD": parts["password"],
        "SERVICELOOP_PG_DBNAME": parts["schema"],
        "DBT_PROFILES_DIR": str(paths().dbt_project),
    }


def environment() -> dict[str, str]:
    p = paths()
    sec = _secrets()
    home = p.airflow_home
    passwords = home / "simple_auth_manager_passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({UI_USER: sec["ui_password"]}))
    env = dict(os.environ)
    env.update(
        {
            # Airflow starts its own components by name (`airflow scheduler`, ...): the
            # virtualenv's bin comes first so they are this installation's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "SERVICELOOP_HOME": str(p.home),
            "XDG_RUNTIME_DIR": env.get("XDG_RUNTIME_DIR", "/tmp"),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(p.dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(p.repo / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": env.get("AIRFLOW__CORE__EXECUTOR", "LocalExecutor"),
            "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__SECRET_KEY": sec["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
            "AIRFLOW__API__HOST": UI_HOST,
            "AIRFLOW__API__PORT": str(UI_PORT),
            "AIRFLOW__API__BASE_URL": f"http://{UI_HOST}:{UI_PORT}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{UI_HOST}:{UI_PORT}/execution/",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            # Cosmos keeps dbt's partial-parse state in a cache shared by default by everything
            # on the machine (/tmp/cosmos); installations with other warehouses would keep
            # invalidating each other's and every dbt task would parse the project anew.
            "AIRFLOW__COSMOS__CACHE_DIR": env.get("AIRFLOW__COSMOS__CACHE_DIR", str(p.home / "cosmos")),
            **{key: env.get(key, value) for key, value in COSMOS_SETTINGS.items()},
            f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}": _connection(WAREHOUSE_DB),
            f"AIRFLOW_CONN_{HELPDESK_CONN_ID.upper()}": _connection(HELPDESK_DB),
            "DO_NOT_TRACK": "1",
            "SCARF_ANALYTICS": "false",
            "GX_ANALYTICS_ENABLED": "False",
            **dbt_profile_env(),
        }
    )
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", warehouse.sqlalchemy_url(AIRFLOW_DB))
    return env


def worker_hostname() -> str:
    """The host a task instance records: ``SERVICELOOP_WORKER_NAME`` when set, else the FQDN.

    Set as ``AIRFLOW__CORE__HOSTNAME_CALLABLE=serviceloop.airflow_env.worker_hostname``, it
    tells apart several Celery workers on one machine, which would all report its FQDN.
    """
    import socket

    return os.environ.get("SERVICELOOP_WORKER_NAME") or socket.getfqdn()


def airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else (shutil.which("airflow") or "airflow")


def airflow_command() -> list[str]:
    """``airflow`` for a command that returns (``dags test``): ends without the interpreter's teardown."""
    return [sys.executable, "-m", "serviceloop.airflow_cli"]


def dbt_bin() -> str:
    candidate = Path(sys.executable).with_name("dbt")
    return str(candidate) if candidate.exists() else (shutil.which("dbt") or "dbt")


def run_logged(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Run a command with its output in a log file; returns the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"\n$ {' '.join(args)}\n".encode())
        out.flush()
        return subprocess.run(args, env=env or environment(), stdout=out, stderr=subprocess.STDOUT).returncode


def migrate(log_path: Path) -> None:
    """Bring Airflow's metadata DB up to date (a no-op after the first time for this version)."""
    import airflow

    marker = paths().airflow_home / ".migrated"
    stamp = f"{airflow.__version__} {warehouse.display_url(AIRFLOW_DB)}"
    if marker.exists() and marker.read_text() == stamp:
        return
    if run_logged([airflow_bin(), "db", "migrate"], log_path) != 0:
        raise RuntimeError(f"`airflow db migrate` failed; see {log_path}")
    marker.write_text(stamp)


def dbt_parse(log_path: Path) -> Path:
    """Write the dbt manifest the transform DAG is laid out from."""
    p = paths()
    args = [
        dbt_bin(), "parse", "--project-dir", str(p.dbt_project), "--profiles-dir", str(p.dbt_project),
        "--target-path", str(p.dbt_target), "--target", "warehouse",
    ]  # fmt: skip
    if run_logged(args, log_path) != 0:
        raise RuntimeError(f"`dbt parse` failed; see {log_path}")
    return p.dbt_manifest


def dags_test(dag_id: str, logical_date: str, log_path: Path) -> None:
    code = run_logged([*airflow_command(), "dags", "test", dag_id, logical_date], log_path)
    if code != 0:
        raise RuntimeError(f"DAG {dag_id} failed for {logical_date}; its task logs are in {log_path}")


def _pidfile() -> Path:
    return paths().airflow_home / "standalone.pid"


def up(log_path: Path) -> int:
    """Start the Airflow UI, scheduler, DAG processor and triggerer in the background."""
    pidfile = _pidfile()
    if pidfile.exists():
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, 0)
            return pid
        except ProcessLookupError:
            pidfile.unlink()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = log_path.open("ab")
    proc = subprocess.Popen(
        [airflow_bin(), "standalone"], env=environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    pidfile.write_text(str(proc.pid))
    return proc.pid


def wait_for_ui(timeout: float = 180) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{UI_HOST}:{UI_PORT}/api/v2/monitor/health", timeout=3) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(2)
    return False


def down() -> bool:
    pidfile = _pidfile()
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(30):
            time.sleep(1)
            os.killpg(pid, 0)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return True


def ui_login() -> tuple[str, str]:
    return UI_USER, _secrets()["ui_password"]
