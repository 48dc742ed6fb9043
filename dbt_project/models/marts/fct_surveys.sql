{{
    config(
        materialized='incremental',
        unique_key='ticket_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['ticket_id']}, {'columns': ['source_loaded_at']}],
    )
}}

{%- set incremental = incremental_ready('source_loaded_at') is sameas true %}

with

changed as (

    {{ tickets_to_rebuild(incremental, ref('stg_survey_drop__surveys'), entities=['surveys']) }}

),

surveys as (

    select * from {{ ref('stg_survey_drop__surveys') }}
    where {{ in_rebuilt_tickets(incremental) }}

),

-- The free-text comment may hold personal data: it stays in staging.
final as (

    select
        survey_id,
        ticket_id,
        submitted_at,
        {{ reporting_date('submitted_at') }} as submitted_date,
        csat,
        csat >= 4 as satisfied,
        nps,
        case
            when nps >= 9 then 'promoter'
            when nps >= 7 then 'passive'
            when nps >= 0 then 'detractor'
        end as nps_group,
        complaint,
        max(loaded_at) over (partition by ticket_id) as source_loaded_at
    from surveys

)

select * from final
