with

source as (

    select * from {{ source('helpdesk', 'helpdesk__agents') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by agent_id
            order by updated_at desc, _loaded_at desc
        ) as version_rank
    from source

),

latest as (

    select * from ranked
    where version_rank = 1

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
