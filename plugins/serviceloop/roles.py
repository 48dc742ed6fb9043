"""The read-only ``analyst`` role: analysts query the marts and nothing else.

The role may connect to the warehouse database and read every table and view in the
``marts`` schema, including the ones dbt creates later (default privileges of the role that
runs dbt). It gets nothing on ``raw``, ``quarantine``, ``ops``, ``monitoring`` or the other
dbt schemas, and its sessions are read-only. On the embedded warehouse it logs in over the
unix socket (trusted); on a server of your own set ``SERVICELOOP_ANALYST_PASSWORD`` before
``serviceloop prepare`` to give it a password.
"""

from __future__ import annotations

import os

from psycopg2 import sql

ANALYST_ROLE = "analyst"
ANALYST_PASSWORD_ENV = "SERVICELOOP_ANALYST_PASSWORD"
READABLE_SCHEMAS = ("marts",)
# Schemas an analyst must not read; any earlier grant on them is taken back.
PRIVATE_SCHEMAS = ("raw", "quarantine", "ops", "monitoring", "staging", "intermediate", "reference")


def ensure_analyst(conn, role: str = ANALYST_ROLE, password: str | None = None) -> None:
    """Create or update the read-only role; idempotent. The caller commits."""
    password = password if password is not None else os.environ.get(ANALYST_PASSWORD_ENV)
    ident = sql.Identifier(role)
    with conn.cursor() as cur:
        cur.execute("select current_database(), current_user")
        database, owner = cur.fetchone()
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
            cur.execute(sql.SQL("create schema if not exists {}").format(schema_ident))
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
