{{ config(materialized='view') }}

{%- set columns = [
    'ticket_id', 'source_system', 'created_at', 'updated_at', 'channel', 'customer_id', 'customer_segment',
    'category', 'subcategory', 'priority', 'impact', 'urgency', 'team_id', 'agent_id', 'status',
    'first_response_at', 'resolved_at', 'closed_at', 'reopen_count', 'reassignment_count', 'escalated',
    'resolution_code', 'delay_cause', 'batch_id', 'loaded_at',
] %}

with

helpdesk as (

    select * from {{ ref('stg_helpdesk__tickets') }}

),

servicenow as (

    select * from {{ ref('stg_servicenow__tickets') }}

),

-- Every ticket source in one place. A view: PostgreSQL pushes a filter on it (loaded_at,
-- ticket_id) into each staging table and its index, so incremental builds stay cheap.
final as (

    select {{ columns | join(', ') }} from helpdesk
    union all
    select {{ columns | join(', ') }} from servicenow

)

select * from final
