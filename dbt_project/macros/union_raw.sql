{#-
    The rows of several raw tables of one entity (the same contract columns), union all:
    a source's raw tables, e.g. ServiceNow's Table API and its CSV exports. A raw table
    that does not exist (its source is declared but disabled) is left out; at least one
    must. PostgreSQL pushes a filter on the union (staging's `_loaded_at > x`) into each
    table, so an incremental build reads only the new rows of each.
-#}
{% macro union_raw(relations, columns='*') -%}
    {%- set present = [] -%}
    {%- for relation in relations -%}
        {#- execute: false while dbt parses (and under sqlfluff): every table is taken. -#}
        {%- if not execute or load_relation(relation) is not none -%}
            {%- do present.append(relation) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if not present -%}
        {{ exceptions.raise_compiler_error(
            'none of ' ~ (relations | join(', ')) ~ ' exists: enable one of their sources in sources.yml'
        ) }}
    {%- endif -%}
    {%- for relation in present %}
        {%- if not loop.first %}
    union all
        {%- endif %}
    select {{ columns }} from {{ relation }}
    {%- endfor %}
{%- endmacro %}
