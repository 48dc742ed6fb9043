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

    select * from {{ source('servicenow_export', 'servicenow_export__ticket_events') }}

),

-- An event is derived again by every export that holds its incident's update (its id is
-- the incident, the version and the change): keep its latest load.
latest as (

    {{ latest_version(
        'source', 'event_id', loaded=source('servicenow_export', 'servicenow_export__ticket_events')
    ) }}

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
