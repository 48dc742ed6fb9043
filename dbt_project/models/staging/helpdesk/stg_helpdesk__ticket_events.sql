{{
    config(
        materialized='incremental',
        unique_key='event_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['event_id']}, {'columns': ['loaded_at']}, {'columns': ['ticket_id']}],
        post_hook=['{{ analyze_when_new(this) }}'],
    )
}}

with

source as (

    select * from {{ source('helpdesk', 'helpdesk__ticket_events') }}

),

-- Events do not change once they happened; an event read by two overlapping
-- extractions keeps its latest load.
latest as (

    {{ latest_version('source', 'event_id', loaded=source('helpdesk', 'helpdesk__ticket_events')) }}

),

final as (

    select
        event_id,
        ticket_id,
        occurred_at,
        event_type,
        from_status,
        to_status,
        from_team,
        to_team,
        agent_id,
        _batch_id as batch_id,
        _loaded_at as loaded_at
    from latest

)

select * from final
{{ only_changed_content('final', 'event_id') }}
