{#-
    The latest version of each record of a relation (a CTE name or a ref/source).

    Raw is append-only: a record is extracted again whenever it changes and inside each
    extraction's overlap window, so staging keeps one row per key, the first by order_by.

    In an incremental staging table (incremental_ready('loaded_at')), only the keys with a
    version loaded into raw after the newest load the table holds are ranked again, over
    all their versions; the model's delete+insert on the key replaces those rows. A full
    build ranks every key. Pass the raw table as loaded when relation is a CTE: the keys
    are then looked up in the table (by its index on _loaded_at), not in the CTE, which
    PostgreSQL would materialise whole for being read twice.

    When the order is by load alone (order_by "_loaded_at desc", the default: events and
    surveys, which do not change once they happened), a key's latest version is always
    one of the versions loaded since the table's newest load, so only those are ranked,
    found by the raw table's index on _loaded_at: the key's older versions, which the
    lookup by key would read from the whole raw table, cannot win. The table's newest
    load is written into the SQL as a literal (macros/changed_tickets.sql's
    latest_value_literal), so the planner sees how few rows are that new.
-#}

{#- In an incremental staging table: only the keys loaded (into the raw table loaded) since
    its newest load; with newest_load_wins, only their versions loaded since then. -#}
{% macro loaded_since_staged(loaded, key, newest_load_wins=false) -%}
    {%- if incremental_ready('loaded_at') is sameas true -%}
        {%- set newest_load = latest_value_literal(this, 'loaded_at') -%}
        {%- if newest_load_wins -%}
            where _loaded_at > {{ newest_load }}
        {%- else -%}
            where {{ key }} in (
                select newer.{{ key }}
                from {{ loaded }} as newer
                where newer._loaded_at > {{ newest_load }}
            )
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{% macro latest_version(relation, key, order_by="_loaded_at desc", loaded=none) -%}
    select *
    from (
        select
            *,
            row_number() over (
                partition by {{ key }}
                order by {{ order_by }}
            ) as version_rank
        from {{ relation }} {{ loaded_since_staged(loaded or relation, key, order_by.strip() == '_loaded_at desc') }}
    ) as versions
    where version_rank = 1
{%- endmacro %}


{#-
    The end of an incremental staging model: a record whose latest version has the same
    content as the row the table holds (read again by an overlapping extraction or a rerun
    of an interval) is left out, so the row keeps its load time and nothing downstream
    rebuilds for it. Compared column by column (the table's columns but the bookkeeping
    ones), as one row comparison: turning both rows into jsonb to compare them costs
    several times as much per record.
-#}
{% macro only_changed_content(relation, key) -%}
    {%- if incremental_ready('loaded_at') is sameas true %}
        {%- set columns = adapter.get_columns_in_relation(this) | map(attribute='name') | map('lower')
            | reject('in', ['batch_id', 'loaded_at']) | list -%}
    where not exists (
        select 1
        from {{ this }} as staged
        where
            staged.{{ key }} = {{ relation }}.{{ key }}
            and (staged.{{ columns | join(', staged.') }})
            is not distinct from ({{ relation }}.{{ columns | join(', ' ~ relation ~ '.') }})
    )
    {%- endif %}
{%- endmacro %}
