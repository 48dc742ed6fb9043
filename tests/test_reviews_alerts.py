"""A finding becomes one review per team and metric, and one alert to its owner, never two."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import email
from email import policy

import psycopg2
import pytest

from serviceloop import alerts, reviews, schema
from serviceloop.settings import REPO_ROOT


@pytest.fixture
def conn(fresh_db):
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn:
        schema.ensure(conn)
        with conn.cursor() as cur:
            # The teams seed, as dbt loads it into the reference schema.
            cur.execute("create schema reference")
            with (REPO_ROOT / "dbt_project" / "seeds" / "teams.csv").open() as f:
                rows = list(csv.DictReader(f))
            cols = list(rows[0])
            cur.execute(f"create table reference.teams ({', '.join(c + ' text' for c in cols)})")
            for r in rows:
                cur.execute(f"insert into reference.teams values ({', '.join(['%s'] * len(cols))})", list(r.values()))
        conn.commit()
        yield conn


def make_tickets(conn, team: str, first: dt.date, levels: list[tuple[int, float]], per_day: int = 40, seed: int = 1):
    """A marts.fct_tickets of synthetic resolved tickets: (days, median resolution hours) per stretch.

    Resolution hours are log-normal around the stretch's median; a ticket breaches its SLA
    when it took over 24 h; long tickets are mostly blamed on a staffing shortage.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    with conn.cursor() as cur:
        cur.execute("create schema if not exists marts")
        cur.execute(
            """create table if not exists marts.fct_tickets (ticket_id text, team_id text, resolved_date date,
               resolution_hours numeric, resolution_breached boolean, csat integer, delay_cause text)"""
        )
        day, n = first, 0
        for days, median in levels:
            for _ in range(days):
                for hours in median * np.exp(rng.normal(0, 0.5, per_day)):
                    cause = "staffing_shortage" if hours > 20 else ("third_party" if hours > 14 else None)
                    cur.execute(
                        "insert into marts.fct_tickets values (%s, %s, %s, %s, %s, %s, %s)",
                        (f"{team}-{n}", team, day, float(hours), bool(hours > 24), int(rng.integers(3, 6)), cause),
                    )
                    n += 1
                day += dt.timedelta(days=1)
    conn.commit()


def finding(conn, team: str, metric: str, as_of: dt.date, effect: float, is_finding: bool = True) -> str:
    run_id = f"team:{team}:{as_of}"
    fid = f"{run_id}:{metric}"
    with conn.cursor() as cur:
        cur.execute(
            "insert into monitoring.drift_runs values (%s, %s, 'team', %s, %s, %s, %s, %s, %s) on conflict do nothing",
            (run_id, as_of, team, as_of - dt.timedelta(days=34), as_of - dt.timedelta(days=7),
             as_of - dt.timedelta(days=6), as_of, f"/reports/drift/{team}/{as_of}.html"),
        )  # fmt: skip
        cur.execute(
            """insert into monitoring.drift_findings values (%s, %s, %s, 'team', %s, %s, 'mannw', 0.0001, true,
               400, 90, 10.0, %s, %s, 'relative change of the median', 'worse', %s, %s, null)""",
            (fid, run_id, as_of, team, metric, 10.0 * (1 + effect), effect, is_finding, as_of - dt.timedelta(days=2)),
        )
    conn.commit()
    return fid


def test_repeated_findings_extend_one_review_and_alert_once(conn, tmp_path):
    day = dt.date(2026, 9, 1)
    first = finding(conn, "tech_support", "resolution_time", day, 2.5)
    opened = reviews.open_from_findings(conn, [first])
    conn.commit()
    assert opened.opened == ["R-tech_support-resolution_time-20260901"]

    later = [finding(conn, "tech_support", "resolution_time", day + dt.timedelta(days=i), 2.6) for i in (1, 2)]
    again = reviews.open_from_findings(conn, later)
    conn.commit()
    assert again.opened == [] and again.evidence_added == 2

    with conn.cursor() as cur:
        cur.execute("select review_id, severity, owner_email, due_date, since from monitoring.improvement_reviews")
        rows = cur.fetchall()
        cur.execute("select count(*) from monitoring.review_evidence")
        evidence = cur.fetchone()[0]
    assert rows == [
        ("R-tech_support-resolution_time-20260901", "high", "jonas.berg@serviceloop.example",
         day + dt.timedelta(days=3), day - dt.timedelta(days=2)),
    ]  # fmt: skip
    assert evidence == 3

    sent = alerts.send_review_alerts(conn, outbox=tmp_path)
    conn.commit()
    assert len(sent.sent) == 1
    assert alerts.send_review_alerts(conn, outbox=tmp_path).sent == [], "a rerun sends nothing again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R-tech_support-resolution_time-20260901.opened.eml"]

    msg = email.message_from_bytes((tmp_path / sent.sent[0].split("/")[-1]).read_bytes(), policy=policy.default)
    assert msg["To"] == "jonas.berg@serviceloop.example"
    assert msg["Subject"] == "[ServiceLoop] Resolution time worse for Technical Support since 2026-08-30"
    body = msg.get_body(preferencelist=("plain",)).get_content()
    assert "median 10.0 h -> 35.0 h (+250%)" in body
    assert "stage 3. collaborative execution" in body
    assert "file:///reports/drift/tech_support/2026-09-01.html" in body
    assert "due 2026-09-04" in body
    assert "Mann-Whitney U" in body and "+100% on the median" in body
    assert msg["Message-ID"] == "<R-tech_support-resolution_time-20260901.opened@serviceloop.localhost>"


def test_a_non_finding_opens_nothing_and_segments_stay_apart(conn, tmp_path):
    day = dt.date(2026, 9, 1)
    quiet = finding(conn, "billing", "csat", day, 0.01, is_finding=False)
    a = finding(conn, "billing", "sla_breach", day, 0.09)
    b = finding(conn, "accounts", "sla_breach", day, 0.2)
    result = reviews.open_from_findings(conn, [quiet, a, b])
    conn.commit()
    assert sorted(result.opened) == ["R-accounts-sla_breach-20260901", "R-billing-sla_breach-20260901"]
    with conn.cursor() as cur:
        cur.execute("select segment, severity from monitoring.improvement_reviews order by segment")
        assert cur.fetchall() == [("accounts", "high"), ("billing", "medium")]


def test_the_database_refuses_a_second_open_review(conn):
    day = dt.date(2026, 9, 1)
    reviews.open_from_findings(conn, [finding(conn, "billing", "csat", day, 0.5)])
    conn.commit()
    with pytest.raises(psycopg2.errors.UniqueViolation), conn.cursor() as cur:
        cur.execute(
            """insert into monitoring.improvement_reviews (review_id, segment_type, segment, metric, severity,
               detected_on, due_date) values ('dup', 'team', 'billing', 'csat', 'high', %s, %s)""",
            (day, day),
        )
    conn.rollback()
