{{
    config(
        materialized='incremental',
        unique_key='ticket_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['ticket_id']}, {'columns': ['source_loaded_at']}],
        post_hook=['{{ analyze_when_new(this) }}'],
    )
}}

-- depends_on: {{ ref('int_ticket_events_unioned') }}

{% set incremental = incremental_ready('source_loaded_at') is sameas true %}

{#- How far ahead of its last event an open ticket's clock is laid out (business days and
    pauses included); a deadline further out than this is not known yet. -#}
{%- set horizon = "interval '" ~ var('sla_clock_horizon_days', 60) ~ " days'" -%}

with

-- Incremental: the tickets loaded again or with a new event since the last build, and the
-- tickets not yet responded to or resolved (their clocks run up to the moment the data is
-- known through, which every load moves). A change of sla_policies needs a full refresh.
changed as (

    {{ tickets_to_rebuild(incremental, ref('int_tickets_unioned'), entities=['tickets', 'ticket_events']) }}
    {%- if incremental %}
        union
        select open_tickets.ticket_id
        from {{ ref('int_tickets_unioned') }} as open_tickets
        where {{ sla_clock_running() }}
    {%- endif %}

),

tickets as (

    select * from {{ ref('int_tickets_unioned') }}
    where {{ in_rebuilt_tickets(incremental) }}

),

status_intervals as (

    select * from {{ ref('int_ticket_status_intervals') }}
    where {{ in_rebuilt_tickets(incremental) }}

),

event_loads as (

    select
        ticket_id,
        max(source_loaded_at) as loaded_at
    from status_intervals
    group by ticket_id

),

sla_policies as (

    select * from {{ ref('sla_policies') }}

),

-- Resolution clock: runs while the ticket is open and being worked, i.e. in any status but
-- resolved, closed and cancelled, and (when the policy says so) not while pending_customer.
-- Built from the lifecycle events; a ticket without events runs from created_at to its
-- resolution.
resolution_running as (

    select
        status_intervals.ticket_id,
        'resolution' as clock,
        status_intervals.entered_at as running_from,
        coalesce(status_intervals.left_at, status_intervals.entered_at + {{ horizon }}) as running_to
    from status_intervals
    inner join tickets
        on status_intervals.ticket_id = tickets.ticket_id
    inner join sla_policies
        on tickets.priority = sla_policies.priority
    where
        status_intervals.status not in ('resolved', 'closed', 'cancelled')
        and not (sla_policies.pause_on_pending_customer and status_intervals.status = 'pending_customer')

    union all

    select
        tickets.ticket_id,
        'resolution' as clock,
        tickets.created_at as running_from,
        coalesce(tickets.resolved_at, tickets.created_at + {{ horizon }}) as running_to
    from tickets
    where not exists (
        select 1
        from status_intervals
        where status_intervals.ticket_id = tickets.ticket_id
    )

),

