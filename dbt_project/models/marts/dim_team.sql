with

teams as (

    select * from {{ ref('teams') }}

),

final as (

    select
        team_id,
        team_name,
        owner_name,
        owner_email,
        alert_route,
        escalation_email
    from teams

)

select * from final
