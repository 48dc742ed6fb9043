"""DDL of the schemas ServiceLoop owns in the warehouse (dbt owns staging, intermediate and marts).

- ``raw``: one append-only table per source and entity, contract columns plus batch metadata;
- ``quarantine``: the rows validation rejected, with the original record and the rules it broke;
- ``ops``: the batch registry, which also holds each extraction's window (the watermark);
- ``monitoring``: drift runs and findings, improvement reviews and the alerts they sent.
"""

from __future__ import annotations

import hashlib

from serviceloop import privacy
from serviceloop.contract import ISO_TIMESTAMP_RE, Entity
from serviceloop.sources import SOURCES, raw_table

OPS_DDL = """
create schema if not exists ops;
create table if not exists ops.batches (
    batch_id text primary key,
    source text not null,
    entity text not null,
    interval_start timestamptz not null,
    interval_end timestamptz not null,
    window_start timestamptz,
    window_end timestamptz not null,
    rows_read integer not null,
    rows_loaded integer not null,
    rows_quarantined integer not null,
    max_watermark timestamptz,
    loaded_at timestamptz not null default now()
);
create index if not exists batches_source_entity on ops.batches (source, entity, window_end);
-- The files a drop's batches read, by the SHA-256 of their bytes: content is loaded once,
-- whatever the file's name; a file with content loaded before is kept as a duplicate.
create table if not exists ops.drop_manifest (
    source text not null,
    file_name text not null,
    checksum text not null,
    size_bytes bigint not null,
    batch_id text not null,
    duplicate_of text,
    rows_read integer,
    encodings text[],
    warnings text[],
    seen_at timestamptz not null default now(),
    primary key (source, file_name, checksum)
);
create unique index if not exists drop_manifest_loaded_once
    on ops.drop_manifest (source, checksum) where duplicate_of is null;
create index if not exists drop_manifest_batch on ops.drop_manifest (source, batch_id);
"""

