"""DDL of the schemas ServiceLoop owns in the warehouse (dbt owns staging, intermediate and marts).

- ``raw``: one append-only table per source and entity, contract columns plus batch metadata;
- ``quarantine``: the rows validation rejected, with the original record and the rules it broke;
- ``ops``: the batch registry, which also holds each extraction's window (the watermark);
- ``monitoring``: drift runs and findings, improvement reviews and the alerts they sent.
"""

from __future__ import annotations

from serviceloop.contract import Entity
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
create index if not exists {table}__batch on raw.{table} (_batch_id);
create table if not exists quarantine.{table} (
    batch_id text not null,
    row_number integer not null,
    record jsonb not null,
    failed_rules text[] not null,
    quarantined_at timestamptz not null default now(),
    primary key (batch_id, row_number)
);
"""


def ddl() -> str:
    parts = ["create schema if not exists raw;", "create schema if not exists quarantine;", OPS_DDL]
    for source in SOURCES.values():
        for entity in source.entities:
            parts.append(_raw_ddl(raw_table(source.name, entity.name), entity))
    parts.append(MONITORING_DDL)
    return "\n".join(parts)


def ensure(conn) -> None:
    """Create what is missing; safe to run before every task."""
    with conn.cursor() as cur:
        # Concurrent tasks may race to create the same objects; one takes the lock, the
        # others then find everything in place.
        cur.execute("select pg_advisory_xact_lock(hashtext('serviceloop.schema'))")
        cur.execute(ddl())
