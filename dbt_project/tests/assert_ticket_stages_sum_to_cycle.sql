-- The four stages partition a closed ticket's cycle: for a ticket whose milestones are
-- in order, intake + assignment + execution + evaluation = cycle (to rounding).
-- Returns the tickets where they do not.
with

lifecycle as (

    select * from {{ ref('int_ticket_lifecycle_staged') }}

),

closed_in_order as (

    select
        ticket_id,
        cycle_hours,
        intake_hours + assignment_hours + execution_hours + evaluation_hours as stage_hours
    from lifecycle
    where
        cycle_hours is not null
        and intake_hours >= 0
        and assignment_hours >= 0
        and execution_hours >= 0
        and evaluation_hours >= 0

),

mismatched as (

    select
        ticket_id,
        cycle_hours,
        stage_hours
    from closed_in_order
    where abs(cycle_hours - stage_hours) > 0.001

)

select * from mismatched
