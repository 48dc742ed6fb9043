{{
    config(
        materialized='incremental',
        unique_key='week_start',
        incremental_strategy='delete+insert',
    )
}}

{{ kpi_rollup('week', 'week_start', ['team_id']) }}
