{#-
    The days whose KPIs a new version of a fct_tickets row moves, per KPI family, as the
    text of a jsonb object (a text column, which dbt's unit-test fixtures can type) whose
    keys are the families (created, first_response, resolved, churn, closed, surveys,
    backlog) and values arrays of day ranges, [first, last] inclusive: what an
    incremental KPI mart must rebuild for it, for the families it reads. Ranges, not
    days: built for every row of a full build, they cost no subquery per row. previous is the row being replaced (null columns for a new ticket),
    current the new one.

    Each KPI family counts a ticket on its own day and reads its own columns
    (macros/kpi_rollup.sql, kpi_delay_causes, kpi_bottleneck_weekly); a family's days of
    both versions are touched only when a column it reads differs between them
    (kpi_day_families), or the segment (team, channel, priority), which every family reads.
    Two families span days: the surveys count on each survey's day (the range from the
    first survey's to the last one's), and the backlog on every day from creation to the
    day before resolution (to the last known day while open; kpi_backlog_days).

    retain_previous (a SQL condition; none on a full build) keeps the days touched by the
    version being replaced when a KPI mart has not been built since it changed (see
    kpi_marts_built_through), so a mart that missed a run still rebuilds them; otherwise
    they are dropped and the days do not pile up while a ticket changes every day.
-#}
{% macro kpi_days_touched(previous, current, retain_previous=none) -%}
    {%- set segment_changed = [previous ~ '.ticket_id is null'] -%}
    {%- for column in ['team_id', 'channel', 'priority'] -%}
        {%- set _ = segment_changed.append(kpi_differs(previous, current, column)) -%}
    {%- endfor -%}
    {%- set segment_changed = '(' ~ (segment_changed | join(' or ')) ~ ')' -%}
    {%- set families = {} -%}
    {%- for family in kpi_day_families() -%}
        {%- set changed = [segment_changed] -%}
        {%- for column in family.reads -%}
            {%- set _ = changed.append(kpi_differs(previous, current, column)) -%}
        {%- endfor -%}
        {%- set old_day, new_day = previous ~ '.' ~ family.day, current ~ '.' ~ family.day -%}
        {%- set new_only = 'case when ' ~ new_day ~ ' is distinct from ' ~ old_day ~ ' then ' ~ new_day ~ ' end' -%}
        {%- set _ = families.update({family.name: kpi_ranges_when(
            changed | join(' or '),
            kpi_range(old_day, old_day) ~ ' || ' ~ kpi_range(new_only, new_only)
        )}) -%}
    {%- endfor -%}
    {%- set _ = families.update({'surveys': kpi_ranges_when(
        segment_changed ~ ' or ' ~ kpi_differs(previous, current, 'survey_digest'),
        kpi_range(previous ~ '.first_survey_date', previous ~ '.last_survey_date')
        ~ ' || ' ~ kpi_range(current ~ '.first_survey_date', current ~ '.last_survey_date')
    )}) -%}
    {%- set _ = families.update({'backlog': kpi_backlog_days(previous, current, segment_changed)}) -%}
    {%- set entries = [] -%}
    {%- for name, ranges in families.items() -%}
        {%- set kept = kpi_ranges_when(
            retain_previous, 'cast(' ~ previous ~ ".kpi_days_touched as jsonb) -> '" ~ name ~ "'"
        ) ~ ' || ' if retain_previous else '' -%}
        {%- set _ = entries.append("'" ~ name ~ "', " ~ kept ~ ranges) -%}
    {%- endfor -%}
    cast(jsonb_build_object({{ entries | join(',\n') }}) as text)
{%- endmacro %}


{#- The days from first_day to last_day, as a jsonb array of one range [first, last] (none
    when either is null or first is after last). -#}
{% macro kpi_range(first_day, last_day) -%}
    case
        when ({{ first_day }}) <= ({{ last_day }})
            then jsonb_build_array(jsonb_build_array({{ first_day }}, {{ last_day }}))
        else cast('[]' as jsonb)
    end
{%- endmacro %}


{#- ranges (a jsonb array of ranges) when condition holds, else none. -#}
{% macro kpi_ranges_when(condition, ranges) -%}
    case when {{ condition }} then coalesce({{ ranges }}, cast('[]' as jsonb)) else cast('[]' as jsonb) end
{%- endmacro %}


{#-
    The backlog days a change moves. All of both versions' when the segment, the status
    class (cancelled or not) or the creation changed: the backlog's membership, segment or
    age moved on each. Otherwise those between the old and the new end of the backlog (a
    resolution, a reopen, the data's last day moving on), and, when the deadline moved,
    those whose overdue flag (deadline before the end of the day) can differ: from the
    earlier deadline's day to the later one's (to the backlog's end when one is unknown),
    within the backlog. A paused resolution clock moves an open ticket's deadline every
    run, but only ever past the data's last day: no backlog day moves for it.
-#}
{% macro kpi_backlog_days(previous, current, segment_changed) -%}
    {%- set end_previous, end_current = kpi_backlog_end(previous), kpi_backlog_end(current) -%}
    {%- set last_end = 'greatest(' ~ end_previous ~ ', ' ~ end_current ~ ')' -%}
    {%- set due_previous, due_current = previous ~ '.resolution_due_at', current ~ '.resolution_due_at' -%}
    case
        when {{ previous }}.status = 'cancelled' and {{ current }}.status = 'cancelled'
            then cast('[]' as jsonb)
        when
            {{ segment_changed }}
            or ({{ previous }}.status = 'cancelled') is distinct from ({{ current }}.status = 'cancelled')
            or {{ kpi_differs(previous, current, 'created_at') }}
            then {{ kpi_range(previous ~ '.created_date', end_previous) }}
            || {{ kpi_range(current ~ '.created_date', end_current) }}
        else
            {{ kpi_ranges_when(
                end_previous ~ ' is distinct from ' ~ end_current,
                kpi_range('least(' ~ end_previous ~ ', ' ~ end_current ~ ')', last_end)
            ) }}
            || {{ kpi_ranges_when(
                kpi_differs(previous, current, 'resolution_due_at'),
                kpi_range(
                    'greatest(' ~ current ~ '.created_date, '
                    ~ reporting_date('least(' ~ due_previous ~ ', ' ~ due_current ~ ')') ~ ')',
                    'least(' ~ last_end ~ ', case when ' ~ due_previous ~ ' is null or ' ~ due_current
                    ~ ' is null then ' ~ last_end ~ ' else '
                    ~ reporting_date('greatest(' ~ due_previous ~ ', ' ~ due_current ~ ')') ~ ' end)'
                )
            ) }}
    end
{%- endmacro %}


{#-
    The KPI families that count a ticket on one day (besides the segment): the day column
    and the fct_tickets columns the family's KPIs read on that day.
    - created: volume and returning customers (kpi_rollup's created);
    - first response: its percentiles and SLA compliance (kpi_rollup's responded);
    - resolution: resolution percentiles, SLA compliance and breaches, the quality rates
      (kpi_rollup's resolved) and the delay causes with their CSAT (kpi_delay_causes);
    - churn: the churn proxy rate of the complaints resolved that day (kpi_rollup's
      churned), a family of its own because a complaint's churn proxy is decided up to 90
      days after it, when the customer comes back or does not;
    - close: the cycle time split into stages (kpi_bottleneck_weekly).
    A KPI that reads a new column on one of these days must add it here.
-#}
{% macro kpi_day_families() -%}
    {{ return([
        {'name': 'created', 'day': 'created_date', 'reads': ['created_date', 'returning_customer']},
        {'name': 'first_response', 'day': 'first_response_date', 'reads': [
            'first_response_date', 'first_response_hours', 'first_response_breached',
        ]},
        {'name': 'resolved', 'day': 'resolved_date', 'reads': [
            'resolved_date', 'resolution_hours', 'resolution_breached', 'reopened',
            'first_contact_resolution', 'rework', 'escalated', 'complaint', 'survey_count',
            'handoff_count', 'reassignment_count', 'ping_pong', 'csat', 'delay_cause',
        ]},
        {'name': 'churn', 'day': 'resolved_date', 'reads': ['resolved_date', 'complaint', 'churn_proxy']},
        {'name': 'closed', 'day': 'closed_date', 'reads': [
            'closed_date', 'cycle_hours', 'intake_hours', 'assignment_hours',
            'active_work_hours', 'waiting_customer_hours', 'waiting_third_party_hours',
            'evaluation_hours',
        ]},
    ]) }}
{%- endmacro %}


{#- Whether a column differs between two versions of a row. -#}
{% macro kpi_differs(previous, current, column) -%}
    {{ previous }}.{{ column }} is distinct from {{ current }}.{{ column }}
{%- endmacro %}


{#- The last day a ticket is in the backlog at the end of (an upper bound while open). -#}
{% macro kpi_backlog_end(version) -%}
    coalesce({{ version }}.resolved_date - 1, {{ version }}.kpi_days_to)
{%- endmacro %}


{#-
    The oldest build among the incremental KPI marts (the models that read
    fct_tickets.kpi_days_touched: the callers of kpi_rollup and kpi_affected_periods), as
    a SQL expression: the earliest of their max(built_through), -infinity for an empty
    one, null when one is not built yet (or by a version without built_through). Read by
    fct_tickets before the run's marts are built, so it says what the marts have seen.
-#}
{% macro kpi_marts_built_through() -%}
    {%- set readers = [] -%}
    {%- set unbuilt = [] -%}
    {%- if execute -%}
        {%- for node in graph.nodes.values() if node.resource_type == 'model' -%}
            {%- set macros = node.depends_on.macros -%}
            {%- if 'macro.serviceloop.kpi_rollup' in macros or 'macro.serviceloop.kpi_affected_periods' in macros -%}
                {%- set relation = adapter.get_relation(node.database, node.schema, node.alias) -%}
                {%- set columns = [] if relation is none
                    else adapter.get_columns_in_relation(relation) | map(attribute='name') | map('lower') | list -%}
                {%- if 'built_through' in columns -%}
                    {%- set _ = readers.append(
                        "(select coalesce(max(built.built_through), cast('-infinity' as timestamptz)) from "
                        ~ relation ~ " as built)"
                    ) -%}
                {%- else -%}
                    {%- set _ = unbuilt.append(node.name) -%}
                {%- endif -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if unbuilt or not readers -%}
        cast(null as timestamptz)
    {%- else -%}
        least({{ readers | join(', ') }})
    {%- endif -%}
{%- endmacro %}
