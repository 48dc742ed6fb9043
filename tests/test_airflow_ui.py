"""`make up`: the Airflow UI answers on loopback with the pipeline's DAGs and the printed login."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post_json(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_up_serves_the_dags_to_the_printed_login_and_down_stops_it(tmp_path):
    port = _free_port()
    env = {**os.environ, "SERVICELOOP_HOME": str(tmp_path), "SERVICELOOP_UI_PORT": str(port)}
    env.pop("AIRFLOW_HOME", None)
    cli = str(Path(sys.executable).with_name("serviceloop"))
    try:
        up = subprocess.run([cli, "up"], env=env, capture_output=True, text=True, timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        login = re.search(rf"http://127\.0\.0\.1:{port}\s+login: (\S+) / (\S+)", up.stdout)
        assert login, up.stdout
        base = f"http://127.0.0.1:{port}"
        status, _ = _post_json(f"{base}/auth/token", {"username": login.group(1), "password": "wrong"})
        assert status == 401
        status, token = _post_json(f"{base}/auth/token", {"username": login.group(1), "password": login.group(2)})
        assert status in (200, 201)
        request = urllib.request.Request(
            f"{base}/api/v2/dags", headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        dag_ids: set[str] = set()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(dag_ids) < 4:
            with urllib.request.urlopen(request, timeout=10) as resp:
                dag_ids = {d["dag_id"] for d in json.loads(resp.read())["dags"]}
            time.sleep(3)
        assert dag_ids == {"serviceloop_ingest", "serviceloop_transform", "serviceloop_drift", "serviceloop_report"}
    finally:
        down = subprocess.run([cli, "down", "--warehouse"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3)
