"""Least privilege and configuration that cannot carry SQL.

The pipeline's role writes its own schemas and nothing else: not ``public``, not another
role's tables, not Airflow's metadata; it creates no roles or databases. Objects an earlier
version created as the administrator are handed over to it. Values from the environment that
become SQL (database names, drift segments and metrics) are checked, and an injection attempt
stops with an error that names the setting. (The analyst role's denials are in
``test_kpis.py``; sources.yml's identifiers in ``test_sources_config.py``; the clock-skew
setting in ``test_faults.py``.)
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from serviceloop import roles, schema


def _as(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


@pytest.fixture
def pipeline_db(fresh_db):
    """A warehouse database with a table an earlier version created as the administrator."""
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn, conn.cursor() as cur:
        cur.execute("create schema raw")
        cur.execute("create table raw.legacy (id int)")
        cur.execute("create table public.not_the_pipelines (id int)")
        roles.ensure_pipeline(conn)
        roles.ensure_analyst(conn, owner=roles.PIPELINE_ROLE)
        conn.commit()
    return fresh_db


def test_the_pipeline_role_owns_its_schemas_and_what_was_in_them(pipeline_db):
    with contextlib.closing(psycopg2.connect(pipeline_db)) as conn, conn.cursor() as cur:
        cur.execute(
            "select nspname, pg_get_userbyid(nspowner) from pg_namespace where nspname = any(%s)",
            (list(roles.PIPELINE_SCHEMAS),),
        )
        assert dict(cur.fetchall()) == dict.fromkeys(roles.PIPELINE_SCHEMAS, roles.PIPELINE_ROLE)
        cur.execute("select tableowner from pg_tables where schemaname = 'raw' and tablename = 'legacy'")
        assert cur.fetchone() == (roles.PIPELINE_ROLE,)
        cur.execute(
            "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles where rolname = %s",
            (roles.PIPELINE_ROLE,),
        )
        assert cur.fetchone() == (False, False, False, False)


def test_the_pipeline_role_builds_its_schemas_and_writes_nothing_else(pipeline_db, warehouse_url):
    url = _as(pipeline_db, roles.PIPELINE_ROLE)
    with contextlib.closing(psycopg2.connect(url)) as conn:
        schema.ensure(conn)  # every table, function and the key, as the pipeline's role
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("insert into raw.legacy values (1)")
            cur.execute("create table staging.scratch as select 1 as x")
            cur.execute("drop table staging.scratch")
            conn.commit()
            denied = {
                "create table public.x (id int)": psycopg2.errors.InsufficientPrivilege,
                "insert into public.not_the_pipelines values (1)": psycopg2.errors.InsufficientPrivilege,
                "select * from public.not_the_pipelines": psycopg2.errors.InsufficientPrivilege,
                "create role intruder": psycopg2.errors.InsufficientPrivilege,
                "create database intruder": psycopg2.errors.InsufficientPrivilege,
                "alter role analyst set default_transaction_read_only = off": psycopg2.errors.InsufficientPrivilege,
                "set role postgres": psycopg2.errors.InsufficientPrivilege,
                "select pg_read_file('postmaster.pid')": psycopg2.errors.InsufficientPrivilege,
                "copy raw.legacy to '/tmp/serviceloop-exfiltrated'": psycopg2.errors.InsufficientPrivilege,
            }
            conn.autocommit = True  # create database refuses to run in a transaction
            for statement, error in denied.items():
                with pytest.raises(error):
                    cur.execute(statement)
    # Airflow's metadata (another database, the administrator's tables): no access either.
    from serviceloop.settings import AIRFLOW_DB

    airflow = make_url(warehouse_url).set(database=AIRFLOW_DB).render_as_string(hide_password=False)
    with contextlib.closing(psycopg2.connect(airflow)) as conn, conn.cursor() as cur:
        cur.execute("create table if not exists public.serviceloop_probe (id int)")
        conn.commit()
    with contextlib.closing(psycopg2.connect(_as(airflow, roles.PIPELINE_ROLE))) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("select * from public.serviceloop_probe")
        conn.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("create table public.x (id int)")


def test_the_analyst_reads_what_the_pipeline_builds_later(pipeline_db):
    with contextlib.closing(psycopg2.connect(_as(pipeline_db, roles.PIPELINE_ROLE))) as conn, conn.cursor() as cur:
        cur.execute("create table marts.kpi_new as select 1 as x")
        conn.commit()
    with contextlib.closing(psycopg2.connect(roles.analyst_url(pipeline_db))) as conn, conn.cursor() as cur:
        cur.execute("select x from marts.kpi_new")
        assert cur.fetchone() == (1,)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("select * from raw.legacy")


def test_the_embedded_warehouse_connection_logs_in_as_the_pipeline_role(warehouse_url):
    from serviceloop import airflow_env, warehouse

    parts = warehouse.connection_parts()
    assert parts["login"] == roles.PIPELINE_ROLE and parts["password"] == warehouse.pipeline_password()
    assert airflow_env.dbt_profile_env()["SERVICELOOP_PG_USER"] == roles.PIPELINE_ROLE
    # Airflow's own metadata stays with the administrator.
    assert warehouse.connection_parts(warehouse.AIRFLOW_DB)["login"] == "postgres"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SERVICELOOP_HELPDESK_DB", 'helpdesk"; drop database serviceloop; --', "is not a plain database name"),
        ("SERVICELOOP_AIRFLOW_DB", "airflow db", "is not a plain database name"),
    ],
)
def test_a_database_name_that_is_not_an_identifier_is_refused(variable, value, message):
    code = "import serviceloop.settings"
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**__import__("os").environ, variable: value}, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert f"{variable}: {value!r} {message}" in proc.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SERVICELOOP_DRIFT_SEGMENTS", "team; drop table marts.fct_tickets", "unknown segment dimension"),
        ("SERVICELOOP_DRIFT_SEGMENTS", 'team*"channel"', "unknown segment dimension"),
        ("SERVICELOOP_DRIFT_METRICS", "resolution_time,csat) from marts.x; --", "unknown drift metric"),
    ],
)
def test_drift_settings_that_would_become_sql_are_refused(monkeypatch, variable, value, message):
    from serviceloop import drift

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=message):
        drift.config_from_env()
