with

source as (

    select * from {{ source('helpdesk', 'helpdesk__shifts') }}

),

latest as (

    {{ latest_version('source', 'shift_id') }}

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
