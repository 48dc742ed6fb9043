"""
### serviceloop_drift

Watches the service's quality metrics for drift once the KPI models are rebuilt, and follows
each finding until the metric is shown to have recovered.

1. `detect_drift`: for every team and every day not yet evaluated, Evidently compares the
   latest 7 days with the 28 days before them (whole weeks, so weekdays align) on
   resolution time, SLA breach and CSAT: the tickets resolved in the window, and the
   cohorts of the last 2 and 7 days (created, due, surveyed) as known at the day's end.
   A finding needs a statistically real shift, a practically large effect, the worse
   direction and enough tickets on both sides. Results go to `monitoring.drift_runs` /
   `monitoring.drift_findings`, HTML reports to the state folder's `reports/`, snapshots
   per team and day to its Evidently workspace (`make evidently-ui`).
2. `open_reviews`: a finding opens an improvement review for its team and metric, owned by
   the team's manager; a repeated finding adds evidence to the open review.
3. `measure_effects`: for every review marked implemented, the post-change window against
   the drift window and the old baseline (effect size, bootstrap interval); back within
   tolerance for 3 days verifies it and pins its baseline for the drift monitor.
4. `send_alerts`: reviews opened, reminders and escalations of overdue reviews, reviews
   verified, each by the owner's route (email, Slack, webhook; the `.eml` outbox by
   default), exactly once: retries and reruns never send an alert twice.

A task that fails its last try alerts the data engineers (task, error, log link).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

from serviceloop.assets import KPI_DAILY
from serviceloop.failure_alerts import DataEngineersNotifier


@dag(
    schedule=[KPI_DAILY],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["serviceloop", "drift", "reviews"],
    default_args={
        "owner": "serviceloop",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        "on_failure_callback": DataEngineersNotifier(),
    },
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
    def measure_effects(review_result: dict) -> dict:
        from serviceloop.tasks import measure_effects

        return measure_effects(review_result)

    @task
    def send_alerts(review_result: dict) -> dict:
        from serviceloop.tasks import send_alerts

        return send_alerts(review_result)

    send_alerts(measure_effects(open_reviews(detect_drift())))


serviceloop_drift()
