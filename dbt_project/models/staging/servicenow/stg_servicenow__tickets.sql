{{
    config(
        materialized='incremental',
        unique_key='ticket_id',
        incremental_strategy='delete+insert',
        indexes=[
            {'columns': ['ticket_id']}, {'columns': ['loaded_at']},
            {'columns': ['customer_id', 'created_at', 'ticket_id']},
        ],
        post_hook=['{{ partial_index(this, "ticket_id", sla_clock_running()) }}', '{{ analyze_when_new(this) }}'],
    )
}}

{%- set raw_tables = [
    source('servicenow', 'servicenow__tickets'),
    source('servicenow_export', 'servicenow_export__tickets'),
] %}

with

-- The Table API's incidents and the CSV exports' latest rows: the same incidents (by number).
source as (

    {{ union_raw(raw_tables) }}

),

-- An incident is read again whenever it changes (the API's overlap window, a later export):
-- its latest version is the one updated last, then the latest load.
latest as (

    {{ latest_version(
        'source', 'ticket_id', 'updated_at desc, _loaded_at desc',
        loaded='(' ~ union_raw(raw_tables, 'ticket_id, _loaded_at') ~ ')'
    ) }}

),

final as (

    select
        ticket_id,
        source_system,
        created_at,
        updated_at,
        channel,
        -- Personal data: the marts know a customer (the caller) by a keyed pseudonym only.
        {{ pseudonymise('customer_id') }} as customer_id,
        customer_segment,
        category,
        subcategory,
        priority,
        impact,
        urgency,
        team_id,
        agent_id,
        status,
        first_response_at,
        resolved_at,
        closed_at,
        reopen_count,
        reassignment_count,
        escalated,
        resolution_code,
        delay_cause,
        _batch_id as batch_id,
        _loaded_at as loaded_at
    from latest

)

select * from final
{{ only_changed_content('final', 'ticket_id') }}
