"""Where ServiceLoop keeps things, read from the environment with sensible defaults.

Everything a run creates lives under one state folder (``SERVICELOOP_HOME``, by default
``.serviceloop/`` in the repository): the embedded warehouse's data directory, Airflow's
home, the drift reports, the alert outbox and the simulated source systems' file drops.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _path(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).resolve() if value else default


@dataclass(frozen=True)
class Paths:
    home: Path
    repo: Path

    @property
    def pgdata(self) -> Path:
        return self.home / "warehouse" / "pgdata"

    @property
    def warehouse_credentials(self) -> Path:
        return self.home / "warehouse" / "credentials.json"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def data_docs(self) -> Path:
        """Great Expectations' Data Docs: one page per validated batch, and an index."""
        return self.reports / "data-docs"

    @property
    def evidently_workspace(self) -> Path:
        """The Evidently workspace the drift monitor adds its snapshots to (``make evidently-ui``)."""
        return self.home / "evidently"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    @property
    def drops(self) -> Path:
        return self.home / "drops"

    @property
    def survey_drop(self) -> Path:
        return self.drops / "surveys"

    @property
    def ground_truth(self) -> Path:
        return self.home / "simulation" / "ground_truth.json"

    @property
    def dags(self) -> Path:
        return _path("SERVICELOOP_DAGS_DIR", self.repo / "dags")

    @property
    def dbt_project(self) -> Path:
        return _path("SERVICELOOP_DBT_PROJECT_DIR", self.repo / "dbt_project")

    @property
    def expectations(self) -> Path:
        return _path("SERVICELOOP_EXPECTATIONS_DIR", self.repo / "expectations")

    @property
    def dbt_target(self) -> Path:
        # An image can carry the manifest it was built with outside the state folder.
        return _path("SERVICELOOP_DBT_TARGET_DIR", self.home / "dbt" / "target")

    @property
    def dbt_manifest(self) -> Path:
        return self.dbt_target / "manifest.json"


def paths() -> Paths:
    return Paths(home=_path("SERVICELOOP_HOME", REPO_ROOT / ".serviceloop"), repo=REPO_ROOT)


# Names of the Airflow connections the DAGs use; `serviceloop` defines them for the
# embedded default, a deployment defines them in its secrets backend.
WAREHOUSE_CONN_ID = "serviceloop_warehouse"
HELPDESK_CONN_ID = "serviceloop_helpdesk"

# A database name from the environment becomes an identifier in `create database`: only plain
# names are accepted.
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def database_name(env: str, default: str) -> str:
    """The database named by ``env`` (or ``default``); anything but a plain SQL identifier is refused."""
    value = os.environ.get(env, default)
    if not _DATABASE_NAME.fullmatch(value):
        raise ValueError(f"{env}: {value!r} is not a plain database name (letters, digits and _, at most 63)")
    return value


WAREHOUSE_DB = "serviceloop"
# Airflow's metadata and the simulated helpdesk sit beside the warehouse on its server; on a
# shared server their names can be set so that several installations do not collide.
AIRFLOW_DB = database_name("SERVICELOOP_AIRFLOW_DB", "serviceloop_airflow")
HELPDESK_DB = database_name("SERVICELOOP_HELPDESK_DB", "helpdesk")
