{{
    config(
        materialized='incremental',
        unique_key='ticket_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['ticket_id']}, {'columns': ['source_loaded_at']}],
    )
}}

{%- set incremental = incremental_ready('source_loaded_at') is sameas true %}

with

changed as (

    {{ tickets_to_rebuild(incremental, ref('int_ticket_lifecycle_staged'), entities=['ticket_events']) }}

),

lifecycle as (

    select * from {{ ref('int_ticket_lifecycle_staged') }}
    where {{ in_rebuilt_tickets(incremental) }}

),

event_loads as (

    select
        ticket_id,
        max(loaded_at) as source_loaded_at
    from {{ ref('int_ticket_events_unioned') }}
    where {{ in_rebuilt_tickets(incremental) }}
    group by ticket_id

),

-- One row per ticket and stage of the service process, in process order; execution is
-- split into active work and the two kinds of waiting.
stages as (

    select
        lifecycle.ticket_id,
        stage_values.stage_order,
        stage_values.stage,
        stage_values.process_stage,
        stage_values.stage_hours
    from lifecycle
    cross join lateral (
        values
        (1, 'intake', 'intake', lifecycle.intake_hours),
        (2, 'assignment', 'assignment', lifecycle.assignment_hours),
        (3, 'active_work', 'execution', lifecycle.active_work_hours),
        (4, 'waiting_customer', 'execution', lifecycle.waiting_customer_hours),
        (5, 'waiting_third_party', 'execution', lifecycle.waiting_third_party_hours),
        (6, 'evaluation', 'evaluation', lifecycle.evaluation_hours)
    ) as stage_values (stage_order, stage, process_stage, stage_hours)

),

final as (

    select
        stages.ticket_id,
        stages.stage_order,
        stages.stage,
        stages.process_stage,
        stages.stage_hours,
        event_loads.source_loaded_at,
        stages.ticket_id || ':' || stages.stage as ticket_stage_id
    from stages
    left join event_loads
        on stages.ticket_id = event_loads.ticket_id

)

select * from final
