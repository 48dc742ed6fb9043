{#-
    Durations and KPI values leave the models as double precision (pandas and the
    drift checks read floats, not Decimals), rounded so that equal durations compare
    equal.
-#}

{#- Calendar hours in an interval expression, rounded to 4 decimals (a third of a second). -#}
{% macro interval_hours(interval_expression) -%}
    {{ rounded('extract(epoch from (' ~ interval_expression ~ ')) / 3600.0', 4) }}
{%- endmacro %}

{#- Calendar hours from start_ts to end_ts (timestamptz); null when either is null. -#}
{% macro hours_between(start_ts, end_ts) -%}
    {{ interval_hours(end_ts ~ ' - ' ~ start_ts) }}
{%- endmacro %}

{#- A number rounded to a number of decimals, as double precision. -#}
{% macro rounded(expression, decimals) -%}
    cast(round(cast({{ expression }} as numeric), {{ decimals }}) as double precision)
{%- endmacro %}
