{{
    config(
        materialized='incremental',
        unique_key='month_start',
        incremental_strategy='delete+insert',
    )
}}

{{ kpi_rollup('month', 'month_start', ['team_id']) }}
