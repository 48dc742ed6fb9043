{{
    config(
        materialized='incremental',
        unique_key='ticket_id',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        indexes=[
            {'columns': ['ticket_id']}, {'columns': ['source_loaded_at']}, {'columns': ['content_changed_through']},
            {'columns': ['customer_id', 'created_at', 'ticket_id']},
            {'columns': ['created_date']}, {'columns': ['first_response_date']},
            {'columns': ['resolved_date']}, {'columns': ['closed_date']}, {'columns': ['complaint', 'resolved_date']},
        ],
        post_hook=['{{ partial_index(this, "ticket_id", undecided_ticket()) }}', '{{ analyze_when_new(this) }}'],
    )
}}

{%- set incremental = incremental_ready('survey_digest') is sameas true %}
{#- On an incremental run every input is read for the rebuilt tickets only (by their
    ticket_id indexes: macros/changed_tickets.sql's in_rebuilt_tickets). -#}
{%- set rebuilt_only = 'where ' ~ in_rebuilt_tickets(incremental) if incremental else '' %}

with

changed as (

    {{ tickets_to_rebuild(incremental, ref('int_tickets_unioned'), ticket_state=true) }}

),

tickets as (

    select * from {{ ref('int_tickets_unioned') }}
    where {{ in_rebuilt_tickets(incremental) }}

),

lifecycle as (

    select * from {{ ref('int_ticket_lifecycle_staged') }} {{ rebuilt_only }}

),

sla_clock as (

    select * from {{ ref('int_ticket_sla_clock') }} {{ rebuilt_only }}

),

surveys as (

    select * from {{ ref('stg_survey_drop__surveys') }} {{ rebuilt_only }}

),

events as (

    select * from {{ ref('int_ticket_events_unioned') }} {{ rebuilt_only }}

),

sla_policies as (

    select * from {{ ref('sla_policies') }}

),

delay_causes as (

    select * from {{ ref('delay_causes') }}

),

ranked_surveys as (

    select
        ticket_id,
        csat,
        nps,
        row_number() over (
            partition by ticket_id
            order by submitted_at desc, survey_id desc
        ) as recency_rank
    from surveys

),

latest_surveys as (

    select
        ticket_id,
        csat,
        nps
    from ranked_surveys
    where recency_rank = 1

),

survey_totals as (

    select
        ticket_id,
        count(*) as survey_count,
        bool_or(complaint) as complaint,
        min({{ reporting_date('submitted_at') }}) as first_survey_date,
        max({{ reporting_date('submitted_at') }}) as last_survey_date,
        md5(string_agg(
            cast(row(survey_id, submitted_at, csat, nps, complaint) as text), ',' order by survey_id
        )) as survey_digest,
        max(loaded_at) as loaded_at
    from surveys
    group by ticket_id

),

event_loads as (

    select
        ticket_id,
        max(loaded_at) as loaded_at
    from events
    group by ticket_id

),

-- The customer's tickets just before and just after this one (by created_at, then
-- ticket_id), for the returning-customer rate and the churn proxy: a window over every
-- ticket on a full build, index lookups on (customer_id, created_at, ticket_id) for the
-- rebuilt tickets otherwise.
customer_history as (

    {% if incremental -%}
        select
            tickets.ticket_id,
            previous_ticket.created_at as previous_ticket_at,
            next_ticket.created_at as next_ticket_at
        from tickets
        left join lateral (
            {{ customer_sequence_neighbour(
                ref('int_tickets_unioned'), 'tickets.customer_id', 'tickets.created_at', 'tickets.ticket_id', '<',
                'created_at'
            ) }}
        ) as previous_ticket on true
        left join lateral (
            {{ customer_sequence_neighbour(
                ref('int_tickets_unioned'), 'tickets.customer_id', 'tickets.created_at', 'tickets.ticket_id', '>',
                'created_at'
            ) }}
        ) as next_ticket on true
    {%- else -%}
        select
            ticket_id,
            lag(created_at) over (
                partition by customer_id
                order by created_at asc, ticket_id asc
            ) as previous_ticket_at,
            lead(created_at) over (
                partition by customer_id
                order by created_at asc, ticket_id asc
            ) as next_ticket_at
        from {{ ref('int_tickets_unioned') }}
    {%- endif %}

),

-- SLA clocks per policy (int_ticket_sla_clock): business hours, paused while the ticket
-- waits on the customer. A breach is known once the step happened (after its deadline or
-- not), or once its deadline has passed without it; a cancelled ticket never breaches
-- what it never needed.
judged as (

    select
        tickets.*,
        sla_policies.first_response_target_hours,
        sla_policies.resolution_target_hours,
        sla_clock.first_response_due_at,
        sla_clock.resolution_due_at,
        sla_clock.first_response_clock_hours,
        sla_clock.resolution_clock_hours,
        case
            when tickets.first_response_at is not null
                then coalesce(tickets.first_response_at > sla_clock.first_response_due_at, false)
            when tickets.status = 'cancelled' then null
            when sla_clock.first_response_due_at <= {{ as_of_timestamp() }} then true
        end as first_response_breached,
        case
            when tickets.resolved_at is not null
                then coalesce(tickets.resolved_at > sla_clock.resolution_due_at, false)
            when tickets.status = 'cancelled' then null
            when sla_clock.resolution_due_at <= {{ as_of_timestamp() }} then true
        end as resolution_breached
    from tickets
    left join sla_policies
        on tickets.priority = sla_policies.priority
    left join sla_clock
        on tickets.ticket_id = sla_clock.ticket_id

),

