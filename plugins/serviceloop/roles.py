"""The warehouse's roles: the pipeline writes its own schemas, analysts read the marts.

**The pipeline's role** (``serviceloop_pipeline`` on the embedded warehouse) is what the
DAGs' connection, dbt and the ``serviceloop`` commands log in as. It is no superuser and may
not create roles or databases. It owns the pipeline's schemas (``PIPELINE_SCHEMAS``: raw,
quarantine, ops, landing, monitoring and dbt's staging, intermediate, marts, reference) and
everything in them, and may create schemas in the warehouse database (dbt creates its own on
a first run). It has no privilege on ``public``, on other databases' tables (Airflow's
metadata, the helpdesk) or on anything another role owns. ``ensure_pipeline`` sets it up as
an administrator (the embedded server's ``postgres``; ``serviceloop prepare``) and hands over
what an earlier version created as the administrator. On a server of your own the role in
``SERVICELOOP_WAREHOUSE_URL`` is the pipeline's role: make it a plain role that owns the
warehouse database's pipeline schemas, not a superuser.

**The read-only ``analyst`` role** may connect to the warehouse database and read every table
and view in the ``marts`` schema, including the ones dbt creates later (default privileges of
the role that runs dbt). It gets nothing on ``raw``, ``quarantine``, ``ops``, ``monitoring`` or
the other dbt schemas, and its sessions are read-only. On the embedded warehouse it logs in
over the unix socket (trusted); on a server of your own set ``SERVICELOOP_ANALYST_PASSWORD``
before ``serviceloop prepare`` to give it a password.
"""

from __future__ import annotations

import os

from psycopg2 import sql

PIPELINE_ROLE = "serviceloop_pipeline"
# Everything the pipeline writes; dbt's schemas are named in dbt_project.yml.
PIPELINE_SCHEMAS = (
    "raw",
    "quarantine",
    "ops",
    "landing",
    "monitoring",
    "staging",
    "intermediate",
    "marts",
    "reference",
)
ANALYST_ROLE = "analyst"
ANALYST_PASSWORD_ENV = "SERVICELOOP_ANALYST_PASSWORD"
READABLE_SCHEMAS = ("marts",)
# Schemas an analyst must not read; any earlier grant on them is taken back.
PRIVATE_SCHEMAS = ("raw", "quarantine", "ops", "landing", "monitoring", "staging", "intermediate", "reference")


# Relation kinds and how ALTER names them.
_RELATION_KINDS = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
}


def ensure_pipeline(conn, role: str = PIPELINE_ROLE, password: str | None = None) -> None:
    """Create or update the pipeline's role, as an administrator; idempotent. The caller commits.

    The role gets its schemas and whatever is in them (created before as the administrator),
    connect, create and temporary on the warehouse database, and nothing else.
    """
    ident = sql.Identifier(role)
    with conn.cursor() as cur:
        cur.execute("select current_database()")
        (database,) = cur.fetchone()
        cur.execute("select 1 from pg_roles where rolname = %s", (role,))
        if cur.fetchone() is None:
            cur.execute(
                sql.SQL(
                    "create role {} login nosuperuser nocreatedb nocreaterole noinherit noreplication nobypassrls"
                ).format(ident)
            )
        if password:
            cur.execute(sql.SQL("alter role {} password %s").format(ident), (password,))
        cur.execute(
            sql.SQL("grant connect, create, temporary on database {} to {}").format(sql.Identifier(database), ident)
        )
        for schema in PIPELINE_SCHEMAS:
            schema_ident = sql.Identifier(schema)
            cur.execute(sql.SQL("create schema if not exists {} authorization {}").format(schema_ident, ident))
            cur.execute(sql.SQL("alter schema {} owner to {}").format(schema_ident, ident))
        cur.execute(
            """
            select c.relkind, n.nspname, c.relname from pg_class as c
            join pg_namespace as n on n.oid = c.relnamespace
            where n.nspname = any(%s) and c.relkind = any(%s) and c.relowner <> %s::regrole
            """,
            (list(PIPELINE_SCHEMAS), list(_RELATION_KINDS), role),
        )
        for kind, schema, name in cur.fetchall():
            cur.execute(
                sql.SQL("alter {} {} owner to {}").format(
                    sql.SQL(_RELATION_KINDS[kind]), sql.Identifier(schema, name), ident
                )
            )
        cur.execute(
            """
            select p.oid::regprocedure::text from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace
            where n.nspname = any(%s) and p.proowner <> %s::regrole
            """,
            (list(PIPELINE_SCHEMAS), role),
        )
        for (signature,) in cur.fetchall():
            # regprocedure's text is the function's qualified, quoted signature.
            cur.execute(sql.SQL("alter function {} owner to {}").format(sql.SQL(signature), ident))


def ensure_analyst(conn, role: str = ANALYST_ROLE, password: str | None = None, owner: str | None = None) -> None:
    """Create or update the read-only role; idempotent. The caller commits.

    ``owner`` is the role that builds the marts (default: the connected one): tables it
    creates later are readable by the analyst too.
    """
    password = password if password is not None else os.environ.get(ANALYST_PASSWORD_ENV)
    ident = sql.Identifier(role)
    with conn.cursor() as cur:
        cur.execute("select current_database(), current_user")
        database, current = cur.fetchone()
        owner = owner or current
        cur.execute("select 1 from pg_roles where rolname = %s", (role,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("create role {} login nosuperuser nocreatedb nocreaterole noinherit").format(ident))
        if password:
            cur.execute(sql.SQL("alter role {} password %s").format(ident), (password,))
        cur.execute(sql.SQL("alter role {} set default_transaction_read_only = on").format(ident))
        cur.execute(sql.SQL("grant connect on database {} to {}").format(sql.Identifier(database), ident))
        for schema in READABLE_SCHEMAS:
            schema_ident = sql.Identifier(schema)
            # dbt creates the schema on its first run; creating it here lets the grants
            # and default privileges exist before that.
            cur.execute(
                sql.SQL("create schema if not exists {} authorization {}").format(schema_ident, sql.Identifier(owner))
            )
            cur.execute(sql.SQL("grant usage on schema {} to {}").format(schema_ident, ident))
            cur.execute(sql.SQL("grant select on all tables in schema {} to {}").format(schema_ident, ident))
            cur.execute(
                sql.SQL("alter default privileges for role {} in schema {} grant select on tables to {}").format(
                    sql.Identifier(owner), schema_ident, ident
                )
            )
        cur.execute("select nspname from pg_namespace where nspname = any(%s)", (list(PRIVATE_SCHEMAS),))
        for (schema,) in cur.fetchall():
            schema_ident = sql.Identifier(schema)
            cur.execute(sql.SQL("revoke all on all tables in schema {} from {}").format(schema_ident, ident))
            cur.execute(sql.SQL("revoke all on schema {} from {}").format(schema_ident, ident))


def analyst_url(warehouse_url: str, role: str = ANALYST_ROLE) -> str:
    """The warehouse URL with the analyst as user (and no password: give it to psql yourself)."""
    from sqlalchemy.engine import make_url

    return make_url(warehouse_url).set(username=role, password=None).render_as_string(hide_password=False)
