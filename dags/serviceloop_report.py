"""
### serviceloop_report

Every week (by default Monday 06:00 UTC; set `SERVICELOOP_REPORT_SCHEDULE` to another cron
expression), renders the service quality report of the week before for each owner: every
team's manager and the organisation. Scorecard against the targets, the headline KPIs over
13 weeks, the bottleneck stage, the top delay causes, the week's drift findings and the open
improvement reviews, from the KPI marts.

`send_weekly_reports` writes each report as a standalone HTML file to the state folder's
`reports/quality/<week>/` and sends it by the owner's alert route in the owner's language
(HTML email with a plain-text part and the file attached), exactly once per owner and week:
a retry or a rerun sends nothing twice. A backfill renders past weeks without sending them,
unless it is triggered with the param `send_backfill` set to true.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Param, dag, get_current_context, task

from serviceloop.failure_alerts import DataEngineersNotifier

SCHEDULE = os.environ.get("SERVICELOOP_REPORT_SCHEDULE", "0 6 * * 1")


@dag(
    schedule=SCHEDULE,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["serviceloop", "report"],
    params={"send_backfill": Param(False, type="boolean", description="a backfill sends the reports too")},
    default_args={
        "owner": "serviceloop",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        "on_failure_callback": DataEngineersNotifier(),
    },
    doc_md=__doc__,
)
def serviceloop_report():
    @task
    def send_weekly_reports() -> dict:
        from serviceloop.tasks import send_weekly_reports

        context = get_current_context()
        backfill = str(context["dag_run"].run_type) == "backfill"
        return send_weekly_reports(context["logical_date"], send=not backfill or context["params"]["send_backfill"])

    send_weekly_reports()


serviceloop_report()