MONITORING_DDL = """
create schema if not exists monitoring;
create table if not exists monitoring.drift_runs (
    run_id text primary key,
    as_of date not null,
    segment_type text not null,
    segment text not null,
    reference_start date not null,
    reference_end date not null,
    current_start date not null,
    current_end date not null,
    report_path text,
    evaluated_at timestamptz not null default now()
);
create table if not exists monitoring.drift_findings (
    finding_id text primary key,
    run_id text not null references monitoring.drift_runs (run_id) on delete cascade,
    as_of date not null,
    segment_type text not null,
    segment text not null,
    metric text not null,
    method text not null,
    p_value double precision,
    drifted boolean not null,
    reference_n integer not null,
    current_n integer not null,
    reference_value double precision,
    current_value double precision,
    effect double precision,
    effect_unit text not null,
    direction text not null,
    is_finding boolean not null,
    since date,
    report_path text
);
create index if not exists drift_findings_segment on monitoring.drift_findings (segment_type, segment, metric, as_of);
-- The test statistic, the window that decided (standard or fast) and the attribution; added
-- after the first release, checked first so that an upgraded warehouse takes no lock.
do $$ begin
    if not exists (select from information_schema.columns where table_schema = 'monitoring'
                   and table_name = 'drift_findings' and column_name = 'statistic') then
        alter table monitoring.drift_findings
            add column statistic double precision,
            add column window_name text,
            add column window_start date,
            add column stage_moved text,
            add column causes_grew text[];
    end if;
end $$;
create table if not exists monitoring.improvement_reviews (
    review_id text primary key,
    segment_type text not null,
    segment text not null,
    metric text not null,
    status text not null default 'open'
        check (status in ('open', 'acknowledged', 'action_planned', 'implemented', 'verified', 'dismissed')),
    severity text not null,
    owner_name text,
    owner_email text,
    detected_on date not null,
    since date,
    due_date date not null,
    reference_value double precision,
    current_value double precision,
    effect double precision,
    effect_unit text,
    report_path text,
    opened_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create unique index if not exists one_open_review_per_segment_metric
    on monitoring.improvement_reviews (segment_type, segment, metric)
    where status not in ('verified', 'dismissed');
create table if not exists monitoring.review_evidence (
    review_id text not null references monitoring.improvement_reviews (review_id) on delete cascade,
    finding_id text not null,
    added_at timestamptz not null default now(),
    primary key (review_id, finding_id)
);
create table if not exists monitoring.review_history (
    review_id text not null references monitoring.improvement_reviews (review_id) on delete cascade,
    status text not null,
    note text,
    changed_at timestamptz not null default now()
);
create table if not exists monitoring.alerts (
    alert_key text primary key,
    review_id text references monitoring.improvement_reviews (review_id) on delete cascade,
    kind text not null,
    route text not null,
    recipient text not null,
    subject text not null,
    location text not null,
    sent_at timestamptz not null default now()
);
-- Added after the first release: existing warehouses upgrade in place.
alter table monitoring.improvement_reviews
    add column if not exists stage text,
    add column if not exists top_causes jsonb,
    add column if not exists escalation_email text,
    add column if not exists implemented_on date,
    add column if not exists verified_on date,
    add column if not exists dismiss_reason text;
alter table monitoring.review_history
    add column if not exists from_status text,
    add column if not exists actor text,
    add column if not exists effective_on date;
alter table monitoring.alerts
    add column if not exists status text not null default 'sent',
    add column if not exists attempts integer not null default 1,
    add column if not exists last_error text;
create table if not exists monitoring.review_effects (
    review_id text primary key references monitoring.improvement_reviews (review_id) on delete cascade,
    measured_on date not null,
    baseline_value double precision,
    drift_value double precision,
    post_value double precision,
    post_start date not null,
    post_end date not null,
    post_n integer not null,
    effect_vs_drift double precision,
    effect_vs_drift_low double precision,
    effect_vs_drift_high double precision,
    effect_vs_baseline double precision,
    effect_vs_baseline_low double precision,
    effect_vs_baseline_high double precision,
    days_within_tolerance integer not null,
    verified boolean not null
);
create table if not exists monitoring.pinned_baselines (
    segment_type text not null,
    segment text not null,
    metric text not null,
    review_id text not null references monitoring.improvement_reviews (review_id) on delete cascade,
    reference_start date not null,
    reference_end date not null,
    valid_from date not null,
    valid_until date not null,
    pinned_at timestamptz not null default now(),
    primary key (segment_type, segment, metric)
);
"""


def _raw_ddl(table: str, entity: Entity) -> str:
    cols = ",\n    ".join(f"{f.name} {f.type}" for f in entity.fields)
    return f"""
create table if not exists raw.{table} (
    {cols},
    _batch_id text not null,
    _loaded_at timestamptz not null
);
-- A rerun finds its batch's rows by _batch_id; dbt's incremental staging reads the rows
-- loaded since its last build by _loaded_at. Raw is append-only and a batch's rows are
-- written together, so both columns follow the order of the table's pages: a BRIN index
-- finds them at almost no cost per row loaded, where a btree index doubled the cost of a
-- load. Indexes of an earlier release (btree) are replaced.
do $$ begin
    if exists (select from pg_indexes where schemaname = 'raw' and tablename = '{table}'
               and indexname in ('{table}__batch', '{table}__loaded') and indexdef not like '% USING brin %') then
        drop index if exists raw.{table}__batch;
        drop index if exists raw.{table}__loaded;
    end if;
end $$;
create index if not exists {table}__batch on raw.{table} using brin (_batch_id) with (autosummarize = on);
create index if not exists {table}__loaded on raw.{table} using brin (_loaded_at) with (autosummarize = on);
create table if not exists quarantine.{table} (
    batch_id text not null,
    row_number integer not null,
    record jsonb not null,
    failed_rules text[] not null,
    quarantined_at timestamptz not null default now(),
    primary key (batch_id, row_number)
);
-- held: broke only a reference rule and waits for its parent; origin: file and line. Added
-- after the first release; checked first, so that a warehouse already upgraded takes no lock.
do $$ begin
    if not exists (select from information_schema.columns
                   where table_schema = 'quarantine' and table_name = '{table}' and column_name = 'status') then
        alter table quarantine.{table}
            add column status text not null default 'quarantined' check (status in ('quarantined', 'held')),
            add column origin text;
    end if;
end $$;
"""


