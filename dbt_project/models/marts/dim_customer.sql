with

tickets as (

    select * from {{ ref('int_tickets_unioned') }}

),

ranked as (

    select
        customer_id,
        customer_segment,
        created_at,
        row_number() over (
            partition by customer_id
            order by created_at desc, ticket_id desc
        ) as recency_rank
    from tickets

),

totals as (

    select
        customer_id,
        count(*) as ticket_count,
        min(created_at) as first_ticket_at,
        max(created_at) as last_ticket_at
    from tickets
    group by customer_id

),

final as (

    select
        totals.customer_id,
        ranked.customer_segment,
        totals.ticket_count,
        totals.first_ticket_at,
        totals.last_ticket_at
    from totals
    inner join ranked
        on
            totals.customer_id = ranked.customer_id
            and ranked.recency_rank = 1

)

select * from final
