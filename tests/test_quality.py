"""The weekly service quality report and the "Service quality" page, against the KPI marts.

A small simulated organisation (with its injected staffing shortage) goes the real way into
the warehouse of an Airflow stack started as `make up` does: simulator -> helpdesk database
and survey drop -> ingest with GX validation -> dbt seed and run. The drift monitor's finding
of the last week is recorded and opens a review through the review code. Then:

- each owner's report shows the marts' figures (scorecard and status, 13-week trends,
  bottleneck, delay causes), recomputed here by queries of the test's own;
- over a real SMTP server on loopback every owner gets one email for the week (text, HTML,
  the standalone report attached), in the team's language, also when a run died half way
  and the task is retried; a backfill renders a past week without sending it;
- headless Chromium logs in to Airflow, opens the page, picks a team and a month and sees
  the marts' figures, and the organisation's month equals ``kpi_scorecard``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import json
import re
from email import policy
from html.parser import HTMLParser
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url
from test_alerts_routes import smtp  # noqa: F401 - a fixture
from test_kpis import _ingest
from test_reviews_alerts import finding
from test_reviews_ui import _browser, _run, airflow_stack, log_in

pytestmark = pytest.mark.slow

START = dt.date(2026, 6, 1)
DAYS = 42
END = dt.datetime.combine(START + dt.timedelta(days=DAYS), dt.time(), dt.UTC)
WEEK = dt.date(2026, 7, 6)  # the last whole week of the data
TEAMS = ("accounts", "billing", "field_service", "onboarding", "tech_support")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The stack, its warehouse holding the marts, a finding and its review: (stack, warehouse url)."""
    from serviceloop import reviews, schema
    from serviceloop.pipeline import RunOptions, simulation_config
    from serviceloop.settings import HELPDESK_DB
    from serviceloop.simulator import simulate as simulate_data
    from serviceloop.simulator import write_helpdesk, write_survey_drop

    home = tmp_path_factory.mktemp("quality") / "home"
    with airflow_stack(home) as stack:
        _base, _user, _password, env, cli = stack
        url = _run(cli, ["warehouse", "url"], env).strip()
        helpdesk_url = make_url(url).set(database=HELPDESK_DB).render_as_string(hide_password=False)
        config = simulation_config(RunOptions(seed=3, start=START, days=DAYS, tickets_per_day=40))
        data = simulate_data(config)
        write_helpdesk(data, helpdesk_url, as_of=END)
        write_survey_drop(data, home / "drops" / "surveys", as_of=END)
        with contextlib.closing(psycopg2.connect(url)) as conn:
            schema.ensure(conn)
            conn.commit()
        _ingest(url, helpdesk_url, home / "drops", END)
        _run(cli, ["dbt", "seed"], env)
        # The marts the report and the page read, and what they are built from.
        marts = ["+kpi_team_weekly", "+kpi_team_monthly", "+kpi_scorecard", "+kpi_organisation_weekly",
                 "+kpi_organisation_daily", "+kpi_bottleneck_weekly", "+kpi_delay_causes", "+dim_team"]  # fmt: skip
        _run(cli, ["dbt", "run", "--select", *marts], env)
        with contextlib.closing(psycopg2.connect(url)) as conn:
            finding(conn, "billing", "resolution_time", WEEK + dt.timedelta(days=3), 0.6)
            reviews.open_from_findings(conn)
            conn.commit()
        yield stack, url


def _one(url: str, sql: str, *args):
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


# --- reading HTML with the standard library -------------------------------------------------


class _Node:
    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    @property
    def text(self) -> str:
        return "".join(self.parts + [c.text for c in self.children]).strip()

    def find_all(self, tag: str | None = None, **attrs) -> list[_Node]:
        out = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                child.attrs.get(_attr(k)) == v if v is not True else _attr(k) in child.attrs for k, v in attrs.items()
            ):
                out.append(child)
            out += child.find_all(tag, **attrs)
        return out


def _attr(keyword: str) -> str:
    """``data_value`` -> ``data-value``, ``class_`` -> ``class``."""
    return keyword.rstrip("_").replace("_", "-")


class _Tree(HTMLParser):
    VOID = {"meta", "img", "br", "input", "link", "hr"}

    def __init__(self, text: str):
        super().__init__()
        self.root = _Node("root", {})
        self.stack = [self.root]
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        while len(self.stack) > 1 and self.stack.pop().tag != tag:
            pass

    def handle_data(self, data):
        self.stack[-1].parts.append(data)


def _html(text: str) -> _Node:
    return _Tree(text).root


# --- what the marts say, by the test's own queries ------------------------------------------


