with

targets as (

    select * from {{ ref('kpi_targets') }}

),

organisation as (

    select * from {{ ref('kpi_organisation_monthly') }}

),

by_priority as (

    select * from {{ ref('kpi_priority_monthly') }}

),

-- The scorecard month: the latest calendar month the data covers completely, or the
-- month in progress while there is none.
scorecard_month as (

    select
        coalesce(
            max(month_start) filter (
                where month_start + interval '1 month' <= {{ reporting_date(as_of_timestamp()) }}
            ),
            max(month_start)
        ) as month_start
    from organisation

),

actuals as (

    select
        month_start,
        'all' as priority,
    {%- for metric in kpi_metric_columns() %}
        {{ metric }}{{ "," if not loop.last }}
    {%- endfor %}
    from organisation
    union all
    select
        month_start,
        priority,
    {%- for metric in kpi_metric_columns() %}
        {{ metric }}{{ "," if not loop.last }}
    {%- endfor %}
    from by_priority

),

measured as (

    select
        targets.target_id,
        targets.metric,
        targets.priority,
        targets.target_value,
        targets.direction,
        targets.amber_margin,
        targets.deadline,
        scorecard_month.month_start,
        case targets.metric
            {%- for metric in kpi_metric_columns() %}
                when '{{ metric }}' then cast(actuals.{{ metric }} as double precision)
            {%- endfor %}
        end as actual_value
    from targets
    cross join scorecard_month
    left join actuals
        on
            targets.priority = actuals.priority
            and scorecard_month.month_start = actuals.month_start

),

final as (

    select
        target_id,
        metric,
        priority,
        month_start,
        actual_value,
        target_value,
        direction,
        amber_margin,
        deadline,
        case
            when actual_value is null then null
            when direction = 'at_least' and actual_value >= target_value then 'green'
            when direction = 'at_most' and actual_value <= target_value then 'green'
            when direction = 'at_least' and actual_value >= target_value - amber_margin then 'amber'
            when direction = 'at_most' and actual_value <= target_value + amber_margin then 'amber'
            else 'red'
        end as status,
        deadline - cast(month_start + interval '1 month' - interval '1 day' as date) as days_to_deadline
    from measured

)

select * from final
