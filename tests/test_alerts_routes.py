"""Alerts travel by the owner's route, in the route's language, once: real SMTP and HTTP servers on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import email
import json
import socket
import threading
import types
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from test_reviews_alerts import conn, finding, make_tickets  # noqa: F401 - conn is a fixture

from serviceloop import alerts, reviews
from serviceloop.failure_alerts import notify_failure

DETECTED = dt.date(2026, 8, 7)
DAY0 = DETECTED - dt.timedelta(days=37)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    inbox.connection = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": controller.port,
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "ServiceLoop <alerts@example.org>"},
    }
    yield inbox
    controller.stop()


@pytest.fixture
def http():
    """A JSON endpoint that records every POST and can be told to fail the next N requests."""
    state = types.SimpleNamespace(requests=[], fail_next=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's hook name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.fail_next:
                state.fail_next -= 1
                self.send_response(500)
                self.end_headers()
                return
            state.requests.append((self.path, dict(self.headers), json.loads(body)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.port = server.server_address[1]
    yield state
    server.shutdown()
    server.server_close()


def _reviews(conn):  # noqa: F811
    """A resolution-time review in Technical Support (English) and an SLA one in Billing (Chinese)."""
    make_tickets(conn, "tech_support", DAY0, [(35, 10.0), (5, 35.0)], seed=2)
    make_tickets(conn, "billing", DAY0, [(35, 10.0), (5, 30.0)], seed=3)
    tech = reviews.open_from_findings(conn, [finding(conn, "tech_support", "resolution_time", DETECTED, 2.5)])
    bill = reviews.open_from_findings(conn, [finding(conn, "billing", "sla_breach", DETECTED, 0.2)])
    conn.commit()
    return tech.opened[0], bill.opened[0]


def _route(conn, team, route, conn_id=None):  # noqa: F811
    with conn.cursor() as cur:
        cur.execute(
            "update reference.teams set alert_route = %s, alert_conn_id = %s where team_id = %s", (route, conn_id, team)
        )
    conn.commit()


def test_email_goes_over_smtp_to_the_owner_once_in_the_routes_language(conn, smtp, tmp_path):  # noqa: F811
    tech, bill = _reviews(conn)
    connections = {"serviceloop_smtp": smtp.connection}.get

    first = alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections)
    assert first.sent == [f"smtp://127.0.0.1:{smtp.connection['port']}"] * 2 and first.failed == []
    # The task retried (or the DAG rerun): nothing is sent again.
    assert alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections).sent == []
    assert list(tmp_path.iterdir()) == [], "a defined SMTP connection replaces the outbox"
    assert len(smtp.messages) == 2
    by_rcpt = {tuple(rcpt): email.message_from_bytes(raw, policy=policy.default) for _f, rcpt, raw in smtp.messages}
    assert set(by_rcpt) == {("jonas.berg@serviceloop.example",), ("mei.chen@serviceloop.example",)}
    assert {f for f, _r, _c in smtp.messages} == {"alerts@example.org"}

    msg = by_rcpt[("jonas.berg@serviceloop.example",)]
    assert msg["Subject"] == "[ServiceLoop] Resolution time worse for Technical Support since 2026-08-05"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for part in (text, html):
        assert tech in part and "3. collaborative execution" in part
        assert "staffing shortage" in part, "the top delay cause of the current window"
        assert f"serviceloop reviews ack {tech}" in part
        assert "file:///reports/drift/tech_support/2026-08-07.html" in part
    (chart,) = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert chart.get_content().startswith(b"\x89PNG") and "cid:chart@serviceloop" in html

    zh = by_rcpt[("mei.chen@serviceloop.example",)]
    assert zh["Subject"] == "[ServiceLoop] Billing 的SLA 解决超时率自 2026-08-05 起变差"
    for part in (zh.get_body(("plain",)).get_content(), zh.get_body(("html",)).get_content()):
        assert "主要延误原因" in part and "4. 结果评估" in part and "个百分点" in part and "人手不足" in part

    with conn.cursor() as cur:
        cur.execute("select alert_key, route, recipient, status, attempts from monitoring.alerts order by 1")
        assert cur.fetchall() == [
            (f"{bill}.opened", "email", "mei.chen@serviceloop.example", "sent", 1),
            (f"{tech}.opened", "email", "jonas.berg@serviceloop.example", "sent", 1),
        ]


def test_slack_and_a_json_webhook_get_one_post_each_with_an_idempotency_key(conn, http, tmp_path):  # noqa: F811
    tech, bill = _reviews(conn)
    _route(conn, "tech_support", "slack")
    _route(conn, "billing", "webhook", "billing_hook")
    connections = {
        "serviceloop_slack": {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{http.port}/services/T0/B0/x"},
        "billing_hook": {"conn_type": "http", "host": "127.0.0.1", "port": http.port, "schema": "http",
                         "extra": {"endpoint": "/hooks/serviceloop"}},
    }.get  # fmt: skip
    alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections)
    alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections)
    assert sorted(path for path, _h, _b in http.requests) == ["/hooks/serviceloop", "/services/T0/B0/x"]
    posts = {path: (headers, body) for path, headers, body in http.requests}

    headers, slack = posts["/services/T0/B0/x"]
    assert headers["Idempotency-Key"] == f"{tech}.opened"
    assert tech in slack["text"] and "Resolution time" in slack["text"]

    headers, hook = posts["/hooks/serviceloop"]
    assert headers["Idempotency-Key"] == f"{bill}.opened"
    assert hook["review_id"] == bill and hook["metric"] == "sla_breach" and hook["language"] == "zh"
    assert hook["metric_label"] == "SLA 解决超时率" and hook["recipient"] == "mei.chen@serviceloop.example"
    assert hook["top_delay_causes"][0]["cause"] == "staffing_shortage"
    assert base64.b64decode(hook["chart_png_base64"]).startswith(b"\x89PNG")
    with conn.cursor() as cur:
        cur.execute("select location from monitoring.alerts where alert_key = %s", (f"{bill}.opened",))
        # The record (shown on the Reviews page, returned by the task) names the host, not the path.
        assert cur.fetchone() == (f"http://127.0.0.1:{http.port}",)


def test_a_failing_route_is_retried_reported_to_data_engineers_and_recorded(conn, http, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(alerts, "BACKOFF_S", 0.01)
    tech, _bill = _reviews(conn)
    _route(conn, "tech_support", "webhook")
    _route(conn, "billing", "webhook")
    connections = {"serviceloop_webhook": {"conn_type": "http", "host": f"http://127.0.0.1:{http.port}"}}.get
    http.fail_next = alerts.ATTEMPTS  # the first alert's every attempt fails; the second goes through
    result = alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections)
    assert len(result.failed) == 1 and len(result.sent) == 1
    failed_key = result.failed[0]

    attempts = reviews.get(conn, failed_key.removesuffix(".opened"))["alerts"]
    assert [(a["status"], a["attempts"], a["last_error"]) for a in attempts] == [
        ("failed", 3, "HTTP 500 from the webhook")
    ]
    report = email.message_from_bytes(
        (tmp_path / f"{failed_key}.delivery_failed.eml").read_bytes(), policy=policy.default
    )
    assert report["To"] == "data-engineers@localhost"
    assert "HTTP 500" in report.get_body(("plain",)).get_content()

    # The route recovers: the next run delivers the failed alert, once; the engineers are not told again.
    again = alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections)
    assert again.failed == [] and len(again.sent) == 1
    assert alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections).sent == []
    keys = [h["Idempotency-Key"] for _p, h, _b in http.requests]
    assert sorted(keys) == sorted({f"{tech}.opened", f"{_bill}.opened"}) and len(keys) == 2
    assert len(list(tmp_path.glob("*.delivery_failed.eml"))) == 1


def test_an_alert_claimed_by_a_crashed_send_is_not_sent_twice(conn, smtp, tmp_path):  # noqa: F811
    tech, _bill = _reviews(conn)
    connections = {"serviceloop_smtp": smtp.connection}.get
    # A previous try recorded the key, then died before it could mark the alert sent.
    with conn.cursor() as cur:
        cur.execute(
            """insert into monitoring.alerts (alert_key, review_id, kind, route, recipient, subject, location, status)
               values (%s, %s, 'opened', 'email', 'jonas.berg@serviceloop.example', 's', '', 'sending')""",
            (f"{tech}.opened", tech),
        )
    conn.commit()
    alerts.send_review_alerts(conn, outbox=tmp_path, connections=connections)
    assert [rcpt for _f, rcpt, _c in smtp.messages] == [["mei.chen@serviceloop.example"]]


def test_a_failed_task_alerts_the_data_engineers_with_the_error_and_log_link(smtp, tmp_path):
    de = {**smtp.connection, "extra": {**smtp.connection["extra"], "to": "data-eng@example.org"}}
    ti = types.SimpleNamespace(
        dag_id="serviceloop_drift", task_id="detect_drift", run_id="manual__2026-08-10T00:00:00+00:00",
        try_number=3, log_url="http://127.0.0.1:8080/dags/serviceloop_drift/runs/manual__2026-08-10/tasks/detect_drift",
    )  # fmt: skip
    where = notify_failure(
        {"ti": ti, "exception": RuntimeError("warehouse unreachable")},
        connections={"serviceloop_data_engineers": de}.get,
        outbox=tmp_path,
    )
    assert where == f"smtp://127.0.0.1:{smtp.connection['port']}"
    ((_sender, rcpt, raw),) = smtp.messages
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert rcpt == ["data-eng@example.org"]
    assert msg["Subject"] == "[ServiceLoop] Task failed: serviceloop_drift.detect_drift"
    text = msg.get_body(("plain",)).get_content()
    assert "RuntimeError: warehouse unreachable" in text and ti.log_url in text and "try 3" in text

    # Without a data engineers' connection the alert lands in the outbox.
    assert notify_failure({"ti": ti, "exception": ValueError("bad")}, connections={}.get, outbox=tmp_path)
    (eml,) = tmp_path.glob("failure.serviceloop_drift.detect_drift.*.3.eml")
    assert "ValueError: bad" in eml.read_text()
