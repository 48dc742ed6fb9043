"""DAG failures alert the data engineers: the task, the error and the link to its log.

``DataEngineersNotifier`` is an Airflow 3 notifier (``airflow.sdk.BaseNotifier``) for a
task's ``on_failure_callback``: Airflow calls it once, when the task has failed its last
try (earlier tries call ``on_retry_callback``). It goes by the data engineers' route, the
Airflow connection ``serviceloop_data_engineers`` (an SMTP, Slack or HTTP connection), or
the outbox when that is not defined, as ``failure.<dag>.<task>.<run>.<try>.eml``. It does
not depend on the warehouse, which may be the very thing that failed. A notifier that cannot
deliver logs the reason and never masks the task's own error.
"""

from __future__ import annotations

import html
import logging

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


def failure_message(dag_id: str, task_id: str, run_id: str, try_number: int, error: str, log_url: str, recipient: str):
    from serviceloop import glossary, notifiers

    safe_run = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)
    key = f"failure.{dag_id}.{task_id}.{safe_run}.{try_number}"
    rows = [
        (glossary.phrase("failure.task", "en"), f"{dag_id}.{task_id} (try {try_number})"),
        (glossary.phrase("failure.run", "en"), run_id),
        (glossary.phrase("failure.error", "en"), error),
        (glossary.phrase("failure.log", "en"), log_url),
    ]
    text = "\n".join(f"{label + ':':<8}{value}" for label, value in rows) + "\n\n-- ServiceLoop\n"
    table = "".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td>"
        + (
            f"<a href='{html.escape(value)}'>{html.escape(value)}</a>"
            if value.startswith("http")
            else html.escape(value)
        )
        + "</td></tr>"
        for label, value in rows
    )
    return notifiers.Message(
        key=key,
        subject=glossary.phrase("subject.failure", "en", dag_id=dag_id, task_id=task_id),
        text=text,
        html=f"<html><body><table>{table}</table><p>-- ServiceLoop</p></body></html>",
        recipient=recipient,
        message_id=f"<{key}@serviceloop.localhost>",
        fields={
            "kind": "task_failed",
            "dag_id": dag_id,
            "task_id": task_id,
            "run_id": run_id,
            "try_number": try_number,
            "error": error,
            "log_url": log_url,
        },
    )


def notify_failure(context, *, connections=None, outbox=None) -> str | None:
    """Send the failure alert for ``context``; returns where it went, None if it could not."""
    from serviceloop import notifiers
    from serviceloop.settings import paths

    ti = context["ti"]
    error = context.get("exception")
    error_text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error or "unknown")
    route = notifiers.data_engineers_route(connections)
    message = failure_message(
        ti.dag_id, ti.task_id, ti.run_id, int(ti.try_number or 1), error_text, ti.log_url, route.recipient
    )
    try:
        return notifiers.send(route, message, outbox=outbox or paths().outbox)
    except notifiers.DeliveryError as exc:
        log.error("could not alert the data engineers of %s: %s", message.key, exc)
        return None


class DataEngineersNotifier(BaseNotifier):
    """``on_failure_callback=DataEngineersNotifier()``: task, error and log link to the data engineers."""

    def notify(self, context) -> None:
        from serviceloop.tasks import connection_fields

        notify_failure(context, connections=connection_fields)
