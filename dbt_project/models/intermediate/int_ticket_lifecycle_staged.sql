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

-- Lifecycle events recorded without a to_status still put the ticket in a known status
-- (macros/event_status.sql).
statused_events as (

    select
        ticket_id,
        event_id,
        event_type,
        occurred_at,
        loaded_at,
        {{ event_status('to_status', 'event_type') }} as status
    from events

),

-- A status lasts from the event that set it to the next event that sets one.
status_intervals as (

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
            order by occurred_at desc, event_id desc
        ) as recency_rank
    from statused_events
    where status is not null

),

current_statuses as (

    select
        ticket_id,
        status as current_status
    from status_intervals
    where recency_rank = 1

),

-- Only finished waits count: a wait still going on has no length yet.
waits as (

    select
        ticket_id,
        sum(left_at - entered_at) filter (where status = 'pending_customer') as waiting_customer,
        sum(left_at - entered_at) filter (where status = 'pending_third_party') as waiting_third_party
    from status_intervals
    where left_at is not null
    group by ticket_id

),

milestones as (

    select
        ticket_id,
        min(occurred_at) filter (where status = 'new') as created_at,
        min(occurred_at) filter (where status = 'triaged') as triaged_at,
        min(occurred_at) filter (
            where event_type = 'assigned' or status = 'assigned'
        ) as first_assigned_at,
        max(occurred_at) filter (where status = 'resolved') as last_resolved_at,
        max(occurred_at) filter (where status = 'closed') as last_closed_at,
        count(*) filter (where event_type = 'handoff') as handoff_count,
        count(*) filter (where event_type = 'reassigned') as reassignment_count,
        count(*) filter (where event_type = 'reopened') as reopen_count,
        bool_or(event_type = 'escalated') as escalated,
        max(loaded_at) as source_loaded_at
    from statused_events
    group by ticket_id

),

handoffs as (

    select
        ticket_id,
        occurred_at,
        from_team,
        to_team
    from events
    where event_type = 'handoff'

),

-- Ping-pong: a handoff sends the ticket back to a team it had already handed it off from.
ping_pong_tickets as (

    select distinct later_handoffs.ticket_id
    from handoffs as later_handoffs
    inner join handoffs as earlier_handoffs
        on
            later_handoffs.ticket_id = earlier_handoffs.ticket_id
            and later_handoffs.to_team = earlier_handoffs.from_team
            and later_handoffs.occurred_at > earlier_handoffs.occurred_at

),

-- The process ends at the last resolution and the close after it; a ticket reopened
-- since (current status neither resolved nor closed) has neither yet.
bounds as (

    select
        milestones.ticket_id,
        milestones.created_at,
        milestones.triaged_at,
        milestones.first_assigned_at,
        current_statuses.current_status,
        milestones.handoff_count,
        milestones.reassignment_count,
        milestones.reopen_count,
        milestones.escalated,
        milestones.source_loaded_at,
        case
            when current_statuses.current_status in ('resolved', 'closed')
                then milestones.last_resolved_at
        end as resolved_at,
        case
            when current_statuses.current_status = 'closed'
                then milestones.last_closed_at
        end as closed_at,
        coalesce(waits.waiting_customer, interval '0') as waiting_customer,
        coalesce(waits.waiting_third_party, interval '0') as waiting_third_party,
        ping_pong_tickets.ticket_id is not null as ping_pong
    from milestones
    left join current_statuses
        on milestones.ticket_id = current_statuses.ticket_id
    left join waits
        on milestones.ticket_id = waits.ticket_id
    left join ping_pong_tickets
        on milestones.ticket_id = ping_pong_tickets.ticket_id

),

stages as (

    select
        *,
        {{ hours_between('created_at', 'triaged_at') }} as intake_hours,
        {{ hours_between('triaged_at', 'first_assigned_at') }} as assignment_hours,
        {{ hours_between('first_assigned_at', 'resolved_at') }} as execution_hours,
        {{ interval_hours(
            '(resolved_at - first_assigned_at) - waiting_customer - waiting_third_party'
        ) }} as active_work_hours,
        {{ interval_hours('waiting_customer') }} as waiting_customer_hours,
        {{ interval_hours('waiting_third_party') }} as waiting_third_party_hours,
        {{ hours_between('resolved_at', 'closed_at') }} as evaluation_hours,
        {{ hours_between('created_at', 'closed_at') }} as cycle_hours,
        reopen_count > 0 as reopened
    from bounds

),

final as (

    select
        ticket_id,
        current_status,
        created_at,
        triaged_at,
        first_assigned_at,
        resolved_at,
        closed_at,
        intake_hours,
        assignment_hours,
        execution_hours,
        active_work_hours,
        waiting_customer_hours,
        waiting_third_party_hours,
        evaluation_hours,
        cycle_hours,
        handoff_count,
        reassignment_count,
        reopen_count,
        reopened,
        escalated,
        ping_pong,
        source_loaded_at
    from stages

)

select * from final
