{{
    config(
        materialized='incremental',
        unique_key='month_start',
        incremental_strategy='delete+insert',
    )
}}

{%- set touched = kpi_touched_periods('month', ['resolved']) %}

with

tickets as not materialized (

    select * from {{ ref('fct_tickets') }}

),

delay_causes as (

    select * from {{ ref('delay_causes') }}

),

{% if incremental_ready('built_through') is sameas true -%}
    {{ kpi_affected_periods(touched) }},
{%- endif %}

resolved as (

    select
        team_id,
        {{ period_start('month', 'resolved_date') }} as month_start,
        resolution_breached,
        complaint,
        csat,
        coalesce(delay_cause, 'unrecorded') as delay_cause
    from tickets
    where
        resolved_date is not null
        and {{ kpi_in_affected_periods(touched, 'resolved_date') }}

),

-- The tickets resolved within their SLA: the baseline the breaches' complaints and CSAT
-- are compared with.
on_time as (

    select
        team_id,
        month_start,
        avg(case when complaint then 1.0 else 0.0 end) as complaint_rate,
        avg(csat) as csat_mean
    from resolved
    where not resolution_breached
    group by team_id, month_start

),

breaches as (

    select
        team_id,
        month_start,
        delay_cause,
        count(*) as sla_breaches,
        sum(count(*)) over (partition by team_id, month_start) as team_sla_breaches,
        avg(case when complaint then 1.0 else 0.0 end) as complaint_rate,
        avg(csat) as csat_mean
    from resolved
    where resolution_breached
    group by team_id, month_start, delay_cause

),

final as (

    select
        breaches.month_start,
        breaches.team_id,
        breaches.delay_cause,
        coalesce(delay_causes.cause_group, 'unrecorded') as cause_group,
        breaches.sla_breaches,
        {{ rounded('breaches.sla_breaches / breaches.team_sla_breaches', 4) }} as breach_share,
        {{ rounded(
            'sum(breaches.sla_breaches) over (partition by breaches.team_id, breaches.month_start, '
            ~ 'delay_causes.cause_group) / breaches.team_sla_breaches', 4
        ) }} as cause_group_breach_share,
        {{ rounded('breaches.complaint_rate', 4) }} as complaint_rate,
        {{ rounded('on_time.complaint_rate', 4) }} as on_time_complaint_rate,
        {{ rounded('breaches.csat_mean', 2) }} as csat_mean,
        {{ rounded('on_time.csat_mean', 2) }} as on_time_csat_mean,
        (select max(built.content_changed_through) from tickets as built) as built_through
    from breaches
    left join delay_causes
        on breaches.delay_cause = delay_causes.delay_cause
    left join on_time
        on
            breaches.team_id = on_time.team_id
            and breaches.month_start = on_time.month_start

)

select * from final
