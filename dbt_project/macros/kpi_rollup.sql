{#-
    The KPI catalogue (PRODUCT.md §3) at one grain: a period (day, week or month) × the
    given dimension columns of fct_tickets (e.g. team_id, channel, priority; none for the
    whole organisation). kpi_daily, kpi_weekly, kpi_monthly and kpi_organisation_daily are
    this one macro, so a KPI's formula lives here once; the formulas are documented in
    models/marts/_kpi__models.yml.

    Every rate and percentile is recomputed from the ticket-level facts at the grain asked
    for (a weekly p90 is the p90 of the week's tickets, never an average of daily p90s).
    Each family counts on its own day: volume on the day of creation, first-response KPIs
    on the day of the first response, resolution and quality KPIs on the day of resolution,
    survey KPIs on the day of submission, backlog at the end of the period (or, for the
    period in progress, at the end of the last day the data is known through).

    Incremental: a run rebuilds only the periods touched by tickets whose content changed
    since the mart was last built (fct_tickets.content_changed_through), over the days the
    change moved for each family (fct_tickets.kpi_days_touched, macros/kpi_days.sql); the
    model's unique_key is the period column, so delete+insert replaces those periods
    whole. In a rebuilt period, a family whose days were not touched keeps its columns of
    the row it had (a segment keeps a family's columns where the family counted a ticket:
    its count is above 0), so a period touched only by, say, the backlog does not read
    the period's resolutions again. A backlog day counts only where it is a period's
    backlog day (its last day, or the data's last day for the period in progress), and an
    incremental run reads the backlog at those days alone: the tickets created by then and
    not resolved by then, found by fct_tickets' index on resolved_date.
-#}
{% macro kpi_rollup(grain, period_column, dims) -%}

    {%- set incremental = incremental_ready('built_through') is sameas true -%}
    {%- set touched = kpi_touched_periods(grain, kpi_rollup_families() | map(attribute='days') | list) -%}
    {%- set dim_list = dims | join(", ") -%}
    {%- set dim_select = (dims | join(",\n        ")) ~ ",\n        " if dims else "" -%}
    {%- set group_by = "period_start" ~ ((", " ~ dim_list) if dims else "") -%}

with

tickets as not materialized (

    select * from {{ ref('fct_tickets') }}

),

surveys as not materialized (

    select * from {{ ref('fct_surveys') }}

),

{% if incremental -%}
built as (

    select * from {{ this }}

),

{% endif -%}

-- The last day the data is known through: the period in progress ends there.
data_end as (

    select {{ reporting_date("(" ~ as_of_timestamp() ~ " - interval '1 microsecond')") }} as last_day

),

{% if incremental -%}
        {{ kpi_affected_periods(touched) }},
    {%- endif %}

created as (

    select
        {{ period_start(grain, 'created_date') }} as period_start,
        {{ dim_select }}count(*) as tickets_created,
        avg(case when returning_customer then 1.0 else 0.0 end) as returning_customer_rate
    from tickets
    where {{ kpi_in_family_periods(touched, 'created', 'created_date') }}
    group by {{ group_by }}

),

responded as (

    select
        {{ period_start(grain, 'first_response_date') }} as period_start,
        {{ dim_select }}count(*) as tickets_first_responded,
        {{ percentile('first_response_hours', 0.5) }} as first_response_p50_hours,
        {{ percentile('first_response_hours', 0.9) }} as first_response_p90_hours,
        avg(case first_response_breached when false then 1.0 when true then 0.0 end)
            as sla_first_response_compliance
    from tickets
    where
        first_response_date is not null
        and {{ kpi_in_family_periods(touched, 'first_response', 'first_response_date') }}
    group by {{ group_by }}

),

resolved as (

    select
        {{ period_start(grain, 'resolved_date') }} as period_start,
        {{ dim_select }}count(*) as tickets_resolved,
        {{ percentile('resolution_hours', 0.5) }} as resolution_p50_hours,
        {{ percentile('resolution_hours', 0.9) }} as resolution_p90_hours,
        avg(case resolution_breached when false then 1.0 when true then 0.0 end) as sla_resolution_compliance,
        count(*) filter (where resolution_breached) as sla_resolution_breaches,
        avg(case when reopened then 1.0 else 0.0 end) as reopen_rate,
        avg(case when first_contact_resolution then 1.0 else 0.0 end) as first_contact_resolution_rate,
        avg(case when rework then 1.0 else 0.0 end) as rework_rate,
        avg(case when escalated then 1.0 else 0.0 end) as escalation_rate,
        avg(case when complaint then 1.0 else 0.0 end) as complaint_rate,
        avg(case when survey_count > 0 then 1.0 else 0.0 end) as survey_response_rate,
        avg(coalesce(handoff_count, 0)) as handoffs_per_ticket,
        avg(case when reassignment_count > 0 then 1.0 else 0.0 end) as reassignment_rate,
        avg(case when ping_pong then 1.0 else 0.0 end) as ping_pong_rate
    from tickets
    where
        resolved_date is not null
        and {{ kpi_in_family_periods(touched, 'resolved', 'resolved_date') }}
    group by {{ group_by }}

),

-- The complaints resolved in the period whose churn proxy is decided (fct_tickets' index on
-- complaint, resolved_date).
churned as (

    select
        {{ period_start(grain, 'resolved_date') }} as period_start,
        {{ dim_select }}avg(case when churn_proxy then 1.0 else 0.0 end) as churn_proxy_rate
    from tickets
    where
        complaint
        and churn_proxy is not null
        and resolved_date is not null
        and {{ kpi_in_family_periods(touched, 'churn', 'resolved_date') }}
    group by {{ group_by }}

),

-- Surveys count for the segment of the ticket they rate.
rated as (

    select
        {{ period_start(grain, 'surveys.submitted_date') }} as period_start,
    {%- for dim in dims %}
        tickets.{{ dim }},
    {%- endfor %}
        count(*) as surveys,
        avg(surveys.csat) as csat_mean,
        avg(case when surveys.satisfied then 1.0 else 0.0 end) filter (where surveys.csat is not null)
            as csat_satisfied_rate,
        100.0 * (
            avg(case when surveys.nps_group = 'promoter' then 1.0 else 0.0 end) filter (where surveys.nps is not null)
            - avg(case when surveys.nps_group = 'detractor' then 1.0 else 0.0 end) filter (where surveys.nps is not null)
        ) as nps
    from surveys
    inner join tickets
        on surveys.ticket_id = tickets.ticket_id
    where {{ kpi_in_family_periods(touched, 'surveys', 'surveys.submitted_date') }}
    group by {{ group_by }}

),

-- The tickets in the backlog at the end of each period (or of the last day the data is
-- known through).
{{ kpi_backlog_period_ends(grain, incremental) }},

backlog as (

    select
        {{ period_start(grain, 'backlog_day') }} as period_start,
        {{ dim_select }}count(*) as backlog_open,
        {{ percentile(interval_hours('backlog_at - created_at'), 0.9) }} as backlog_age_p90_hours,
        count(*) filter (where resolution_due_at < backlog_at) as backlog_overdue
    from period_ends
    group by {{ group_by }}

),

-- Each family's rows (on an incremental run with those it keeps) and every segment.
{{ kpi_family_rows(period_column, dims, group_by, incremental) }},

final as (

    select
        segments.period_start as {{ period_column }},
    {%- for dim in dims %}
        segments.{{ dim }},
    {%- endfor %}
        coalesce(created.tickets_created, 0) as tickets_created,
        coalesce(responded.tickets_first_responded, 0) as tickets_first_responded,
        coalesce(resolved.tickets_resolved, 0) as tickets_resolved,
        {{ rounded('responded.first_response_p50_hours', 2) }} as first_response_p50_hours,
        {{ rounded('responded.first_response_p90_hours', 2) }} as first_response_p90_hours,
        {{ rounded('resolved.resolution_p50_hours', 2) }} as resolution_p50_hours,
        {{ rounded('resolved.resolution_p90_hours', 2) }} as resolution_p90_hours,
        {{ rounded('responded.sla_first_response_compliance', 4) }} as sla_first_response_compliance,
        {{ rounded('resolved.sla_resolution_compliance', 4) }} as sla_resolution_compliance,
        coalesce(resolved.sla_resolution_breaches, 0) as sla_resolution_breaches,
        coalesce(backlog.backlog_open, 0) as backlog_open,
        {{ rounded('backlog.backlog_age_p90_hours', 2) }} as backlog_age_p90_hours,
        coalesce(backlog.backlog_overdue, 0) as backlog_overdue,
        {{ rounded('resolved.reopen_rate', 4) }} as reopen_rate,
        {{ rounded('resolved.first_contact_resolution_rate', 4) }} as first_contact_resolution_rate,
        {{ rounded('resolved.rework_rate', 4) }} as rework_rate,
        {{ rounded('resolved.escalation_rate', 4) }} as escalation_rate,
        {{ rounded('resolved.complaint_rate', 4) }} as complaint_rate,
        coalesce(rated.surveys, 0) as surveys,
        {{ rounded('rated.csat_mean', 2) }} as csat_mean,
        {{ rounded('rated.csat_satisfied_rate', 4) }} as csat_satisfied_rate,
        {{ rounded('rated.nps', 2) }} as nps,
        {{ rounded('resolved.survey_response_rate', 4) }} as survey_response_rate,
        {{ rounded('created.returning_customer_rate', 4) }} as returning_customer_rate,
        {{ rounded('churned.churn_proxy_rate', 4) }} as churn_proxy_rate,
        {{ rounded('resolved.handoffs_per_ticket', 4) }} as handoffs_per_ticket,
        {{ rounded('resolved.reassignment_rate', 4) }} as reassignment_rate,
        {{ rounded('resolved.ping_pong_rate', 4) }} as ping_pong_rate,
        (select max(built.content_changed_through) from tickets as built) as built_through
    from segments
    left join created_rows as created
        on
            {{ kpi_same_segment('segments', 'created', dims) }}
    left join responded_rows as responded
        on
            {{ kpi_same_segment('segments', 'responded', dims) }}
    left join resolved_rows as resolved
        on
            {{ kpi_same_segment('segments', 'resolved', dims) }}
    left join churned_rows as churned
        on
            {{ kpi_same_segment('segments', 'churned', dims) }}
    left join rated_rows as rated
        on
            {{ kpi_same_segment('segments', 'rated', dims) }}
    left join backlog_rows as backlog
        on
            {{ kpi_same_segment('segments', 'backlog', dims) }}

)

select * from final

{%- endmacro %}
