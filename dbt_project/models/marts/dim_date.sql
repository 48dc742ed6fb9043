with

tickets as (

    select * from {{ ref('int_tickets_unioned') }}

),

targets as (

    select * from {{ ref('kpi_targets') }}

),

-- From the first ticket to the later of the data's "now" and the last target deadline, so
-- every KPI row and every target deadline has its day.
bounds as (

    select
        coalesce(
            (select min({{ reporting_date('tickets.created_at') }}) from tickets),
            {{ reporting_date(as_of_timestamp()) }}
        ) as first_date,
        greatest(
            {{ reporting_date(as_of_timestamp()) }},
            (select max(targets.deadline) from targets)
        ) as last_date

),

days as (

    {{ date_spine('bounds.first_date', 'bounds.last_date', from_relation='bounds') }}

),

final as (

    select
        date_day,
        cast(date_trunc('week', date_day) as date) as week_start,
        cast(date_trunc('month', date_day) as date) as month_start,
        cast(extract(isodow from date_day) as integer) as iso_weekday,
        cast(extract(year from date_day) as integer) as calendar_year,
        extract(isodow from date_day) >= 6 as is_weekend
    from days

)

select * from final