def _status(actual: float | None, target: float, direction: str, margin: float) -> str | None:
    if actual is None:
        return None
    better_by = actual - target if direction == "at_least" else target - actual
    return "green" if better_by >= 0 else "amber" if better_by >= -margin else "red"


def _expected_scorecard(url: str, team: str | None, week: dt.date) -> dict:
    table, where = ("marts.kpi_team_weekly", "and team_id = %s") if team else ("marts.kpi_organisation_weekly", "")
    out = {}
    targets = _one(
        url,
        "select target_id, metric, target_value, direction, amber_margin from marts.kpi_scorecard "
        "where priority = 'all'",
    )
    for target_id, metric, target, direction, margin in targets:
        rows = _one(url, f"select {metric} from {table} where week_start = %s {where}", week, *([team] if team else []))
        actual = float(rows[0][0]) if rows and rows[0][0] is not None else None
        out[target_id] = (actual, _status(actual, float(target), direction, float(margin)))
    return out


def _expected_bottleneck(url: str, team: str | None, week: dt.date) -> str:
    if team:
        rows = _one(
            url,
            "select stage from marts.kpi_bottleneck_weekly where team_id = %s and week_start = %s and is_bottleneck",
            team,
            week,
        )
    else:
        rows = _one(
            url,
            "select stage from marts.kpi_bottleneck_weekly where week_start = %s group by stage "
            "order by sum(stage_mean_hours * tickets_closed) desc limit 1",
            week,
        )
    return rows[0][0]


def _expected_causes(url: str, team: str | None, month: dt.date) -> list[tuple[str, int]]:
    where = "and team_id = %s" if team else ""
    return [
        (cause, int(n))
        for cause, n in _one(
            url,
            f"select delay_cause, sum(sla_breaches) from marts.kpi_delay_causes where month_start = %s {where} "
            "group by delay_cause order by 2 desc, 1 limit 5",
            month,
            *([team] if team else []),
        )
    ]


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


# --- the report -----------------------------------------------------------------------------


def test_each_owner_s_report_shows_the_marts_figures(built, tmp_path):
    from serviceloop import report

    _stack, url = built
    with contextlib.closing(psycopg2.connect(url)) as conn:
        assert report.data_week(conn) == WEEK
        result = report.weekly_reports(conn, WEEK, reports_root=tmp_path, outbox=tmp_path / "outbox", send=False)
    assert sorted(Path(p).stem for p in result.rendered) == sorted([*TEAMS, "organisation"])
    assert not (tmp_path / "outbox").exists() and result.sent == []

    for team in ("billing", "tech_support", None):
        doc = _html((tmp_path / "quality" / str(WEEK) / f"{team or 'organisation'}.html").read_text())
        expected = _expected_scorecard(url, team, WEEK)
        shown = {
            row.attrs["data-target"]: (
                row.find_all("td", data_value=True)[0].attrs["data-value"],
                row.find_all("td", class_="rag")[0].attrs["data-status"],
            )
            for row in doc.find_all("tr", data_target=True)
        }
        assert set(shown) == set(expected), team
        for target_id, (actual, status) in expected.items():
            assert shown[target_id] == ("" if actual is None else repr(actual), status or ""), (team, target_id)
        assert any(a is not None for a, _s in expected.values()), team
        # The figure as printed, rounded from the mart's value.
        cells = {r.attrs["data-target"]: r.find_all("td")[2].text for r in doc.find_all("tr", data_target=True)}
        assert cells["sla_resolution_all"] == _percent(expected["sla_resolution_all"][0])

        assert doc.find_all("p", class_="bottleneck")[0].attrs["data-stage"] == _expected_bottleneck(url, team, WEEK)
        if team:
            shares = dict(_one(
                url, "select stage, cycle_time_share from marts.kpi_bottleneck_weekly where team_id = %s "
                "and week_start = %s", team, WEEK,
            ))  # fmt: skip
            shown_shares = {r.attrs["data-stage"]: r.find_all("td")[2].attrs["data-value"] for r in
                            doc.find_all("tr", data_stage=True)}  # fmt: skip
            assert shown_shares == {k: repr(float(v)) for k, v in shares.items()}

        causes = [(r.attrs["data-cause"], int(r.find_all("td")[1].text)) for r in doc.find_all("tr", data_cause=True)]
        assert causes == _expected_causes(url, team, WEEK.replace(day=1))
        assert causes or team is not None, "the organisation had SLA breaches that month"

        # Eight small charts, embedded: nothing is fetched from anywhere.
        images = doc.find_all("img")
        assert len(images) == 8 and all(i.attrs["src"].startswith("data:image/png;base64,") for i in images)
        assert not re.search(r'(src|href)="(?!data:)', (tmp_path / "quality" / str(WEEK) / "billing.html").read_text())

    billing = (tmp_path / "quality" / str(WEEK) / "billing.html").read_text()
    accounts = (tmp_path / "quality" / str(WEEK) / "accounts.html").read_text()
    organisation = (tmp_path / "quality" / str(WEEK) / "organisation.html").read_text()
    # Billing's manager reads Chinese; the finding and its review are in billing's and the organisation's report.
    assert "服务质量周报" in billing and "解决时长" in billing
    (review_id,) = [r for (r,) in _one(url, "select review_id from monitoring.improvement_reviews")]
    detected = WEEK + dt.timedelta(days=3)
    assert review_id in billing and review_id in organisation and review_id not in accounts
    assert f'<td class="num">{(WEEK + dt.timedelta(days=6) - detected).days} 天</td>' in billing
    assert str(detected) in organisation and "Resolution time" in organisation


