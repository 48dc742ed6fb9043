{{ config(materialized='view') }}

{%- set columns = [
    'event_id', 'ticket_id', 'occurred_at', 'event_type', 'from_status', 'to_status', 'from_team', 'to_team',
    'agent_id', 'batch_id', 'loaded_at',
] %}

with

helpdesk as (

    select * from {{ ref('stg_helpdesk__ticket_events') }}

),

servicenow as (

    select * from {{ ref('stg_servicenow__ticket_events') }}

),

-- Every source's lifecycle events in one place; a view, filters reach each staging table.
final as (

    select {{ columns | join(', ') }} from helpdesk
    union all
    select {{ columns | join(', ') }} from servicenow

)

select * from final
