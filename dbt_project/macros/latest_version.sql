{#-
    The latest version of each record of a relation (a CTE name or a ref/source).

    Raw is append-only: a record is extracted again whenever it changes and inside each
    extraction's overlap window, so staging keeps one row per key, the first by order_by.
-#}
{% macro latest_version(relation, key, order_by="_loaded_at desc") -%}
    select *
    from (
        select
            *,
            row_number() over (
                partition by {{ key }}
                order by {{ order_by }}
            ) as version_rank
        from {{ relation }}
    ) as versions
    where version_rank = 1
{%- endmacro %}