def _parts(raw: bytes) -> dict:
    msg = email.message_from_bytes(raw, policy=policy.default)
    out = {"subject": msg["Subject"], "to": msg["To"], "attachments": {}, "images": 0}
    for part in msg.walk():
        if part.get_content_disposition() == "attachment":
            out["attachments"][part.get_filename()] = part.get_content()
        elif part.get_content_type() == "text/plain":
            out["text"] = part.get_content()
        elif part.get_content_type() == "text/html":
            out["html"] = part.get_content()
        elif part.get_content_type() == "image/png":
            out["images"] += 1
    return out


def test_one_email_per_owner_and_week_over_smtp_also_when_retried(built, smtp, tmp_path):  # noqa: F811
    from serviceloop import report

    _stack, url = built

    def connections(conn_id):
        return smtp.connection if conn_id == "serviceloop_smtp" else None

    def send(week: dt.date, only: str | None = None, send: bool = True):
        with contextlib.closing(psycopg2.connect(url)) as conn:
            return report.weekly_reports(
                conn, week, reports_root=tmp_path, outbox=tmp_path / "outbox", send=send, connections=connections,
                only=only,
            )  # fmt: skip

    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("delete from monitoring.alerts where kind = 'weekly_report'")
        conn.commit()
    # A run that died after the billing report; its retry; then a rerun of the week.
    first = send(WEEK, only="billing")
    assert first.sent == [f"smtp://127.0.0.1:{smtp.connection['port']}"] and len(smtp.messages) == 1
    retried = send(WEEK)
    assert len(retried.sent) == 5 and retried.skipped == [f"report.billing.{WEEK}"]
    again = send(WEEK)
    assert again.sent == [] and len(again.skipped) == 6 and len(smtp.messages) == 6

    by_recipient = {}
    for _sender, recipients, raw in smtp.messages:
        assert len(recipients) == 1
        by_recipient.setdefault(recipients[0], []).append(_parts(raw))
    teams = dict(_one(url, "select owner_email, team_id from reference.teams"))
    assert set(by_recipient) == {*teams, "service.director@serviceloop.example"}
    assert all(len(v) == 1 for v in by_recipient.values()), "one email per owner and week"

    billing = by_recipient["mei.chen@serviceloop.example"][0]
    assert billing["subject"] == f"[ServiceLoop] 服务质量周报：Billing，{WEEK} 当周"
    ((name, attached),) = billing["attachments"].items()
    assert name == f"serviceloop-quality-billing-{WEEK}.html"
    assert attached == (tmp_path / "quality" / str(WEEK) / "billing.html").read_text()
    assert "data:image/png;base64," in attached and "cid:" not in attached
    assert billing["images"] == 8 and billing["html"].count('src="cid:') == 8

    # The plain-text part holds the 13-week trends: the marts' values, oldest first.
    org = by_recipient["service.director@serviceloop.example"][0]
    assert org["subject"] == f"[ServiceLoop] Service quality report, the whole organisation, week of {WEEK}"
    weeks = [WEEK - dt.timedelta(weeks=12 - i) for i in range(13)]
    values = dict(_one(url, "select week_start, sla_resolution_compliance from marts.kpi_organisation_weekly"))
    line = next(x for x in org["text"].splitlines() if x.strip().startswith("SLA resolution compliance:"))
    expected = ", ".join(_percent(None if values.get(w) is None else float(values[w])) for w in weeks)
    assert line.split(": ", 1)[1] == expected

    # A backfill of an earlier week renders it and sends nothing, unless asked.
    earlier = WEEK - dt.timedelta(weeks=1)
    backfill = send(earlier, only="organisation", send=False)
    assert backfill.rendered == [str(tmp_path / "quality" / str(earlier) / "organisation.html")]
    assert backfill.sent == [] and len(smtp.messages) == 6
    assert len(send(earlier, only="organisation").sent) == 1 and len(smtp.messages) == 7