enriched as (

    select
        judged.*,
        lifecycle.handoff_count,
        lifecycle.ping_pong,
        lifecycle.intake_hours,
        lifecycle.assignment_hours,
        lifecycle.execution_hours,
        lifecycle.active_work_hours,
        lifecycle.waiting_customer_hours,
        lifecycle.waiting_third_party_hours,
        lifecycle.evaluation_hours,
        lifecycle.cycle_hours,
        delay_causes.cause_group as delay_cause_group,
        latest_surveys.csat,
        latest_surveys.nps,
        survey_totals.first_survey_date,
        survey_totals.last_survey_date,
        survey_totals.survey_digest,
        customer_history.previous_ticket_at,
        customer_history.next_ticket_at,
        coalesce(survey_totals.survey_count, 0) as survey_count,
        coalesce(survey_totals.complaint, false) as complaint,
        greatest(judged.loaded_at, event_loads.loaded_at, survey_totals.loaded_at) as source_loaded_at
    from judged
    left join lifecycle
        on judged.ticket_id = lifecycle.ticket_id
    left join delay_causes
        on judged.delay_cause = delay_causes.delay_cause
    left join latest_surveys
        on judged.ticket_id = latest_surveys.ticket_id
    left join survey_totals
        on judged.ticket_id = survey_totals.ticket_id
    left join event_loads
        on judged.ticket_id = event_loads.ticket_id
    left join customer_history
        on judged.ticket_id = customer_history.ticket_id

),

-- The days each ticket counts on in the KPI marts: from its creation to the last of its
-- resolution (or, while open, the day the data is known through), first response, close
-- and surveys.
spans as (

    select
        enriched.*,
        {{ reporting_date('created_at') }} as kpi_days_from,
        greatest(
            coalesce({{ reporting_date('resolved_at') }}, {{ reporting_date(as_of_timestamp()) }}),
            {{ reporting_date('first_response_at') }},
            {{ reporting_date('closed_at') }},
            enriched.last_survey_date
        ) as kpi_days_to
    from enriched

),

ticket_rows as (

    select
        ticket_id,
        source_system,
        customer_id,
        customer_segment,
        team_id,
        agent_id,
        channel,
        priority,
        category,
        subcategory,
        status,
        created_at,
        {{ reporting_date('created_at') }} as created_date,
        first_response_at,
        {{ reporting_date('first_response_at') }} as first_response_date,
        resolved_at,
        {{ reporting_date('resolved_at') }} as resolved_date,
        closed_at,
        {{ reporting_date('closed_at') }} as closed_date,
        {{ hours_between('created_at', 'first_response_at') }} as first_response_hours,
        {{ hours_between('created_at', 'resolved_at') }} as resolution_hours,
        first_response_target_hours,
        resolution_target_hours,
        first_response_clock_hours,
        resolution_clock_hours,
        first_response_due_at,
        resolution_due_at,
        first_response_breached,
        resolution_breached,
        reopen_count,
        reopen_count > 0 as reopened,
        reassignment_count,
        handoff_count,
        ping_pong,
        escalated,
        case
            when resolved_at is not null
                then
                    reopen_count = 0
                    and coalesce(reassignment_count, 0) = 0
                    and coalesce(handoff_count, 0) = 0
        end as first_contact_resolution,
        case
            when resolved_at is not null
                then reopen_count > 0 or coalesce(ping_pong, false)
        end as rework,
        coalesce(previous_ticket_at >= created_at - interval '90 days', false) as returning_customer,
        case
            when not complaint then false
            when next_ticket_at <= created_at + interval '90 days' then false
            when created_at + interval '90 days' <= {{ as_of_timestamp() }} then true
        end as churn_proxy,
        resolution_code,
        delay_cause,
        delay_cause_group,
        csat,
        nps,
        survey_count,
        complaint,
        first_survey_date,
        last_survey_date,
        survey_digest,
        intake_hours,
        assignment_hours,
        execution_hours,
        active_work_hours,
        waiting_customer_hours,
        waiting_third_party_hours,
        evaluation_hours,
        cycle_hours,
        kpi_days_from,
        kpi_days_to
    from spans

),

hashed as (

    select
        ticket_rows.*,
        spans.source_loaded_at,
        md5(cast(ticket_rows as text)) as row_hash
    from ticket_rows
    inner join spans
        on ticket_rows.ticket_id = spans.ticket_id

),

-- The rows being replaced (none on a full build).
previous as (

    {% if incremental -%}
        select * from {{ this }} {{ rebuilt_only }}
    {%- else -%}
        select
            hashed.*,
            cast(null as timestamptz) as content_changed_through,
            cast(null as text) as kpi_days_touched
        from hashed
        where false
    {%- endif %}

),

-- Versioning for the KPI marts: content_changed_through is the ingest batch the row's
-- content last changed with (a rebuilt row identical to the one it replaces keeps the old
-- value), and kpi_days_touched the days whose KPIs the change moved (macros/kpi_days.sql),
-- with those of the version it replaces while a KPI mart has not been built since that one.
final as (

    select
        hashed.*,
        case
            when previous.row_hash = hashed.row_hash then previous.content_changed_through
            else {{ ingest_loaded_through() }}
        end as content_changed_through,
        case
            when previous.row_hash = hashed.row_hash then previous.kpi_days_touched
            else {{ kpi_days_touched(
                'previous', 'hashed',
                retain_previous=(
                    'coalesce(previous.content_changed_through > ' ~ kpi_marts_built_through() ~ ', true)'
                ) if incremental else none,
            ) }}
        end as kpi_days_touched
    from hashed
    left join previous
        on hashed.ticket_id = previous.ticket_id

)

select * from final
