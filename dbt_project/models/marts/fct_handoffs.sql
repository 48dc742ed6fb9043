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

    {{ tickets_to_rebuild(incremental, ref('int_ticket_events_unioned'), entities=['ticket_events']) }}

),

events as (

    select * from {{ ref('int_ticket_events_unioned') }}
    where
        event_type in ('handoff', 'reassigned')
        and {{ in_rebuilt_tickets(incremental) }}

),

event_loads as (

    select
        ticket_id,
        max(loaded_at) as source_loaded_at
    from {{ ref('int_ticket_events_unioned') }}
    where {{ in_rebuilt_tickets(incremental) }}
    group by ticket_id

),

-- A handoff returns the ticket to a team that had already handed it off: ping-pong.
returns_to_team as (

    select distinct later.event_id
    from events as later
    inner join events as earlier
        on
            later.ticket_id = earlier.ticket_id
            and later.to_team = earlier.from_team
            and later.occurred_at > earlier.occurred_at
    where earlier.event_type = 'handoff'

),

sequenced as (

    select
        events.*,
        row_number() over (
            partition by events.ticket_id
            order by events.occurred_at asc, events.event_id asc
        ) as handoff_seq,
        returns_to_team.event_id is not null as returns_to_team
    from events
    left join returns_to_team
        on events.event_id = returns_to_team.event_id

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