def test_the_dag_sends_each_owner_the_week_s_report_once_and_a_rerun_sends_none(built, smtp, tmp_path):  # noqa: F811
    from serviceloop import report

    (_base, _user, _password, env, cli), url = built
    week = WEEK - dt.timedelta(weeks=2)
    monday_after = dt.datetime.combine(week + dt.timedelta(weeks=1), dt.time(6), dt.UTC)
    # The route's Airflow connection points at the SMTP server on loopback.
    env = {**env, "AIRFLOW_CONN_SERVICELOOP_SMTP": json.dumps(smtp.connection)}
    _run(cli, ["airflow", "dags", "test", "serviceloop_report", monday_after.isoformat()], env)
    assert len(smtp.messages) == 6
    # The task run again (a retry, a rerun) for the same week: the step it calls sends nothing.
    with contextlib.closing(psycopg2.connect(url)) as conn:
        rerun = report.weekly_reports(
            conn, report.report_week(monday_after.date()), reports_root=tmp_path, outbox=tmp_path,
            connections=lambda _conn_id: smtp.connection,
        )  # fmt: skip
    assert rerun.sent == [] and len(rerun.skipped) == 6 and len(smtp.messages) == 6
    reports = sorted(email.message_from_bytes(raw)["X-ServiceLoop-Report"] for *_, raw in smtp.messages)
    assert reports == sorted(f"{k}/{week}" for k in (*TEAMS, "organisation"))
    keys = _one(url, "select alert_key, status from monitoring.alerts where alert_key like %s", f"report.%.{week}")
    assert sorted(keys) == sorted((f"report.{k}.{week}", "sent") for k in (*TEAMS, "organisation"))


# --- the dashboard --------------------------------------------------------------------------


def test_the_service_quality_page_shows_a_team_s_figures_from_the_marts(built):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    (base, user, password, _env, _cli), url = built
    page_url = f"{base}/serviceloop/quality"
    driver = _browser()
    wait = WebDriverWait(driver, 60)
    try:
        log_in(driver, wait, page_url, user, password)
        # A manager picks a team and a week: its figures, from the team's mart.
        Select(driver.find_element(By.ID, "segment")).select_by_visible_text("Technical Support")
        Select(driver.find_element(By.ID, "start")).select_by_value(str(WEEK))
        driver.find_element(By.ID, "show").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "segment-name"), "Technical Support"))
        shown = {
            r.get_attribute("data-target"): (
                r.find_element(By.CSS_SELECTOR, "td[data-value]").get_attribute("data-value"),
                r.find_element(By.CSS_SELECTOR, "td[data-value]").text,
                r.find_element(By.CSS_SELECTOR, "td.rag").get_attribute("data-status"),
            )
            for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-target]")
        }
        expected = _expected_scorecard(url, "tech_support", WEEK)
        assert set(shown) == set(expected)
        for target_id, (actual, status) in expected.items():
            assert shown[target_id] == ("" if actual is None else repr(actual), _percent(actual), status or "")
        # The last point of each trend is the week's value; the stages add up to the whole cycle.
        trend = driver.find_element(By.CSS_SELECTOR, "svg[data-metric=resolution_p90_hours]")
        ((p90,),) = _one(
            url,
            "select resolution_p90_hours from marts.kpi_team_weekly where team_id = 'tech_support' and week_start = %s",
            WEEK,
        )
        assert trend.get_attribute("data-last") == repr(float(p90))
        stages = {
            r.get_attribute("data-stage"): float(
                r.find_element(By.CSS_SELECTOR, "td[data-value]").get_attribute("data-value")
            )
            for r in driver.find_elements(By.CSS_SELECTOR, "#stages ~ table tr[data-stage]")
        }
        assert len(stages) == 6 and abs(sum(stages.values()) - 1) < 0.002
        assert max(stages, key=stages.get) == _expected_bottleneck(url, "tech_support", WEEK)
        assert driver.find_element(By.LINK_TEXT, "Improvement reviews").get_attribute("href") == (
            f"{base}/serviceloop/reviews?team=tech_support"
        )

        # The organisation's month, by default the last whole one: the figures and statuses of kpi_scorecard.
        driver.get(f"{page_url}?period=month")
        wait.until(ec.text_to_be_present_in_element((By.ID, "segment-name"), "Organisation"))
        scorecard = {
            r.get_attribute("data-target"): (
                r.find_element(By.CSS_SELECTOR, "td[data-value]").get_attribute("data-value"),
                r.find_element(By.CSS_SELECTOR, "td.rag").get_attribute("data-status"),
            )
            for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-target]")
        }
        assert scorecard == {
            t: ("" if a is None else repr(float(a)), s or "")
            for t, a, s in _one(url, "select target_id, actual_value, status from marts.kpi_scorecard")
        }
    finally:
        driver.quit()
