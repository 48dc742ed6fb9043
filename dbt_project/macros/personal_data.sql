{#-
    Personal data, handled in staging so that nothing downstream sees it in clear
    (serviceloop.privacy explains the key).

    pseudonymise(column): HMAC-SHA256 of the value under the warehouse's pseudonymisation
    key (ops.pseudonym_key holds HMAC's padded keys), hex, first 32 characters. The same
    value always gives the same pseudonym, so joins and "returning customer" still work;
    without the key it cannot be reversed or recomputed. The key is read by scalar
    subqueries, evaluated once per query.

    mask_contact_details(column): free text with e-mail addresses replaced by [email] and
    phone numbers by [phone]: an international number (+ and at least 8 digits with spaces,
    dots, dashes or brackets), a national one in two or three groups (555 123 4567,
    (555) 123-4567, 138 1234 5678) or 7 digits and more in a row. Dates (2026-06-01) and
    times stay as they are.

    Every staging model that carries a customer id or a free-text field applies them.
-#}

{% macro pseudonymise(column) -%}
    case
        when {{ column }} is not null
            then left(encode(sha256(
                (select pk.outer_pad from {{ source('ops', 'pseudonym_key') }} as pk)
                || sha256(
                    (select pk.inner_pad from {{ source('ops', 'pseudonym_key') }} as pk)
                    || convert_to({{ column }}, 'UTF8')
                )
            ), 'hex'), 32)
    end
{%- endmacro %}

{% macro mask_contact_details(column) -%}
    regexp_replace(
        regexp_replace(
            {{ column }},
            '[[:alnum:]._%+-]+@[[:alnum:]-]+(\.[[:alnum:]-]+)*\.[[:alpha:]]{2,}',
            '[email]',
            'g'
        ),
        '\+[0-9][0-9 ().-]{6,}[0-9]|\(?[0-9]{2,4}\)?[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,5}|[0-9]{7,}',
        '[phone]',
        'g'
    )
{%- endmacro %}

{#- Fails the run at its start when the pseudonymisation key is not installed (staging
    would otherwise pseudonymise every customer id to null). -#}
{% macro require_pseudonym_key() -%}
    {%- if execute -%}
        {%- set found = run_query("select count(*) from ops.pseudonym_key") -%}
        {%- if found.columns[0].values()[0] == 0 -%}
            {{ exceptions.raise_compiler_error(
                "the pseudonymisation key is not installed in ops.pseudonym_key: run `serviceloop prepare`"
                ~ " (or any ingest batch), which installs it from SERVICELOOP_PSEUDONYM_KEY or the state folder"
            ) }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
