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
    on the moment the data is known through (macros/as_of_timestamp.sql), and the
    neighbours of the tickets that moved in their customer's sequence (ordered by
    created_at, then ticket_id). A ticket's returning-customer flag reads only the
    customer's ticket just before it and its churn proxy only the one just after it
    (fct_tickets' previous_ticket_at and next_ticket_at), so a new ticket, or one moved to
    another customer or creation time, changes those two values of its predecessor and
    successor in the new sequence and of the ones it left in the old sequence (they become
    each other's neighbours), and of no other ticket; a status change changes none. The
    watermark is the data's own load time, not the clock,
    so a second run without new data rebuilds nothing but the open tickets, identically.
    Staging's loaded_at is indexed: finding the changed tickets reads only them. The
    watermark is read when the model compiles and written into the SQL as a literal, so
    the planner knows how few rows follow it (a subquery would be planned as a third of
    the table).
-#}
{% macro changed_ticket_ids(entities=('tickets', 'ticket_events', 'surveys'), ticket_state=false) -%}
    {%- set loaded_through = latest_value_literal(this, 'source_loaded_at') -%}
    (
        with

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
            where staged_records.loaded_at > {{ loaded_through }}
    {%- endfor %}

        ){% if ticket_state %},

        open_tickets as (

            select ticket_id
            from {{ this }}
            where {{ undecided_ticket() }}

        ),

        -- The tickets that moved in their customer's sequence: new, or moved to another
        -- customer or creation time; built_* is where they stood (null for a new one).
        moved as (

            select
                changed.ticket_id,
                changed.customer_id,
                changed.created_at,
                built.customer_id as built_customer_id,
                built.created_at as built_created_at
            from {{ ref('int_tickets_unioned') }} as changed
            left join {{ this }} as built
                on changed.ticket_id = built.ticket_id
            where
                changed.ticket_id = any(array(select loaded.ticket_id from loaded))
                and (
                    built.ticket_id is null
                    or built.customer_id is distinct from changed.customer_id
                    or built.created_at is distinct from changed.created_at
                )

        ),

        -- Their neighbours: the customer's tickets just before and just after them now
        -- (staging) and where they were (the table as built). Index lookups on
        -- (customer_id, created_at, ticket_id) of both.
        same_customer as (

            {{ customer_neighbour(ref('int_tickets_unioned'), 'moved.customer_id', 'moved.created_at', '<') }}
            union
            {{ customer_neighbour(ref('int_tickets_unioned'), 'moved.customer_id', 'moved.created_at', '>') }}
            union
            {{ customer_neighbour(this, 'moved.built_customer_id', 'moved.built_created_at', '<') }}
            union
            {{ customer_neighbour(this, 'moved.built_customer_id', 'moved.built_created_at', '>') }}

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
    A fct_tickets row whose content can change with the moment the data is known through
    alone: still open, or a complaint whose churn proxy is not decided yet. An incremental
    run rebuilds them all; fct_tickets has a partial index on this condition, so finding
    them reads only them.
-#}
{% macro undecided_ticket() -%}
    status not in ('resolved', 'closed', 'cancelled') or churn_proxy is null
{%- endmacro %}


{#-
    The ticket just before (direction '<') or just after ('>') each moved ticket in its
    customer's sequence in relation, as a select of ticket_id.
-#}
{% macro customer_neighbour(relation, customer_id, created_at, direction) -%}
    select neighbour.ticket_id
    from moved
    cross join lateral (
        {{ customer_sequence_neighbour(relation, customer_id, created_at, 'moved.ticket_id', direction, 'ticket_id') }}
    ) as neighbour
{%- endmacro %}


{#-
    The column of the ticket just before (direction '<') or just after ('>') the ticket
    (customer_id, created_at, ticket_id) in its customer's sequence in relation, as the body
    of a lateral subquery: at most one row. The sequence is ordered by created_at, then
    ticket_id, in fct_tickets' customer history and in the neighbours an incremental run
    rebuilds alike; an index on (customer_id, created_at, ticket_id) makes it one lookup.
-#}
{% macro customer_sequence_neighbour(relation, customer_id, created_at, ticket_id, direction, column) -%}
    {%- set order = 'desc' if direction == '<' else 'asc' -%}
    select same.{{ column }}
    from {{ relation }} as same
    where
        same.customer_id = {{ customer_id }}
        and (same.created_at, same.ticket_id) {{ direction }} ({{ created_at }}, {{ ticket_id }})
    order by same.created_at {{ order }}, same.ticket_id {{ order }}
    limit 1
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


{#-
    The filter of a ticket-grain model's inputs to the tickets it rebuilds (its `changed`
    CTE). On an incremental run `= any(array(...))`: the planner counts a handful of
    tickets and reads each input by its ticket_id index, where `in (select ...)` over a
    CTE of unknown size is planned as a scan of the whole input. On a full build, where
    every ticket is rebuilt, a semi-join.
-#}
{% macro in_rebuilt_tickets(incremental, column='ticket_id') -%}
    {%- if incremental -%}
        {{ column }} = any(array(select changed.ticket_id from changed))
    {%- else -%}
        {{ column }} in (select changed.ticket_id from changed)
    {%- endif -%}
{%- endmacro %}


{#-
    The latest value of a timestamptz column of a relation as a SQL literal, read when the
    model compiles (-infinity when the relation is empty, or while dbt only parses).
-#}
{% macro latest_value_literal(relation, column) -%}
    {%- set value = '-infinity' -%}
    {%- if execute -%}
        {%- set result = run_query(
            "select cast(coalesce(max(" ~ column ~ "), '-infinity') as text) from " ~ relation
        ) -%}
        {%- set value = result.columns[0].values()[0] -%}
    {%- endif -%}
    cast('{{ value }}' as timestamptz)
{%- endmacro %}
