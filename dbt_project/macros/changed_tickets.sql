{#-
    The incremental rule of the ticket-grain models (int_ticket_status_intervals,
    int_ticket_lifecycle_staged, int_ticket_sla_clock, fct_tickets, fct_ticket_stages,
    fct_handoffs, fct_surveys): on an incremental run they rebuild every row of the tickets
    returned here, and only those.

    A ticket is rebuilt when any of its records the model reads (entities) changed in
    staging after the latest load the model has already seen (its max(source_loaded_at)):
    a new or updated ticket, a new lifecycle event (reopened, reassigned, handed off ...),
    a new survey. Staging keeps a record's load time until its content changes (macros/
    latest_version.sql), so a record read again unchanged (the extraction's overlap
    window, a rerun of an interval) rebuilds nothing. With ticket_state=true (fct_tickets)
    also the tickets still open, since whether an open ticket has breached its SLA depends
    on the moment the data is known through (macros/as_of_timestamp.sql), and the tickets
    of the customers whose sequence of tickets changed (returning customer and churn proxy
    look at the customer's tickets before and after: a new ticket, or one moved to another
    customer or creation time, changes its neighbours; a status change does not). The watermark is the data's own load time, not the clock,
    so a second run without new data rebuilds nothing but the open tickets, identically.
    Staging's loaded_at is indexed: finding the changed tickets reads only them.
-#}
{% macro changed_ticket_ids(entities=('tickets', 'ticket_events', 'surveys'), ticket_state=false) -%}
    (
        with

        watermark as (

            select coalesce(max(source_loaded_at), cast('-infinity' as timestamptz)) as loaded_through
            from {{ this }}

        ),

        loaded as (

            {% set staged = {
                'tickets': 'int_tickets_unioned',
                'ticket_events': 'int_ticket_events_unioned',
                'surveys': 'stg_survey_drop__surveys',
            } -%}
    {%- for entity in entities %}
        {%- if not loop.first %}
            union
        {%- endif %}
            select staged_records.ticket_id
            from {{ ref(staged[entity]) }} as staged_records
            where staged_records.loaded_at > (select watermark.loaded_through from watermark)
    {%- endfor %}

        ){% if ticket_state %},

        open_tickets as (

            select ticket_id
            from {{ this }}
            where status not in ('resolved', 'closed', 'cancelled') or churn_proxy is null

        ),

        -- The customers whose sequence of tickets changed: a new ticket, or one that moved
        -- to another customer or another creation time (old and new customer both).
        moved_customers as (

            select changed.customer_id
            from {{ ref('int_tickets_unioned') }} as changed
            left join {{ this }} as built
                on changed.ticket_id = built.ticket_id
            where
                changed.ticket_id in (select loaded.ticket_id from loaded)
                and (
                    built.ticket_id is null
                    or built.customer_id is distinct from changed.customer_id
                    or built.created_at is distinct from changed.created_at
                )

            union

            select built.customer_id
            from {{ this }} as built
            inner join {{ ref('int_tickets_unioned') }} as changed
                on built.ticket_id = changed.ticket_id
            where
                built.ticket_id in (select loaded.ticket_id from loaded)
                and built.customer_id is distinct from changed.customer_id

        ),

        same_customer as (

            select same.ticket_id
            from {{ ref('int_tickets_unioned') }} as same
            where same.customer_id in (select moved_customers.customer_id from moved_customers)

        ){% endif %}

        select ticket_id from loaded
    {%- if ticket_state %}
        union
        select ticket_id from open_tickets
        union
        select ticket_id from same_customer
    {%- endif %}
    )
{%- endmacro %}

{#-
    When the ingest last loaded a batch (ops.batches.loaded_at; an empty batch counts, as it
    moves the moment the data is known through). Every change of the marts' inputs comes
    with a batch, so it versions their content; derived from the data, so a rebuild without
    a new batch stamps the same value.
-#}
{% macro ingest_loaded_through() -%}
    (select max(batches.loaded_at) from {{ source('ops', 'batches') }} as batches)
{%- endmacro %}


{#-
    The body of a ticket-grain fact's `changed` CTE: on an incremental run the tickets
    changed_ticket_ids returns, on a full build every ticket of full_build (the relation
    the model is built from).
-#}
{% macro tickets_to_rebuild(incremental, full_build) -%}
    {% if incremental -%}
        select ticket_id from {{ changed_ticket_ids(**kwargs) }} as changed_ids
    {%- else -%}
        select ticket_id from {{ full_build }}
    {%- endif %}
{%- endmacro %}
