{#-
    The calendar day a timestamptz falls on in the reporting time zone
    (var reporting_timezone, UTC by default), independent of the session's time zone.
-#}
{% macro reporting_date(ts) -%}
    cast(({{ ts }} at time zone '{{ var("reporting_timezone", "UTC") }}') as date)
{%- endmacro %}
