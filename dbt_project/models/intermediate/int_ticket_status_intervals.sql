{{
    config(
        materialized='incremental',
        unique_key='ticket_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['ticket_id']}, {'columns': ['source_loaded_at']}],
        post_hook=['{{ analyze_when_new(this) }}'],
    )
}}

{%- set incremental = incremental_ready('source_loaded_at') is sameas true %}

with

-- Incremental: the tickets with an event loaded since the last build are rebuilt whole.
changed as (

    {{ tickets_to_rebuild(incremental, ref('int_ticket_events_unioned'), entities=['ticket_events']) }}

),

events as (

    select * from {{ ref('int_ticket_events_unioned') }}
    where {{ in_rebuilt_tickets(incremental) }}

),

statused_events as (

    select
        ticket_id,
        event_id,
        occurred_at,
        {{ event_status('to_status', 'event_type') }} as status,
        max(loaded_at) over (partition by ticket_id) as source_loaded_at
    from events

),

-- A status lasts from the event that set it to the next event that sets one; the
-- ticket's current status has no end yet.
intervals as (

    select
        ticket_id,
        status,
        source_loaded_at,
        occurred_at as entered_at,
        lead(occurred_at) over (
            partition by ticket_id
            order by occurred_at asc, event_id asc
        ) as left_at,
        row_number() over (
            partition by ticket_id
            order by occurred_at asc, event_id asc
        ) as status_seq
    from statused_events
    where status is not null

),

final as (

    select
        ticket_id,
        status_seq,
        status,
        entered_at,
        left_at,
        source_loaded_at
    from intervals

)

select * from final
