"""Routes an alert travels by: the outbox folder, email over SMTP, Slack, a JSON webhook.

A route is resolved from reference data (the team's ``alert_route``, ``language`` and
``alert_conn_id``) and an Airflow connection holding the address and its secret; this
module only receives the connection's fields as a plain dict, so it knows nothing of
Airflow and is tested against real servers on loopback.

- ``email``: SMTP through a connection of type ``smtp`` (host, port, login, password; extra
  ``from_email``, ``disable_ssl``, ``disable_tls`` as Airflow's SMTP provider reads them);
- ``slack``: a Slack incoming webhook, its URL in the connection's password (it is the
  secret); Slack's incoming webhooks take no files, so the message links the report;
- ``webhook``: a JSON POST of the alert's fields (and the chart, base64) to the URL in the
  connection (``schema://host:port`` plus extra ``endpoint``, or the password if it is a
  whole URL), with an ``Idempotency-Key`` header;
- ``outbox`` (the local default, and what a route falls back to when its connection is not
  defined): a standard ``.eml`` file in the outbox folder, named by the alert's key.

A send that raises ``DeliveryError`` may be retried by the caller.
"""

from __future__ import annotations

import base64
import json
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

from serviceloop.files import write_atomically

ROUTE_KINDS = ("outbox", "email", "slack", "webhook")
DEFAULT_CONN_IDS = {"email": "serviceloop_smtp", "slack": "serviceloop_slack", "webhook": "serviceloop_webhook"}
# Data engineers (delivery and DAG failures): any route kind, chosen by the connection's type.
DATA_ENGINEERS_CONN_ID = "serviceloop_data_engineers"
DATA_ENGINEERS_ADDRESS = "data-engineers@localhost"
SENDER = "ServiceLoop <serviceloop@localhost>"
TIMEOUT_S = 10
# Headers are not folded at 78 columns: some readers keep the fold's space in the subject.
MESSAGE_POLICY = policy.default.clone(max_line_length=998)
SMTP_POLICY = MESSAGE_POLICY.clone(linesep="\r\n")


class DeliveryError(RuntimeError):
    """A route refused or failed to take a message."""


@dataclass(frozen=True)
class Route:
    kind: str
    recipient: str
    language: str = "en"
    connection: dict | None = None

    @property
    def label(self) -> str:
        return self.kind


@dataclass
class Message:
    key: str
    subject: str
    text: str
    html: str
    recipient: str
    message_id: str
    date: str | None = None
    chart_png: bytes | None = None
    fields: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    # Images the HTML shows inline by ``cid:<name>`` (PNG), and files attached whole:
    # (filename, MIME type, bytes).
    images: dict[str, bytes] = field(default_factory=dict)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)

    def email(self, sender: str = SENDER) -> EmailMessage:
        """A multipart message: plain text, and HTML with the chart (or images) inline; attachments."""
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = self.recipient
        msg["Subject"] = self.subject
        if self.date:
            msg["Date"] = self.date
        msg["Message-ID"] = self.message_id
        for name, value in self.headers.items():
            msg[name] = value
        msg.set_content(self.text)
        # Quoted-printable keeps every line under SMTP's 998-character limit, whatever the markup.
        msg.add_alternative(self.html, subtype="html", cte="quoted-printable")
        images = {"chart@serviceloop": self.chart_png} if self.chart_png else {}
        images.update(self.images)
        html_part = msg.get_payload()[1]
        for cid, png in images.items():
            html_part.add_related(
                png, "image", "png", cid=f"<{cid}>", filename=f"{cid.split('@')[0]}.png", disposition="inline"
            )
        for filename, mime_type, content in self.attachments:
            maintype, subtype = mime_type.split("/", 1)
            if maintype == "text":
                msg.add_attachment(content.decode("utf-8"), subtype=subtype, filename=filename, cte="base64")
            else:
                msg.add_attachment(content, maintype, subtype, filename=filename)
        return msg


def resolve(kind: str | None, recipient: str | None, language: str | None, conn_id: str | None, connections) -> Route:
    """The route for a reference-data row; the outbox when its connection is not defined."""
    kind = (kind or "outbox").strip().lower()
    if kind not in ROUTE_KINDS:
        raise ValueError(f"unknown alert route {kind!r}; routes: {', '.join(ROUTE_KINDS)}")
    recipient = recipient or "unrouted@localhost"
    if kind == "outbox" or connections is None:
        return Route("outbox", recipient, language or "en")
    conn = connections((conn_id or "").strip() or DEFAULT_CONN_IDS[kind])
    if conn is None:
        return Route("outbox", recipient, language or "en")
    return Route(kind, recipient, language or "en", conn)


