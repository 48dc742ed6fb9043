{#-
    The KPI columns of the kpi_rollup marts a target (seeds/kpi_targets.csv) can name.
-#}
{% macro kpi_metric_columns() -%}
    {{ return([
        'first_response_p50_hours', 'first_response_p90_hours', 'resolution_p50_hours',
        'resolution_p90_hours', 'sla_first_response_compliance', 'sla_resolution_compliance',
        'backlog_open', 'backlog_age_p90_hours', 'backlog_overdue', 'reopen_rate',
        'first_contact_resolution_rate', 'rework_rate', 'escalation_rate', 'complaint_rate',
        'csat_mean', 'csat_satisfied_rate', 'nps', 'survey_response_rate',
        'returning_customer_rate', 'churn_proxy_rate', 'handoffs_per_ticket',
        'reassignment_rate', 'ping_pong_rate',
    ]) }}
{%- endmacro %}
