{#-
    The continuous percentile (linear interpolation between the two nearest values, as
    PostgreSQL's percentile_cont) of expression over the rows of the group; fraction in
    [0, 1], e.g. 0.9 for p90. Use it as an aggregate, optionally with a filter.
-#}
{% macro percentile(expression, fraction) -%}
    percentile_cont({{ fraction }}) within group (order by {{ expression }})
{%- endmacro %}
