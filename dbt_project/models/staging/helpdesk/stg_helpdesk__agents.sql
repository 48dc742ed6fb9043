with

source as (

    select * from {{ source('helpdesk', 'helpdesk__agents') }}

),

latest as (

    {{ latest_version('source', 'agent_id', 'updated_at desc, _loaded_at desc') }}

),

final as (

    select
        agent_id,
        team_id,
        hourly_cost,
        updated_at,
        _batch_id as batch_id,
        _loaded_at as loaded_at
    from latest

)

select * from final
