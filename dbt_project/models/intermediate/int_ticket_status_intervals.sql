with

events as (

    select * from {{ ref('stg_helpdesk__ticket_events') }}

),

statused_events as (

    select
        ticket_id,
        event_id,
        occurred_at,
        {{ event_status('to_status', 'event_type') }} as status
    from events

),

-- A status lasts from the event that set it to the next event that sets one; the
-- ticket's current status has no end yet.
intervals as (

    select
        ticket_id,
        status,
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
        left_at
    from intervals

)

select * from final
