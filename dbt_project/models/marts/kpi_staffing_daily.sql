with

shifts as (

    select * from {{ ref('stg_helpdesk__shifts') }}

),

agents as (

    select * from {{ ref('dim_agent') }}

),

tickets as (

    select * from {{ ref('fct_tickets') }}

),

-- A shift counts on the day it starts, for the agent's team.
staffed as (

    select
        {{ reporting_date('shifts.shift_start') }} as kpi_date,
        agents.team_id,
        sum(shifts.shift_hours) as staffed_agent_hours,
        sum(shifts.shift_hours * agents.hourly_cost) as staffing_cost
    from shifts
    inner join agents
        on shifts.agent_id = agents.agent_id
    group by {{ reporting_date('shifts.shift_start') }}, agents.team_id

),

resolved as (

    select
        resolved_date as kpi_date,
        team_id,
        count(*) as tickets_resolved
    from tickets
    where resolved_date is not null
    group by resolved_date, team_id

),

final as (

    select
        coalesce(staffed.kpi_date, resolved.kpi_date) as kpi_date,
        coalesce(staffed.team_id, resolved.team_id) as team_id,
        coalesce(resolved.tickets_resolved, 0) as tickets_resolved,
        {{ rounded('coalesce(staffed.staffed_agent_hours, 0)', 2) }} as staffed_agent_hours,
        {{ rounded('coalesce(staffed.staffing_cost, 0)', 2) }} as staffing_cost,
        {{ rounded('resolved.tickets_resolved / nullif(staffed.staffed_agent_hours, 0)', 4) }}
            as tickets_per_staffed_agent_hour,
        {{ rounded('staffed.staffing_cost / nullif(resolved.tickets_resolved, 0)', 2) }}
            as cost_per_resolved_ticket
    from staffed
    full outer join resolved
        on
            staffed.kpi_date = resolved.kpi_date
            and staffed.team_id = resolved.team_id

)

select * from final
