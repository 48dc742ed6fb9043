with

source as (

    select * from {{ source('helpdesk', 'helpdesk__shifts') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by shift_id
            order by _loaded_at desc
        ) as version_rank
    from source

),

latest as (

    select * from ranked
    where version_rank = 1

),

final as (

    select
        shift_id,
        agent_id,
        shift_start,
        shift_end,
        {{ hours_between('shift_start', 'shift_end') }} as shift_hours,
        _batch_id as batch_id,
        _loaded_at as loaded_at
    from latest

)

select * from final
