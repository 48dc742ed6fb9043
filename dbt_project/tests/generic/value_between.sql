{#-
    Fails on the rows whose column_name lies outside [min_value, max_value] (bounds
    inclusive unless inclusive=false). Either bound may be left out. Nulls pass: test
    them with not_null.
-#}
{% test value_between(model, column_name, min_value=none, max_value=none, inclusive=true) %}

    {%- if min_value is none and max_value is none -%}
        {{ exceptions.raise_compiler_error("value_between needs min_value, max_value or both") }}
    {%- endif -%}

    {%- set out_of_range_conditions = [] -%}
    {%- if min_value is not none -%}
        {%- set _ = out_of_range_conditions.append(
            "checked_value " ~ ("<" if inclusive else "<=") ~ " " ~ min_value
        ) -%}
    {%- endif -%}
    {%- if max_value is not none -%}
        {%- set _ = out_of_range_conditions.append(
            "checked_value " ~ (">" if inclusive else ">=") ~ " " ~ max_value
        ) -%}
    {%- endif -%}

    with

    checked as (

        select {{ column_name }} as checked_value
        from {{ model }}
        where {{ column_name }} is not null

    ),

    out_of_range as (

        select checked_value
        from checked
        where {{ out_of_range_conditions | join(" or ") }}

    )

    select * from out_of_range

{% endtest %}
