"""The pipeline's steps driven directly, as the DAG tasks run them, for the reliability tests.

Ingest (every source entity of one data interval), dbt (a subprocess, as Cosmos runs it),
drift, reviews, effect measurement and alerts, each on a warehouse database of its own and
as the pipeline's role. Airflow is left out so that sixty daily runs take minutes.

Also a script, so that a backfill can run beside the test in a process of its own:
``python tests/pipeline_driver.py backfill <drops> <first end> <days>``, with the warehouse's and
the helpdesk's URLs (passwords included) in ``RELIABILITY_WAREHOUSE_URL`` and
``RELIABILITY_SOURCE_URL``: secrets do not go on a command line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

DBT_PROJECT = Path(__file__).resolve().parents[1] / "dbt_project"
DAY = dt.timedelta(days=1)
log = logging.getLogger("serviceloop.tests.driver")


def admin_url(url: str) -> str:
    return make_url(url).set(database="postgres", username="postgres", password=None).render_as_string(False)


def create_database(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with contextlib.closing(psycopg2.connect(admin_url(server_url))) as conn:
        conn.autocommit = True
        conn.cursor().execute(f'create database "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def copy_database(url: str, prefix: str) -> str:
    """A copy of a database (nobody may be connected to it meanwhile)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with contextlib.closing(psycopg2.connect(admin_url(url))) as conn:
        conn.autocommit = True
        conn.cursor().execute(f'create database "{name}" template "{make_url(url).database}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    with contextlib.closing(psycopg2.connect(admin_url(url))) as conn:
        conn.autocommit = True
        conn.cursor().execute(f'drop database if exists "{make_url(url).database}" with (force)')


def as_role(url: str, role: str, password: str | None = None) -> str:
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def prepare(url: str, pipeline_password: str | None = None) -> str:
    """The pipeline's and the analyst's roles on a fresh warehouse database, its schemas; returns
    the URL as the pipeline's role."""
    from serviceloop import roles, schema

    with contextlib.closing(psycopg2.connect(as_role(url, "postgres"))) as conn:
        roles.ensure_pipeline(conn, password=pipeline_password)
        roles.ensure_analyst(conn, owner=roles.PIPELINE_ROLE)
        conn.commit()
    pipeline = as_role(url, roles.PIPELINE_ROLE, pipeline_password)
    with contextlib.closing(psycopg2.connect(pipeline)) as conn:
        schema.ensure(conn)
        conn.commit()
    return pipeline


def ingest_interval(url: str, source_dsn: str, drops: Path, end: dt.datetime) -> list[dict]:
    """Every enabled source entity's batch of the day ending at ``end``, each committed on its own."""
    from serviceloop.ingest import ingest_batch
    from serviceloop.sources import SCHEDULED

    results = []
    with contextlib.closing(psycopg2.connect(url)) as conn:
        for source in SCHEDULED.values():
            if source.kind == "rest_api":
                continue
            for entity in source.entities:
                result = ingest_batch(
                    conn, source.name, entity.name, end - DAY, end, source_dsn=source_dsn, drop_root=drops
                )
                conn.commit()
                # What the task would return, and Airflow would log.
                log.info("ingest %s__%s returned %s", source.name, entity.name, json.dumps(result.as_dict()))
                results.append(result.as_dict())
    return results


def dbt_env(url: str) -> dict[str, str]:
    u = make_url(url)
    return {
        **os.environ,
        "SERVICELOOP_PG_HOST": u.host or u.query["host"],
        "SERVICELOOP_PG_PORT": str(u.port or 5432),
        "SERVICELOOP_PG_USER": u.username or "postgres",
        "SERVICELOOP_PG_PASSWORD": u.password or "unused-on-the-trusted-socket",
        "SERVICELOOP_PG_DBNAME": u.database,
    }


def dbt_command(target: Path, *args: str) -> list[str]:
    return [
        str(Path(sys.executable).with_name("dbt")), *args, "--project-dir", str(DBT_PROJECT),
        "--profiles-dir", str(DBT_PROJECT), "--target-path", str(target), "--log-path", str(target / "logs"),
    ]  # fmt: skip


def dbt(url: str, target: Path, *args: str) -> str:
    proc = subprocess.run(
        dbt_command(target, *args), env=dbt_env(url), capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc.stdout


def monitor(url: str, reports: Path, outbox: Path, connections=None) -> dict:
    """What serviceloop_drift runs after a transform: drift, reviews, effects, alerts."""
    from serviceloop import alerts, drift, reviews, verification

    with contextlib.closing(psycopg2.connect(url)) as conn:
        found = drift.run(conn, reports_dir=reports).as_dict()
        conn.commit()
        opened = reviews.open_from_findings(conn, found["finding_ids"]).as_dict()
        conn.commit()
        measured = verification.measure(conn).as_dict()
        conn.commit()
        sent = alerts.send_review_alerts(conn, opened.get("opened"), outbox=outbox, connections=connections).as_dict()
        conn.commit()
    for step, value in (("drift", found), ("reviews", opened), ("effects", measured), ("alerts", sent)):
        log.info("%s returned %s", step, json.dumps(value, default=str))
    return {"drift": found, "reviews": opened, "effects": measured, "alerts": sent}


def backfill(url: str, source_dsn: str, drops: Path, first_end: dt.datetime, days: int) -> None:
    """The intervals ending at first_end, first_end + 1 day, ..., one after the other."""
    for i in range(days):
        ingest_interval(url, source_dsn, drops, first_end + i * DAY)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command, *args = argv
    if command != "backfill":
        raise SystemExit(f"unknown command {command!r}")
    drops, first_end, days = args
    url, source_dsn = os.environ["RELIABILITY_WAREHOUSE_URL"], os.environ["RELIABILITY_SOURCE_URL"]
    backfill(url, source_dsn, Path(drops), dt.datetime.fromisoformat(first_end), int(days))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