def data_engineers_route(connections, language: str = "en") -> Route:
    conn = connections(DATA_ENGINEERS_CONN_ID) if connections else None
    if conn is None:
        return Route("outbox", DATA_ENGINEERS_ADDRESS, language)
    conn_type = (conn.get("conn_type") or "").lower()
    kind = "email" if conn_type in ("smtp", "email") else "slack" if "slack" in conn_type else "webhook"
    extra = _extra(conn)
    return Route(kind, extra.get("to") or conn.get("login") or DATA_ENGINEERS_ADDRESS, language, conn)


def _extra(conn: dict) -> dict:
    extra = conn.get("extra") or {}
    return json.loads(extra) if isinstance(extra, str) else extra


def _url(conn: dict) -> str:
    password = conn.get("password") or ""
    if password.startswith(("http://", "https://")):
        return password
    extra = _extra(conn)
    if extra.get("url"):
        return extra["url"]
    if not conn.get("host"):
        raise DeliveryError("the webhook connection has no host or URL")
    host = conn["host"]
    if host.startswith(("http://", "https://")):
        base = host
    else:
        port = f":{conn['port']}" if conn.get("port") else ""
        base = f"{conn.get('schema') or 'https'}://{host}{port}"
    return base.rstrip("/") + "/" + str(extra.get("endpoint", "")).lstrip("/")


def _post_json(url: str, payload: dict, headers: dict) -> None:
    data = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json; charset=utf-8", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - URL from a connection
            response.read()
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code} from the webhook") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(f"webhook unreachable: {getattr(exc, 'reason', exc)}") from None


def send(route: Route, message: Message, *, outbox: Path) -> str:
    """Deliver ``message`` by ``route``; returns where it went. Raises DeliveryError."""
    if route.kind == "outbox":
        path = outbox / f"{message.key}.eml"
        try:
            write_atomically(path, message.email().as_bytes(policy=MESSAGE_POLICY))
        except OSError as exc:
            raise DeliveryError(f"cannot write to the outbox: {exc}") from None
        return str(path)
    conn = route.connection or {}
    if route.kind == "email":
        return _send_smtp(conn, message)
    if route.kind == "slack":
        url = _url(conn)
        _post_json(url, {"text": f"*{message.subject}*\n{message.text}"}, {"Idempotency-Key": message.key})
        return "slack"
    url = _url(conn)
    payload = {"key": message.key, "subject": message.subject, "text": message.text, **message.fields}
    if message.chart_png:
        payload["chart_png_base64"] = base64.b64encode(message.chart_png).decode("ascii")
    _post_json(url, payload, {"Idempotency-Key": message.key})
    return _where(url)


def _where(url: str) -> str:
    """Where a webhook alert went, for the record: scheme, host and port. A webhook's path and
    query often carry its token (Slack's do), and the record is shown and logged."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _send_smtp(conn: dict, message: Message) -> str:
    extra = _extra(conn)
    host, port = conn.get("host") or "localhost", int(conn.get("port") or 25)
    use_ssl = not extra.get("disable_ssl", False)
    use_tls = not extra.get("disable_tls", False)
    sender = extra.get("from_email") or SENDER
    msg = message.email(sender)
    try:
        smtp_class = smtplib.SMTP_SSL if use_ssl else smtplib.SMTP
        with smtp_class(host, port, timeout=TIMEOUT_S) as smtp:
            if use_tls and not use_ssl:
                smtp.starttls()
            if conn.get("login"):
                smtp.login(conn["login"], conn.get("password") or "")
            # Unfolded headers read the same everywhere; SMTP wants CRLF line ends.
            refused = smtp.sendmail(parseaddr(sender)[1], [message.recipient], msg.as_bytes(policy=SMTP_POLICY))
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"SMTP {host}:{port}: {exc}") from None
    if refused:
        raise DeliveryError(f"SMTP {host}:{port} refused {sorted(refused)}")
    return f"smtp://{host}:{port}"
