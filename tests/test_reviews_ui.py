"""The "Improvement reviews" page of the Airflow UI, driven in headless Chromium.

The stack is started as `make up` does, in a state folder of its own; the drift DAG opens a
review from tickets whose resolution time doubled; its owner acknowledges it in Chinese
with the CLI. A browser (Debian's Chromium, `make browser`) then logs in to Airflow, finds
the review in the list, opens it, and follows its report link to the Evidently report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url
from test_reviews_alerts import make_tickets

from serviceloop.roles import PIPELINE_ROLE

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DAY0 = dt.date(2026, 7, 1)
LAST_DAY = DAY0 + dt.timedelta(days=42)
# Resolution time doubles from 5 August; the resolved-in-the-last-2-days cohort sees it on the 6th.
REVIEW = "R-billing-resolution_time-20260806"
NOTE = "已安排两名客服支援账单队列 <b>from Monday</b>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, token: str | None = None) -> tuple[int, dict, bytes]:
    """Status, headers and body of a GET, redirects not followed."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@contextlib.contextmanager
def airflow_stack(home: Path):
    """`serviceloop up` with its state in ``home``: (base url, user, password, env, cli); down afterwards."""
    port = _free_port()
    env = {**os.environ, "SERVICELOOP_HOME": str(home), "SERVICELOOP_UI_PORT": str(port)}
    env.pop("AIRFLOW_HOME", None)
    cli = str(Path(sys.executable).with_name("serviceloop"))
    try:
        up = subprocess.run([cli, "up"], env=env, capture_output=True, text=True, timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        login = re.search(rf"http://127\.0\.0\.1:{port}\s+login: (\S+) / (\S+)", up.stdout)
        assert login, up.stdout
        yield f"http://127.0.0.1:{port}", login.group(1), login.group(2), env, cli
    finally:
        subprocess.run([cli, "down", "--warehouse"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def stack(tmp_path):
    with airflow_stack(tmp_path / "home") as up:
        yield up


def _run(cli: str, args: list[str], env: dict) -> str:
    done = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"serviceloop {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def _open_review_through_the_drift_dag(cli: str, env: dict) -> None:
    """Billing's resolution time doubles after 5 healthy weeks; the drift DAG opens the review."""
    _run(cli, ["dbt", "seed", "--select", "teams"], env)  # the owners, as `make run` loads them
    # The marts are the pipeline role's, as dbt builds them: the drift task reads them as that role.
    url = make_url(_run(cli, ["warehouse", "url"], env).strip()).set(username=PIPELINE_ROLE)
    with psycopg2.connect(url.render_as_string(hide_password=False)) as conn:
        make_tickets(conn, "billing", DAY0, [(35, 10.0), (8, 35.0)])
        with conn.cursor() as cur:
            # The helpdesk extracted through LAST_DAY: the drift monitor evaluates up to it.
            cur.execute(
                """insert into ops.batches (batch_id, source, entity, interval_start, interval_end, window_end,
                   rows_read, rows_loaded, rows_quarantined) values ('b1', 'helpdesk', 'tickets', %s, %s, %s, 0, 0, 0)""",
                (DAY0, LAST_DAY + dt.timedelta(days=1), LAST_DAY + dt.timedelta(days=1)),
            )
    conn.close()
    _run(cli, ["airflow", "dags", "test", "serviceloop_drift", LAST_DAY.isoformat()], env)
    _run(cli, ["reviews", "ack", REVIEW, "--note", NOTE, "--as", "mei.chen"], env)


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: `make browser` installs Debian's chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def log_in(driver, wait, url: str, user: str, password: str) -> None:
    """Open ``url``: Airflow's login comes first, then the browser is back at ``url``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(url)
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(ec.url_to_be(url))


def test_a_review_opened_by_the_pipeline_is_listed_with_its_history_and_its_report_resolves(stack):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, user, password, env, cli = stack
    home = Path(env["SERVICELOOP_HOME"])
    _open_review_through_the_drift_dag(cli, env)
    reviews_url = f"{base}/serviceloop/reviews"

    # Airflow does not authenticate plugin apps: the page does, and sends a stranger to the login.
    status, headers, _ = _get(reviews_url)
    assert status == 303 and "/auth/login?next=" in headers["location"]
    assert _get(f"{reviews_url}/{REVIEW}/report", token="not-a-token")[0] in (401, 403)

    driver = _browser()
    wait = WebDriverWait(driver, 60)
    try:
        log_in(driver, wait, reviews_url, user, password)

        # The list: the review the drift DAG opened, with its owner, status and age.
        row = wait.until(ec.presence_of_element_located((By.XPATH, f"//tr[td/a[text()='{REVIEW}']]")))
        cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1:8] == [
            "acknowledged",
            "high",
            "billing",
            "Resolution time",
            "Mei Chen",
            "6 d",
            "2026-08-09 (overdue)",
        ]
        assert re.fullmatch(r"\d+ findings", cells[8]) and cells[9] == "report"
        assert "the drift monitor last evaluated 2026-08-12" in driver.find_element(By.CLASS_NAME, "meta").text

        # Its page: the history with who, when (UTC) and the note, in Chinese and escaped.
        row.find_element(By.LINK_TEXT, REVIEW).click()
        wait.until(ec.presence_of_element_located((By.ID, "history")))
        history = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.XPATH, "//h2[@id='history']/following-sibling::table[1]/tbody/tr")
        ]
        assert [h[1:] for h in history] == [
            ["open", "drift monitor", "2026-08-06", "opened by drift finding team:billing:2026-08-06:resolution_time"],
            ["open → acknowledged", "mei.chen", "", NOTE],
        ]
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", h[0]) for h in history)
        assert driver.find_elements(By.TAG_NAME, "b") == [], "a note's markup is shown, not rendered"
        assert "解决时长" in driver.find_element(By.TAG_NAME, "dl").text, "the owner's language, from the glossary"

        # The report link resolves through the UI's origin to the drift monitor's Evidently report.
        report_url = driver.find_element(By.LINK_TEXT, "Evidently report").get_attribute("href")
        assert report_url == f"{reviews_url}/{REVIEW}/report"
        driver.get(report_url)
        wait.until(lambda d: "Drift in column 'resolution_hours'" in d.find_element(By.TAG_NAME, "body").text)
        cookie = driver.get_cookie("_token")
    finally:
        driver.quit()

    # Over HTTP with the browser's login: 200, the very file the drift monitor wrote, sandboxed.
    status, headers, body = _get(report_url, token=cookie["value"])
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"].startswith("sandbox")
    assert body == (home / "reports" / "drift" / "billing" / "2026-08-06.html").read_bytes()
    # Nothing but the reports the reviews record is served.
    for path in ("R-nope/report", "..%2F..%2F..%2Fetc%2Fpasswd/report", f"{REVIEW}/evidence/2026-08-09/report"):
        assert _get(f"{reviews_url}/{path}", token=cookie["value"])[0] == 404, path

    # Airflow's UI lists the page in its navigation.
    plugins = json.loads(_get(f"{base}/api/v2/plugins", token=cookie["value"])[2])["plugins"]
    (views,) = [p["external_views"] for p in plugins if p["name"] == "serviceloop_reviews"]
    assert [(v["name"], v["href"]) for v in views] == [
        ("Improvement reviews", "serviceloop/reviews"),
        ("Service quality", "serviceloop/quality"),
    ]
