{#-
    Fails on every combination of the given columns that occurs on more than one row:
    the model's grain is that combination.
-#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

    with

    duplicated as (

        select
            {{ combination_of_columns | join(",\n            ") }},
            count(*) as row_count
        from {{ model }}
        group by {{ combination_of_columns | join(", ") }}
        having count(*) > 1

    )

    select * from duplicated

{% endtest %}
