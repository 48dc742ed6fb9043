{{
    config(
        materialized='incremental',
        unique_key='week_start',
        incremental_strategy='delete+insert',
    )
}}

{%- set touched = kpi_touched_periods('week', ['closed']) %}

with

tickets as not materialized (

    select * from {{ ref('fct_tickets') }}

),

stages as not materialized (

    select * from {{ ref('fct_ticket_stages') }}

),

{% if incremental_ready('built_through') is sameas true -%}
    {{ kpi_affected_periods(touched) }},
{%- endif %}

-- Closed tickets whose stages partition their cycle (every stage known, none negative),
-- counted in the week they were closed.
closed as (

    select
        ticket_id,
        team_id,
        {{ period_start('week', 'closed_date') }} as week_start,
        cycle_hours
    from tickets
    where
        closed_date is not null
        and cycle_hours is not null
        and intake_hours >= 0
        and assignment_hours >= 0
        and active_work_hours >= 0
        and waiting_customer_hours >= 0
        and waiting_third_party_hours >= 0
        and evaluation_hours >= 0
        and {{ kpi_in_affected_periods(touched, 'closed_date') }}

),

-- Cycle time = the sum of the stages, so its total splits into the stages' totals and its
-- variance into each stage's covariance with the cycle: var(cycle) = Σ cov(stage, cycle).
stage_totals as (

    select
        closed.team_id,
        closed.week_start,
        stages.stage,
        stages.stage_order,
        stages.process_stage,
        count(*) as tickets_closed,
        sum(stages.stage_hours) as stage_hours,
        sum(sum(stages.stage_hours)) over (
            partition by closed.team_id, closed.week_start
        ) as cycle_hours,
        covar_pop(stages.stage_hours, closed.cycle_hours) as stage_cycle_covariance,
        var_pop(closed.cycle_hours) as cycle_variance,
        avg(stages.stage_hours) as stage_mean_hours
    from closed
    inner join stages
        on closed.ticket_id = stages.ticket_id
    group by closed.team_id, closed.week_start, stages.stage, stages.stage_order, stages.process_stage

),

shares as (

    select
        *,
        stage_hours / nullif(cycle_hours, 0) as cycle_time_share,
        stage_cycle_covariance / nullif(cycle_variance, 0) as cycle_variance_share
    from stage_totals

),

ranked as (

    select
        *,
        row_number() over (
            partition by team_id, week_start
            order by cycle_time_share desc nulls last, stage_order asc
        ) as time_rank,
        row_number() over (
            partition by team_id, week_start
            order by cycle_variance_share desc nulls last, stage_order asc
        ) as variance_rank
    from shares

),

final as (

    select
        week_start,
        team_id,
        stage,
        stage_order,
        process_stage,
        tickets_closed,
        {{ rounded('stage_mean_hours', 2) }} as stage_mean_hours,
        {{ rounded('cycle_time_share', 4) }} as cycle_time_share,
        {{ rounded('cycle_variance_share', 4) }} as cycle_variance_share,
        time_rank = 1 and cycle_time_share is not null as is_bottleneck,
        variance_rank = 1 and cycle_variance_share is not null as is_variance_bottleneck,
        (select max(built.content_changed_through) from tickets as built) as built_through
    from ranked

)

select * from final