-- First-response clock: runs from creation until the first response; nothing pauses it
-- (the customer is waiting on the organisation, not the other way round). It is laid out
-- as far as it is read: to the first response (the data's "now" while there is none) and
-- far enough to reach the target (its business days, plus one for a partial first day,
-- spread over the policy's weeks, plus a week), never beyond the horizon.
first_response_running as (

    select
        tickets.ticket_id,
        'first_response' as clock,
        tickets.created_at as running_from,
        least(
            tickets.created_at + {{ horizon }},
            greatest(
                coalesce(tickets.first_response_at, {{ as_of_timestamp() }}),
                tickets.created_at + interval '1 day' * (
                    (
                        ceil(
                            sla_policies.first_response_target_hours
                            / (
                                extract(epoch from sla_policies.business_day_end - sla_policies.business_day_start)
                                / 3600
                            )
                        ) + 1
                    ) * 7.0 / (sla_policies.last_business_day - sla_policies.first_business_day + 1) + 7
                )
            )
        ) as running_to
    from tickets
    inner join sla_policies
        on tickets.priority = sla_policies.priority

),

running as (

    select * from resolution_running
    union all
    select * from first_response_running

),

-- The running time cut into the policy's business windows: one window per business day
-- (first_business_day..last_business_day, ISO weekdays) from business_day_start to
-- business_day_end in the policy's time zone; 00:00-24:00 every day is a 24x7 clock.
pieces as (

    select
        running.ticket_id,
        running.clock,
        greatest(running.running_from, windows.window_start) as piece_start,
        least(running.running_to, windows.window_end) as piece_end
    from running
    inner join tickets
        on running.ticket_id = tickets.ticket_id
    inner join sla_policies
        on tickets.priority = sla_policies.priority
    cross join
        lateral (
            select
                (local_days.local_day + sla_policies.business_day_start) at time zone sla_policies.clock_timezone
                    as window_start,
                (local_days.local_day + sla_policies.business_day_end) at time zone sla_policies.clock_timezone
                    as window_end
            from
                generate_series(
                    cast(running.running_from at time zone sla_policies.clock_timezone as date),
                    cast(running.running_to at time zone sla_policies.clock_timezone as date),
                    interval '1 day'
                ) as local_days (local_day)
            where
                extract(isodow from local_days.local_day)
                between sla_policies.first_business_day and sla_policies.last_business_day
        ) as windows
    where
        running.running_to > running.running_from
        and least(running.running_to, windows.window_end) > greatest(running.running_from, windows.window_start)

),

accumulated as (

    select
        ticket_id,
        clock,
        piece_start,
        piece_end,
        extract(epoch from piece_end - piece_start) / 3600.0 as piece_hours,
        coalesce(
            sum(extract(epoch from piece_end - piece_start) / 3600.0) over (
                partition by ticket_id, clock
                order by piece_start asc
                rows between unbounded preceding and 1 preceding
            ),
            0
        ) as hours_before
    from pieces

),

targets as (

    select
        tickets.ticket_id,
        tickets.first_response_at,
        tickets.resolved_at,
        sla_policies.first_response_target_hours,
        sla_policies.resolution_target_hours,
        greatest(tickets.loaded_at, event_loads.loaded_at) as source_loaded_at
    from tickets
    inner join sla_policies
        on tickets.priority = sla_policies.priority
    left join event_loads
        on tickets.ticket_id = event_loads.ticket_id

),

-- The deadline is the instant the clock reaches the target: inside the piece where the
-- running total crosses it.
clocked as (

    select
        targets.ticket_id,
        targets.source_loaded_at,
        {{ clock_due_at('first_response', 'targets.first_response_target_hours') }} as first_response_due_at,
        {{ clock_due_at('resolution', 'targets.resolution_target_hours') }} as resolution_due_at,
        sum(
            extract(
                epoch from
                least(accumulated.piece_end, coalesce(targets.first_response_at, {{ as_of_timestamp() }}))
                - accumulated.piece_start
            ) / 3600.0
        ) filter (
            where
            accumulated.clock = 'first_response'
            and accumulated.piece_start < coalesce(targets.first_response_at, {{ as_of_timestamp() }})
        ) as first_response_clock_hours,
        sum(
            extract(
                epoch from
                least(accumulated.piece_end, coalesce(targets.resolved_at, {{ as_of_timestamp() }}))
                - accumulated.piece_start
            ) / 3600.0
        ) filter (
            where
            accumulated.clock = 'resolution'
            and accumulated.piece_start < coalesce(targets.resolved_at, {{ as_of_timestamp() }})
        ) as resolution_clock_hours
    from targets
    left join accumulated
        on targets.ticket_id = accumulated.ticket_id
    group by targets.ticket_id, targets.source_loaded_at

),

final as (

    select
        ticket_id,
        first_response_due_at,
        resolution_due_at,
        {{ rounded('coalesce(first_response_clock_hours, 0)', 4) }} as first_response_clock_hours,
        {{ rounded('coalesce(resolution_clock_hours, 0)', 4) }} as resolution_clock_hours,
        source_loaded_at
    from clocked

)

select * from final