# Validation runs on each batch staged as text in ``landing`` (unlogged tables, one per
# batch, dropped with it); ``ops.to_timestamptz`` lets suite queries compare timestamps
# without failing on a value that a type rule rejects anyway. It reads only what the castable
# rule lets through (the ISO 8601 layout, a valid instant): PostgreSQL also casts words such
# as 'yesterday' or 'infinity', and a time rule judging those would add a second reason. ``ops.input_is_valid`` is
# PostgreSQL 16's pg_input_is_valid; on an older server (Debian 12 ships 15) the same
# answer comes from trying the cast, which is correct but much slower.
LANDING_DDL = r"""
create schema if not exists landing;
do $$ begin
    if current_setting('server_version_num')::int >= 160000 then
        create or replace function ops.input_is_valid(value text, type_name text) returns boolean
            language sql stable strict parallel safe
            as 'select pg_input_is_valid(value, type_name)';
    else
        create or replace function ops.input_is_valid(value text, type_name text) returns boolean
            language plpgsql stable strict parallel safe
            as $body$
            begin
                execute format('select %L::%s', value, type_name::regtype);
                return true;
            exception when others then
                return false;
            end
            $body$;
    end if;
end $$;
create or replace function ops.to_timestamptz(value text) returns timestamptz
    language sql stable parallel safe
    as $$
        select case when value ~ '@ISO_TIMESTAMP_RE@' and ops.input_is_valid(value, 'timestamptz')
            then value::timestamptz end
    $$;
do $$ begin
    if not exists (select from information_schema.columns
                   where table_schema = 'ops' and table_name = 'batches' and column_name = 'data_docs') then
        alter table ops.batches add column data_docs text;
    end if;
end $$;
"""


def ddl() -> str:
    landing = LANDING_DDL.replace("@ISO_TIMESTAMP_RE@", ISO_TIMESTAMP_RE.replace("'", "''"))
    parts = [
        "create schema if not exists raw;", "create schema if not exists quarantine;", OPS_DDL, landing, privacy.DDL
    ]  # fmt: skip
    for source in SOURCES.values():
        for entity in source.entities:
            parts.append(_raw_ddl(raw_table(source.name, entity.name), entity))
    parts.append(MONITORING_DDL)
    return "\n".join(parts)


def ensure(conn) -> None:
    """Create what is missing; safe to run before every task.

    The DDL's digest is recorded in ``ops.schema_version``: when it is there, nothing else
    runs. Callers run this inside their batch's transaction, and ``create ... if not exists``
    locks the tables it names until that transaction ends, so running the DDL every time
    would make concurrent batches wait on each other.
    """
    text = ddl()
    digest = hashlib.sha256(text.encode()).hexdigest()
    with conn.cursor() as cur:
        if not _is_current(cur, digest):
            # Concurrent tasks may race to create the same objects; one takes the lock, the
            # others then find everything in place.
            cur.execute("select pg_advisory_xact_lock(hashtext('serviceloop.schema'))")
            cur.execute(text)
            cur.execute(
                "create table if not exists ops.schema_version"
                " (ddl_sha256 text primary key, applied_at timestamptz not null default now())"
            )
            cur.execute("insert into ops.schema_version (ddl_sha256) values (%s) on conflict do nothing", (digest,))
        # The key staging pseudonymises customer ids with: one small read when it is in place.
        privacy.ensure_key(cur)


def _is_current(cur, digest: str) -> bool:
    cur.execute("select to_regclass('ops.schema_version') is not null")
    if not cur.fetchone()[0]:
        return False
    cur.execute("select 1 from ops.schema_version where ddl_sha256 = %s", (digest,))
    return cur.fetchone() is not None
