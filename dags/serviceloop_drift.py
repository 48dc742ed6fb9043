"""
### serviceloop_drift

Watches the service's quality metrics for drift once the KPI models are rebuilt.

1. `detect_drift`: for every team and every day not yet evaluated, Evidently compares the
   latest 7 days with the 28 days before them (whole weeks, so weekdays align) on
   resolution time, SLA breach and CSAT. A finding needs a statistically real shift, a
   practically large effect, the worse direction and enough tickets on both sides.
   Results go to `monitoring.drift_runs` / `monitoring.drift_findings`, HTML reports to
   the state folder's `reports/`.
2. `open_reviews`: a finding opens an improvement review for its team and metric, owned by
   the team's manager; a repeated finding adds evidence to the open review.
3. `send_alerts`: one alert per review opened, by the owner's route (an `.eml` in the
   outbox by default). Retries never send an alert twice.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

from serviceloop.assets import KPI_DAILY


@dag(
    schedule=[KPI_DAILY],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["serviceloop", "drift", "reviews"],
    default_args={"owner": "serviceloop", "retries": 2, "retry_delay": dt.timedelta(minutes=1)},
    doc_md=__doc__,
)
def serviceloop_drift():
    @task
    def detect_drift() -> dict:
        from serviceloop.tasks import detect_drift

        return detect_drift()

    @task
    def open_reviews(drift_result: dict) -> dict:
        from serviceloop.tasks import open_reviews

        return open_reviews(drift_result)

    @task
    def send_alerts(review_result: dict) -> dict:
        from serviceloop.tasks import send_alerts

        return send_alerts(review_result)

    send_alerts(open_reviews(detect_drift()))


serviceloop_drift()
