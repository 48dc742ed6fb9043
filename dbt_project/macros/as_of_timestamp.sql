{#-
    "Now" for open tickets (is an SLA deadline already past?).

    The var as_of when it is set (to rebuild the marts as of a past moment); otherwise the
    moment the data is known through: the end of the last extraction window of any
    source's tickets (ops.batches, written by the ingest; an import's is its export's last
    update). Using the data's own clock, not
    the database's, makes the marts a function of what was loaded, so rebuilding an
    interval gives the same result whenever it runs.
-#}
{% macro as_of_timestamp() -%}
    {%- if var("as_of", none) -%}
        cast('{{ var("as_of") }}' as timestamptz)
    {%- else -%}
        (
            select coalesce(max(window_end), current_timestamp)
            from {{ source('ops', 'batches') }}
            where entity = 'tickets'
        )
    {%- endif -%}
{%- endmacro %}
