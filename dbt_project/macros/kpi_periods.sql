{#-
    The periods of the KPI marts and what an incremental run of one rebuilds: the period a
    day falls in, the KPI families of kpi_rollup, the CTEs that find the periods touched
    since the mart's last build (kpi_affected_periods) and the filters that keep each step
    to them.
-#}

{#- The first day of the period (day, week from Monday, month) a date falls in. -#}
{% macro period_start(grain, date_expression) -%}
    {%- if grain == 'day' -%}
        cast({{ date_expression }} as date)
    {%- else -%}
        cast(date_trunc('{{ grain }}', {{ date_expression }}) as date)
    {%- endif -%}
{%- endmacro %}


{#-
    The families of kpi_rollup: the CTE, the kpi_days_touched family whose days rebuild it,
    and its columns with their types as computed (the first one counts the family's
    tickets, or is null without them: a segment has the family's row when it is above 0,
    or not null).
-#}
{% macro kpi_rollup_families() -%}
    {{ return([
        {'name': 'created', 'days': 'created', 'columns': [
            ('tickets_created', 'bigint'), ('returning_customer_rate', 'numeric'),
        ]},
        {'name': 'responded', 'days': 'first_response', 'columns': [
            ('tickets_first_responded', 'bigint'), ('first_response_p50_hours', 'double precision'),
            ('first_response_p90_hours', 'double precision'), ('sla_first_response_compliance', 'numeric'),
        ]},
        {'name': 'resolved', 'days': 'resolved', 'columns': [
            ('tickets_resolved', 'bigint'), ('resolution_p50_hours', 'double precision'),
            ('resolution_p90_hours', 'double precision'), ('sla_resolution_compliance', 'numeric'),
            ('sla_resolution_breaches', 'bigint'), ('reopen_rate', 'numeric'),
            ('first_contact_resolution_rate', 'numeric'), ('rework_rate', 'numeric'),
            ('escalation_rate', 'numeric'), ('complaint_rate', 'numeric'), ('survey_response_rate', 'numeric'),
            ('handoffs_per_ticket', 'numeric'), ('reassignment_rate', 'numeric'), ('ping_pong_rate', 'numeric'),
        ]},
        {'name': 'churned', 'days': 'churn', 'columns': [('churn_proxy_rate', 'numeric')]},
        {'name': 'rated', 'days': 'surveys', 'columns': [
            ('surveys', 'bigint'), ('csat_mean', 'numeric'), ('csat_satisfied_rate', 'numeric'), ('nps', 'numeric'),
        ]},
        {'name': 'backlog', 'days': 'backlog', 'columns': [
            ('backlog_open', 'bigint'), ('backlog_age_p90_hours', 'double precision'), ('backlog_overdue', 'bigint'),
        ]},
    ]) }}
{%- endmacro %}


{#- On an incremental run (touched: kpi_touched_periods), whether a date falls in a period
    being rebuilt, as a comparison with the periods' days written out, which fct_tickets'
    indexes on its *_date columns serve with exact estimates; true otherwise. -#}
{% macro kpi_in_affected_periods(touched, date_expression) -%}
    {%- if touched is none -%}
        true
    {%- else -%}
        {%- set days = [] -%}
        {%- for family_days in touched.days.values() -%}
            {%- for day in family_days if day not in days -%}
                {%- set _ = days.append(day) -%}
            {%- endfor -%}
        {%- endfor -%}
        {{ date_expression }} = any(cast('{{ "{" ~ (days | join(",")) ~ "}" }}' as date []))
    {%- endif -%}
{%- endmacro %}


{#- The same for the periods a family's days touched. -#}
{% macro kpi_in_family_periods(touched, family, date_expression) -%}
    {%- if touched is none -%}
        true
    {%- else -%}
        {{ date_expression }} = any(cast('{{ "{" ~ (touched.days.get(family, []) | join(",")) ~ "}" }}' as date []))
    {%- endif -%}
{%- endmacro %}


{#-
    What an incremental KPI mart rebuilds, found when it compiles (so that the SQL carries
    it as literals the planner can estimate): from the tickets whose content changed since
    the mart was last built (its max(built_through)), the days they touched in the
    families the mart reads (fct_tickets.kpi_days_touched; every day the ticket counts on
    when that is null), and the periods of the grain those days fall in. A backlog day
    touches its period only where it is the period's backlog day (the period's last day,
    or the data's last day), and the periods from the day after the one the mart was
    built through to the data's last day have their backlog read at another day now.
    Returns {'periods': {family: [period start, ...]}, 'days': {family: [every day of
    those periods, ...]}} (ISO dates); none on a full build.
-#}
{% macro kpi_touched_periods(grain, families) -%}
    {%- if not execute or incremental_ready('built_through') is not sameas true -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set built_through = '(select max(built.built_through) from ' ~ this ~ ' as built)' -%}
    {%- set query -%}
with

data_end as (

    select
        {{ reporting_date("(" ~ as_of_timestamp() ~ " - interval '1 microsecond')") }} as last_day,
        {{ reporting_date("(" ~ as_of_timestamp(loaded_through=built_through) ~ " - interval '1 microsecond')") }}
            as built_last_day

),

-- Each changed ticket's kpi_days_touched parsed once (offset 0 keeps the planner from
-- parsing it again for each family), the distinct day ranges of the families, their days.
changed_days as (

    select distinct
        touched.family,
        cast(range_days.range_day as date) as touched_day
    from (
        select distinct
            families.family,
            family_ranges.day_range
        from {{ ref('fct_tickets') }} as changed
        cross join lateral (
            select cast(changed.kpi_days_touched as jsonb) as days_touched
            offset 0
        ) as parsed
        cross join unnest(array['{{ families | join("', '") }}']) as families (family)
        cross join lateral jsonb_array_elements(
            coalesce(
                parsed.days_touched -> families.family,
                jsonb_build_array(jsonb_build_array(changed.kpi_days_from, changed.kpi_days_to))
            )
        ) as family_ranges (day_range)
        where changed.content_changed_through > {{ built_through }}
    ) as touched
    cross join lateral generate_series(
        cast(touched.day_range ->> 0 as timestamp), cast(touched.day_range ->> 1 as timestamp), interval '1 day'
    ) as range_days (range_day)

),

family_periods as (

    select distinct
        changed_days.family,
        {{ period_start(grain, 'changed_days.touched_day') }} as period_start
    from changed_days
    cross join data_end
    where
        changed_days.family != 'backlog'
        or changed_days.touched_day = least(
            cast({{ period_start(grain, 'changed_days.touched_day') }} + interval '1 {{ grain }}' - interval '1 day' as date),
            data_end.last_day
        )
    union
    select
        'backlog' as family,
        {{ period_start(grain, 'moved_days.moved_day') }} as period_start
    from data_end
    cross join lateral generate_series(
        cast(coalesce(data_end.built_last_day, data_end.last_day) + 1 as timestamp),
        cast(data_end.last_day as timestamp),
        interval '1 day'
    ) as moved_days (moved_day)
    where {{ 'backlog' in families }}

)

select
    family_periods.family,
    cast(family_periods.period_start as text) as period_start,
    cast(cast(period_days.period_day as date) as text) as period_day
from family_periods
cross join lateral generate_series(
    cast(family_periods.period_start as timestamp),
    cast(family_periods.period_start as timestamp) + interval '1 {{ grain }}' - interval '1 day',
    interval '1 day'
) as period_days (period_day)
order by 1, 3
    {%- endset -%}
    {%- set touched = {'periods': {}, 'days': {}} -%}
    {%- for row in run_query(query).rows -%}
        {%- set periods = touched.periods.setdefault(row[0], []) -%}
        {%- if row[1] not in periods -%}
            {%- set _ = periods.append(row[1]) -%}
        {%- endif -%}
        {%- set _ = touched.days.setdefault(row[0], []).append(row[2]) -%}
    {%- endfor -%}
    {{ return(touched) }}
{%- endmacro %}


{#-
    The CTEs of an incremental KPI mart that say what it rebuilds (touched:
    kpi_touched_periods), as literals: family_periods (family, period_start) and
    affected_periods, every period rebuilt.
-#}
{% macro kpi_affected_periods(touched) -%}
    {%- set rows = [] -%}
    {%- for family, periods in touched.periods.items() -%}
        {%- for period in periods -%}
            {%- set _ = rows.append("('" ~ family ~ "', cast('" ~ period ~ "' as date))") -%}
        {%- endfor -%}
    {%- endfor -%}
family_periods as (

    {% if rows -%}
        select
            touched.family,
            touched.period_start
        from (values {{ rows | join(', ') }}) as touched (family, period_start)
    {%- else -%}
        select
            cast(null as text) as family,
            cast(null as date) as period_start
        where false
    {%- endif %}

),

affected_periods as (

    select distinct family_periods.period_start
    from family_periods

)
{%- endmacro %}


{#- The join condition of two relations on the period and the dimension columns. -#}
{% macro kpi_same_segment(left, right, dims) -%}
    {%- set conditions = [left ~ ".period_start = " ~ right ~ ".period_start"] -%}
    {%- for dim in dims -%}
        {%- set _ = conditions.append(left ~ "." ~ dim ~ " = " ~ right ~ "." ~ dim) -%}
    {%- endfor -%}
    {{ conditions | join("\n            and ") }}
{%- endmacro %}


{#-
    The CTEs of kpi_rollup up to period_ends: the tickets in the backlog at the end of each
    period's backlog day (its last day, or the data's last day for the period in
    progress), with that day (backlog_day) and its end (backlog_at). A ticket is in the
    backlog at the end of each day from its creation to the day before its resolution (to
    the last known day while open). A full build lays every ticket out over its backlog
    days; an incremental run reads only the backlog days of the periods whose backlog was
    touched (family_periods).
-#}
{% macro kpi_backlog_period_ends(grain, incremental) -%}
    {%- if incremental -%}
-- The backlog days of the periods whose backlog was touched.
backlog_days as (

    select
        family_periods.period_start,
        least(
            cast(family_periods.period_start + interval '1 {{ grain }}' - interval '1 day' as date),
            data_end.last_day
        ) as backlog_day
    from family_periods
    cross join data_end
    where
        family_periods.family = 'backlog'
        and family_periods.period_start <= data_end.last_day

),

-- The tickets in the backlog at the end of one of those days: one pass over the tickets
-- created by the last of them and not resolved by the first (fct_tickets' index on
-- resolved_date finds them while the days are recent), each laid out over its backlog
-- days between the two.
backlog_span as (

    select
        min(backlog_days.backlog_day) as first_day,
        max(backlog_days.backlog_day) as last_day
    from backlog_days

),

open_days as (

    select
        tickets.*,
        cast(open_span.backlog_day as date) as backlog_day
    from tickets
    cross join backlog_span
    cross join data_end
    cross join lateral generate_series(
        cast(greatest(tickets.created_date, backlog_span.first_day) as timestamp),
        cast(least(coalesce(tickets.resolved_date - 1, data_end.last_day), backlog_span.last_day) as timestamp),
        interval '1 day'
    ) as open_span (backlog_day)
    where
        tickets.status != 'cancelled'
        and tickets.created_date <= backlog_span.last_day
        and (tickets.resolved_date > backlog_span.first_day or tickets.resolved_date is null)

)
    {%- else -%}
open_days as (

    select
        tickets.*,
        cast(backlog_days.backlog_day as date) as backlog_day
    from tickets
    cross join data_end
    cross join lateral generate_series(
        cast(tickets.created_date as timestamp),
        cast(coalesce(tickets.resolved_date - 1, data_end.last_day) as timestamp),
        interval '1 day'
    ) as backlog_days (backlog_day)
    where tickets.status != 'cancelled'

)
    {%- endif %},

-- Each open day's backlog as it stood at the day's end (the next day's start in the
-- reporting time zone): the touched periods' last days, or every period's last day.
period_ends as (

    select
        open_days.*,
        cast(open_days.backlog_day + 1 as timestamp) at time zone '{{ var("reporting_timezone", "UTC") }}'
            as backlog_at
    from open_days
    {% if incremental -%}
        where open_days.backlog_day in (select backlog_days.backlog_day from backlog_days)
    {%- else -%}
        cross join data_end
        where
            (
                {{ period_start(grain, 'open_days.backlog_day + 1') }}
                != {{ period_start(grain, 'open_days.backlog_day') }}
                or open_days.backlog_day = data_end.last_day
            )
            and open_days.backlog_day <= data_end.last_day
    {%- endif %}

)
{%- endmacro %}


{#-
    The CTEs of kpi_rollup from its families to segments: per family <name>_rows, the
    family CTE's rows and, on an incremental run, <name>_kept, the family's columns of the
    rebuilt periods whose days of the family were not touched, as built; segments, every
    period and segment any family has a row for.
-#}
{% macro kpi_family_rows(period_column, dims, group_by, incremental) -%}
    {%- set ctes = [] -%}
    {%- set segments = [] -%}
    {%- for family in kpi_rollup_families() -%}
        {%- set first_column, first_type = family.columns[0] -%}
        {%- set kept_columns = ['built.' ~ period_column ~ ' as period_start'] -%}
        {%- for dim in dims -%}
            {%- set _ = kept_columns.append('built.' ~ dim) -%}
        {%- endfor -%}
        {%- for column, type in family.columns -%}
            {%- set _ = kept_columns.append('cast(built.' ~ column ~ ' as ' ~ type ~ ') as ' ~ column) -%}
        {%- endfor -%}
        {%- if incremental -%}
            {%- set _ = ctes.append(
                '-- The ' ~ family.name ~ ' columns of the rebuilt periods whose ' ~ family.days
                ~ ' days were not touched: as built.\n'
                ~ family.name ~ '_kept as (\n\n    select\n        ' ~ kept_columns | join(',\n        ')
                ~ '\n    from built\n    where\n        built.' ~ first_column
                ~ (' > 0' if first_type == 'bigint' else ' is not null')
                ~ '\n        and built.' ~ period_column
                ~ ' in (select affected_periods.period_start from affected_periods)'
                ~ '\n        and built.' ~ period_column ~ ' not in (\n            select family_periods.period_start'
                ~ '\n            from family_periods\n            where family_periods.family = \'' ~ family.days
                ~ '\'\n        )\n\n)'
            ) -%}
        {%- endif -%}
        {%- set _ = ctes.append(
            family.name ~ '_rows as (\n\n    select * from ' ~ family.name
            ~ ('\n    union all\n    select * from ' ~ family.name ~ '_kept' if incremental else '')
            ~ '\n\n)'
        ) -%}
        {%- set _ = segments.append('select ' ~ group_by ~ ' from ' ~ family.name ~ '_rows') -%}
    {%- endfor -%}
    {{ ctes | join(',\n\n') }},

segments as (

    {{ segments | join('\n    union\n    ') }}

)
{%- endmacro %}
