{#-
    One row per calendar day, column date_day, from start_date to end_date inclusive.
    Both arguments are SQL expressions of type date; when they are columns of a relation
    (a one-row CTE of bounds, say), name it in from_relation. Empty when either is null.
-#}
{% macro date_spine(start_date, end_date, from_relation=none) -%}
    {%- set bounds_join = from_relation ~ " cross join " if from_relation else "" -%}
    select cast(spine.spine_day as date) as date_day
    from {{ bounds_join }}generate_series(
        cast({{ start_date }} as timestamp),
        cast({{ end_date }} as timestamp),
        interval '1 day'
    ) as spine (spine_day)
{%- endmacro %}
