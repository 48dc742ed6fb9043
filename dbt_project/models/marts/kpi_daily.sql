{{
    config(
        materialized='incremental',
        unique_key='kpi_date',
        incremental_strategy='delete+insert',
    )
}}

{{ kpi_rollup('day', 'kpi_date', ['team_id', 'channel', 'priority']) }}
