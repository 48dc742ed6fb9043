with

tickets as (

    select * from {{ ref('fct_tickets') }}

),

teams as (

    select * from {{ ref('dim_team') }}

),

surveys as (

    select * from {{ ref('stg_survey_drop__surveys') }}

),

-- A survey counts for the team that holds its ticket (surveys on unknown tickets drop out).
team_surveys as (

    select
        tickets.team_id,
        surveys.csat,
        {{ reporting_date('surveys.submitted_at') }} as submitted_date
    from surveys
    inner join tickets
        on surveys.ticket_id = tickets.ticket_id

),

activity_dates as (

    select created_date as activity_date from tickets
    union all
    select first_response_date as activity_date from tickets
    union all
    select resolved_date as activity_date from tickets
    union all
    select submitted_date as activity_date from team_surveys

),

date_bounds as (

    select
        min(activity_date) as first_date,
        max(activity_date) as last_date
    from activity_dates

),

-- Every day from the first to the last day with any activity, for every team, so that
-- a quiet day is a row with zero volumes rather than a missing row.
days as (

    {{ date_spine('date_bounds.first_date', 'date_bounds.last_date', from_relation='date_bounds') }}

),

grid as (

    select
        days.date_day as kpi_date,
        teams.team_id
    from days
    cross join teams

),

created as (

    select
        created_date as kpi_date,
        team_id,
        count(*) as tickets_created
    from tickets
    group by created_date, team_id

),

first_responses as (

    select
        first_response_date as kpi_date,
        team_id,
        count(*) as tickets_first_responded,
        {{ percentile('first_response_hours', 0.9) }} as first_response_p90_hours,
        avg(
            case first_response_breached when false then 1.0 when true then 0.0 end
        ) as sla_first_response_compliance
    from tickets
    where first_response_date is not null
    group by first_response_date, team_id

),

resolutions as (

    select
        resolved_date as kpi_date,
        team_id,
        count(*) as tickets_resolved,
        {{ percentile('resolution_hours', 0.5) }} as resolution_p50_hours,
        {{ percentile('resolution_hours', 0.9) }} as resolution_p90_hours,
        avg(
            case resolution_breached when false then 1.0 when true then 0.0 end
        ) as sla_resolution_compliance,
        avg(case when reopened then 1.0 else 0.0 end) as reopen_rate
    from tickets
    where resolved_date is not null
    group by resolved_date, team_id

),

survey_days as (

    select
        submitted_date as kpi_date,
        team_id,
        count(*) as surveys,
        avg(csat) as csat_mean
    from team_surveys
    group by submitted_date, team_id

),

final as (

    select
        grid.kpi_date,
        grid.team_id,
        coalesce(created.tickets_created, 0) as tickets_created,
        coalesce(first_responses.tickets_first_responded, 0) as tickets_first_responded,
        coalesce(resolutions.tickets_resolved, 0) as tickets_resolved,
        {{ rounded('first_responses.first_response_p90_hours', 2) }} as first_response_p90_hours,
        {{ rounded('first_responses.sla_first_response_compliance', 4) }} as sla_first_response_compliance,
        {{ rounded('resolutions.resolution_p50_hours', 2) }} as resolution_p50_hours,
        {{ rounded('resolutions.resolution_p90_hours', 2) }} as resolution_p90_hours,
        {{ rounded('resolutions.sla_resolution_compliance', 4) }} as sla_resolution_compliance,
        {{ rounded('resolutions.reopen_rate', 4) }} as reopen_rate,
        coalesce(survey_days.surveys, 0) as surveys,
        {{ rounded('survey_days.csat_mean', 2) }} as csat_mean
    from grid
    left join created
        on
            grid.kpi_date = created.kpi_date
            and grid.team_id = created.team_id
    left join first_responses
        on
            grid.kpi_date = first_responses.kpi_date
            and grid.team_id = first_responses.team_id
    left join resolutions
        on
            grid.kpi_date = resolutions.kpi_date
            and grid.team_id = resolutions.team_id
    left join survey_days
        on
            grid.kpi_date = survey_days.kpi_date
            and grid.team_id = survey_days.team_id

)

select * from final
