{#-
    The instant a clock reaches its target: the start of the piece of counted time in which
    the running total crosses the target, plus what was still missing at that piece's
    start. Used inside int_ticket_sla_clock's aggregation over `accumulated` pieces.
-#}
{% macro clock_due_at(clock, target) -%}
    min(
        accumulated.piece_start
        + ({{ target }} - accumulated.hours_before) * interval '1 hour'
    ) filter (
        where
        accumulated.clock = '{{ clock }}'
        and accumulated.hours_before < {{ target }}
        and accumulated.hours_before + accumulated.piece_hours >= {{ target }}
    )
{%- endmacro %}


{#-
    A staged ticket whose SLA clocks still run (not yet responded to or not yet resolved):
    int_ticket_sla_clock rebuilds them on every incremental run, found by the ticket
    staging tables' partial index on this condition.
-#}
{% macro sla_clock_running() -%}
    first_response_at is null or resolved_at is null
{%- endmacro %}
