{{
    config(
        materialized='incremental',
        unique_key='survey_id',
        incremental_strategy='delete+insert',
        indexes=[{'columns': ['survey_id']}, {'columns': ['loaded_at']}, {'columns': ['ticket_id']}],
        post_hook=['{{ analyze_when_new(this) }}'],
    )
}}

with

source as (

    select * from {{ source('survey_drop', 'survey_drop__surveys') }}

),

-- The same drop can be delivered twice; keep each survey's latest load.
latest as (

    {{ latest_version('source', 'survey_id', loaded=source('survey_drop', 'survey_drop__surveys')) }}

),

final as (

    select
        survey_id,
        ticket_id,
        submitted_at,
        csat,
        nps,
        complaint,
        -- Personal data: e-mail addresses and phone numbers are masked.
        {{ mask_contact_details('comment') }} as comment,  -- noqa: RF04
        _batch_id as batch_id,
        _loaded_at as loaded_at
    from latest

)

select * from final
{{ only_changed_content('final', 'survey_id') }}
