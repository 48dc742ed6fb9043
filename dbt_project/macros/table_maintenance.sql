{#-
    The post-hook of the incremental tables: analyze the table when it has no statistics
    yet, that is when this run built it in full (a new table). An incremental run leaves
    the statistics to autovacuum's autoanalyze, which refreshes them once a tenth of the
    rows changed: its lookups filter on indexed keys and load times, whose newest values
    the planner reads from the index, and analysing samples the whole table however few
    rows the run changed.
-#}
{% macro analyze_when_new(relation) -%}
    do $$
    begin
        if not exists (
            select 1
            from pg_catalog.pg_stat_user_tables as stats
            where
                stats.relid = '{{ relation }}'::regclass
                and (stats.last_analyze is not null or stats.last_autoanalyze is not null)
        ) then
            analyze {{ relation }};
        end if;
    end
    $$
{%- endmacro %}


{#-
    A post-hook: a partial index of relation on column where predicate holds, created when
    the table has no partial index yet (after a full build the new table has none of its
    own). One partial index per table: the check is that the table has one. The name is
    PostgreSQL's own, so it cannot clash with the index of the table a full build
    replaces, which still exists while the hook runs.
-#}
{% macro partial_index(relation, column, predicate) -%}
    do $$
    begin
        if not exists (
            select 1
            from pg_catalog.pg_index as indexes
            where indexes.indrelid = '{{ relation }}'::regclass and indexes.indpred is not null
        ) then
            create index on {{ relation }} ({{ column }}) where {{ predicate }};
        end if;
    end
    $$
{%- endmacro %}
