with

agents as (

    select * from {{ ref('stg_helpdesk__agents') }}

),

shifts as (

    select * from {{ ref('stg_helpdesk__shifts') }}

),

staffing as (

    select
        agent_id,
        count(*) as shift_count,
        sum(shift_hours) as staffed_hours
    from shifts
    group by agent_id

),

final as (

    select
        agents.agent_id,
        agents.team_id,
        agents.hourly_cost,
        coalesce(staffing.shift_count, 0) as shift_count,
        coalesce(staffing.staffed_hours, 0) as staffed_hours
    from agents
    left join staffing
        on agents.agent_id = staffing.agent_id

)

select * from final
