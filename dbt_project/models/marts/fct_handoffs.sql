{{
    config(
        materialized='incremental',
        unique_key='ticket_id',
        incremental_strategy='delete+insert',
    )
}}

{%- set incremental = incremental_ready('source_loaded_at') is sameas true %}

with

changed as (

    {{ tickets_to_rebuild(incremental, ref('stg_helpdesk__ticket_events'), entities=['ticket_events']) }}

),

events as (

    select * from {{ ref('stg_helpdesk__ticket_events') }}
    where
        event_type in ('handoff', 'reassigned')
        and ticket_id in (select changed.ticket_id from changed)

),

event_loads as (

    select
        ticket_id,
        max(loaded_at) as source_loaded_at
    from {{ ref('stg_helpdesk__ticket_events') }}
    where ticket_id in (select changed.ticket_id from changed)
    group by ticket_id

),

-- A handoff returns the ticket to a team that had already handed it off: ping-pong.
sequenced as (

    select
        events.*,
        row_number() over (
            partition by events.ticket_id
            order by events.occurred_at asc, events.event_id asc
        ) as handoff_seq,
        exists(
            select 1
            from events as earlier
            where
                earlier.ticket_id = events.ticket_id
                and earlier.event_type = 'handoff'
                and earlier.from_team = events.to_team
                and earlier.occurred_at < events.occurred_at
        ) as returns_to_team
    from events

),

final as (

    select
        sequenced.event_id as handoff_id,
        sequenced.ticket_id,
        sequenced.handoff_seq,
        sequenced.event_type as handoff_type,
        sequenced.occurred_at,
        {{ reporting_date('sequenced.occurred_at') }} as occurred_date,
        sequenced.from_team,
        sequenced.to_team,
        sequenced.agent_id,
        event_loads.source_loaded_at,
        sequenced.event_type = 'handoff' and sequenced.returns_to_team as ping_pong
    from sequenced
    inner join event_loads
        on sequenced.ticket_id = event_loads.ticket_id

)

select * from final
