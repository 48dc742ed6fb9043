{#-
    The days whose KPIs a new version of a fct_tickets row moves, as the text of a date[]
    (a text column, which dbt's unit-test fixtures can type): what an
    incremental KPI mart must rebuild for it. previous is the row being replaced (null
    columns for a new ticket), current the new one.

    A ticket counts in the KPIs on its milestone days (created, first response, resolved,
    closed, surveys) and, in the backlog, on every day from its creation to the day before
    its resolution (to the last known day while open). When it changes segment (team,
    channel, priority), status class (cancelled or not) or deadline, every day it counted
    on before or counts on now moves; otherwise only the milestone days of both versions
    and the days between the old and the new end of its backlog. The days already touched
    by earlier versions are kept (previous.kpi_days_touched), so a mart that missed a run
    still rebuilds them.
-#}
{% macro kpi_days_touched(previous, current) -%}
    {%- set milestone_days = [] -%}
    {%- for version in [previous, current] -%}
        {%- for column in ['created_date', 'first_response_date', 'resolved_date', 'closed_date',
                           'first_survey_date', 'last_survey_date'] -%}
            {%- set _ = milestone_days.append(version ~ '.' ~ column) -%}
        {%- endfor -%}
    {%- endfor -%}
    cast(array(
        select distinct touched.touched_day
        from unnest(
            coalesce(cast({{ previous }}.kpi_days_touched as date []), cast(array[] as date []))
            || case
                when
                    {{ previous }}.ticket_id is null
                    or {{ previous }}.team_id is distinct from {{ current }}.team_id
                    or {{ previous }}.channel is distinct from {{ current }}.channel
                    or {{ previous }}.priority is distinct from {{ current }}.priority
                    or ({{ previous }}.status = 'cancelled') is distinct from ({{ current }}.status = 'cancelled')
                    or {{ previous }}.created_date is distinct from {{ current }}.created_date
                    or {{ previous }}.resolution_due_at is distinct from {{ current }}.resolution_due_at
                    then {{ kpi_day_range(previous ~ '.kpi_days_from', previous ~ '.kpi_days_to') }}
                    || {{ kpi_day_range(current ~ '.kpi_days_from', current ~ '.kpi_days_to') }}
                else
                    array[{{ milestone_days | join(', ') }}]
                    || {{ kpi_day_range(
                        'least(' ~ kpi_backlog_end(previous) ~ ', ' ~ kpi_backlog_end(current) ~ ')',
                        'greatest(' ~ kpi_backlog_end(previous) ~ ', ' ~ kpi_backlog_end(current) ~ ')'
                    ) }}
            end
        ) as touched (touched_day)
        where touched.touched_day is not null
        order by touched.touched_day
    ) as text)
{%- endmacro %}


{#- The last day a ticket is in the backlog at the end of (an upper bound while open). -#}
{% macro kpi_backlog_end(version) -%}
    coalesce({{ version }}.resolved_date - 1, {{ version }}.kpi_days_to)
{%- endmacro %}


{#- Every day from first_day to last_day, as a date[] (empty when either is null). -#}
{% macro kpi_day_range(first_day, last_day) -%}
    array(
        select cast(range_days.range_day as date)
        from generate_series(
            cast({{ first_day }} as timestamp), cast({{ last_day }} as timestamp), interval '1 day'
        ) as range_days (range_day)
    )
{%- endmacro %}
