{#-
    The status a lifecycle event puts its ticket in: its to_status, or for lifecycle events
    recorded without one (created, triaged, assigned, reopened, resolved, closed) the status
    the event implies. Events that do not move the status (handoff, reassigned, escalated,
    customer_replied) give null: the ticket keeps the status it has.
-#}
{% macro event_status(to_status, event_type) -%}
    coalesce(
        {{ to_status }},
        case {{ event_type }}
            when 'created' then 'new'
            when 'triaged' then 'triaged'
            when 'assigned' then 'assigned'
            when 'reopened' then 'in_progress'
            when 'resolved' then 'resolved'
            when 'closed' then 'closed'
        end
    )
{%- endmacro %}
