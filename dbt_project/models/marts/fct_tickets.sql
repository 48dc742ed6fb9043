with

tickets as (

    select * from {{ ref('stg_helpdesk__tickets') }}

),

lifecycle as (

    select * from {{ ref('int_ticket_lifecycle_staged') }}

),

surveys as (

    select * from {{ ref('stg_survey_drop__surveys') }}

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
        bool_or(complaint) as complaint
    from surveys
    group by ticket_id

),

-- SLA v1 counts calendar hours from creation; business hours come later.
timed as (

    select
        tickets.*,
        sla_policies.first_response_target_hours,
        sla_policies.resolution_target_hours,
        {{ hours_between('tickets.created_at', 'tickets.first_response_at') }} as first_response_hours,
        {{ hours_between('tickets.created_at', 'tickets.resolved_at') }} as resolution_hours,
        tickets.created_at
        + sla_policies.first_response_target_hours * interval '1 hour' as first_response_due_at,
        tickets.created_at
        + sla_policies.resolution_target_hours * interval '1 hour' as resolution_due_at
    from tickets
    left join sla_policies
        on tickets.priority = sla_policies.priority

),

-- A breach is known once the step happened (late or not), or once its deadline has
-- passed without it; a cancelled ticket never breaches what it never needed.
judged as (

    select
        *,
        case
            when first_response_at is not null
                then first_response_at > first_response_due_at
            when status = 'cancelled' then null
            when first_response_due_at < {{ as_of_timestamp() }} then true
        end as first_response_breached,
        case
            when resolved_at is not null
                then resolved_at > resolution_due_at
            when status = 'cancelled' then null
            when resolution_due_at < {{ as_of_timestamp() }} then true
        end as resolution_breached
    from timed

),

final as (

    select
        judged.ticket_id,
        judged.source_system,
        judged.customer_id,
        judged.customer_segment,
        judged.team_id,
        judged.agent_id,
        judged.channel,
        judged.priority,
        judged.category,
        judged.subcategory,
        judged.status,
        judged.created_at,
        {{ reporting_date('judged.created_at') }} as created_date,
        judged.first_response_at,
        {{ reporting_date('judged.first_response_at') }} as first_response_date,
        judged.resolved_at,
        {{ reporting_date('judged.resolved_at') }} as resolved_date,
        judged.closed_at,
        judged.first_response_hours,
        judged.resolution_hours,
        judged.first_response_target_hours,
        judged.resolution_target_hours,
        judged.first_response_due_at,
        judged.resolution_due_at,
        judged.first_response_breached,
        judged.resolution_breached,
        judged.reopen_count,
        judged.reopen_count > 0 as reopened,
        judged.reassignment_count,
        lifecycle.handoff_count,
        lifecycle.ping_pong,
        judged.escalated,
        judged.resolution_code,
        judged.delay_cause,
        delay_causes.cause_group as delay_cause_group,
        latest_surveys.csat,
        latest_surveys.nps,
        coalesce(survey_totals.survey_count, 0) as survey_count,
        coalesce(survey_totals.complaint, false) as complaint,
        lifecycle.intake_hours,
        lifecycle.assignment_hours,
        lifecycle.execution_hours,
        lifecycle.active_work_hours,
        lifecycle.waiting_customer_hours,
        lifecycle.waiting_third_party_hours,
        lifecycle.evaluation_hours,
        lifecycle.cycle_hours
    from judged
    left join lifecycle
        on judged.ticket_id = lifecycle.ticket_id
    left join delay_causes
        on judged.delay_cause = delay_causes.delay_cause
    left join latest_surveys
        on judged.ticket_id = latest_surveys.ticket_id
    left join survey_totals
        on judged.ticket_id = survey_totals.ticket_id

)

select * from final
