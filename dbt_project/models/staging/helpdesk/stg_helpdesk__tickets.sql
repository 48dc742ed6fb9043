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

with

source as (

    select * from {{ source('helpdesk', 'helpdesk__tickets') }}

),

-- A ticket is extracted again whenever it changes (and inside the overlap window):
-- its latest version is the one with the latest updated_at, then the latest load.
latest as (

    {{ latest_version(
        'source', 'ticket_id', 'updated_at desc, _loaded_at desc', loaded=source('helpdesk', 'helpdesk__tickets')
    ) }}

),

final as (

    select
        ticket_id,
        source_system,
        created_at,
        updated_at,
        channel,
        -- Personal data: the marts know a customer by a keyed pseudonym only.
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
