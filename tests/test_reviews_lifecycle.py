"""A review's life: validated transitions with their history, deadlines, the measured effect, the CLI."""

from __future__ import annotations

import datetime as dt
import email
from email import policy

import pytest
from test_reviews_alerts import conn, finding, make_tickets  # noqa: F401 - conn is a fixture

from serviceloop import alerts, reviews, verification
from serviceloop.reviews import ReviewError

DAY0 = dt.date(2026, 7, 1)
DETECTED = DAY0 + dt.timedelta(days=37)
FIXED = DAY0 + dt.timedelta(days=47)


def _open(conn, team="tech_support", metric="resolution_time", as_of=DETECTED, days=1) -> str:  # noqa: F811
    ids = [finding(conn, team, metric, as_of + dt.timedelta(days=i), 2.5) for i in range(days)]
    (rid,) = reviews.open_from_findings(conn, ids).opened
    conn.commit()
    return rid


def _history(conn, rid):  # noqa: F811
    with conn.cursor() as cur:
        cur.execute(
            "select from_status, status, actor, note from monitoring.review_history where review_id = %s "
            "order by changed_at",
            (rid,),
        )
        return cur.fetchall()


def test_transitions_are_validated_and_every_step_is_in_the_history(conn):  # noqa: F811
    rid = _open(conn)
    with pytest.raises(ReviewError, match="is open: it cannot become implemented; allowed: acknowledged"):
        reviews.implemented(conn, rid, FIXED)
    conn.rollback()
    with pytest.raises(ReviewError, match="needs a reason"):
        reviews.dismiss(conn, rid, "  ")
    with pytest.raises(ReviewError, match="no review 'R-nope'"):
        reviews.acknowledge(conn, "R-nope")
    conn.rollback()

    reviews.acknowledge(conn, rid, "looking into it", actor="jonas")
    with pytest.raises(ReviewError, match="needs a note"):
        reviews.plan(conn, rid, None)
    reviews.plan(conn, rid, "two agents from billing cover the queue", actor="jonas")
    conn.commit()
    with pytest.raises(ReviewError, match="verified by the effect measurement, not by hand"):
        reviews.transition(conn, rid, "verified", actor="cli")
    conn.rollback()
    reviews.implemented(conn, rid, FIXED, "cover started", actor="jonas")
    conn.commit()

    assert _history(conn, rid) == [
        (None, "open", "drift monitor", f"opened by drift finding team:tech_support:{DETECTED}:resolution_time"),
        ("open", "acknowledged", "jonas", "looking into it"),
        ("acknowledged", "action_planned", "jonas", "two agents from billing cover the queue"),
        ("action_planned", "implemented", "jonas", "cover started"),
    ]
    review = reviews.get(conn, rid)
    assert review["status"] == "implemented" and review["implemented_on"] == FIXED


def test_a_dismissed_review_is_closed_and_the_next_finding_opens_a_new_one(conn):  # noqa: F811
    rid = _open(conn, "billing", "csat")
    reviews.dismiss(conn, rid, "survey tool outage, not the service")
    conn.commit()
    with pytest.raises(ReviewError, match="is dismissed: it cannot become acknowledged; allowed: nothing"):
        reviews.acknowledge(conn, rid)
    conn.rollback()
    assert reviews.get(conn, rid)["dismiss_reason"] == "survey tool outage, not the service"
    later = _open(conn, "billing", "csat", as_of=DETECTED + dt.timedelta(days=20))
    assert later != rid
    assert [r["status"] for r in reviews.list_reviews(conn, segment="billing")] == ["dismissed", "open"]
    # The dismissal counts against the detector: one false alarm, nothing confirmed yet.
    assert reviews.judged_precision(conn) == {"true_alarms": 0, "false_alarms": 1, "not_judged": 1, "precision": 0.0}
    reviews.plan(conn, later, "check the survey tool first")
    conn.commit()
    assert reviews.judged_precision(conn)["precision"] == 0.5


def test_an_overdue_review_is_reminded_then_escalated_once_each(conn, tmp_path):  # noqa: F811
    rid = _open(conn)  # high severity: due 3 days after detection
    due = reviews.get(conn, rid)["due_date"]
    assert due == DETECTED + dt.timedelta(days=3)
    alerts.send_review_alerts(conn, outbox=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{rid}.opened.eml"]

    # The data's clock moves on: the drift monitor has evaluated the day after the due date.
    finding(conn, "accounts", "csat", due + dt.timedelta(days=1), 0.0, is_finding=False)
    alerts.send_review_alerts(conn, outbox=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{rid}.opened.eml", f"{rid}.reminder.eml"]
    reminder = email.message_from_bytes((tmp_path / f"{rid}.reminder.eml").read_bytes(), policy=policy.default)
    assert reminder["To"] == "jonas.berg@serviceloop.example"
    assert "Reminder" in reminder["Subject"]

    finding(conn, "accounts", "csat", due + dt.timedelta(days=reviews.ESCALATE_AFTER_DAYS + 1), 0.0, False)
    alerts.send_review_alerts(conn, outbox=tmp_path)
    alerts.send_review_alerts(conn, outbox=tmp_path)
    escalation = email.message_from_bytes((tmp_path / f"{rid}.escalation.eml").read_bytes(), policy=policy.default)
    assert escalation["To"] == "service.director@serviceloop.example"
    assert "Jonas Berg" in escalation.get_body(("plain",)).get_content()
    assert len(list(tmp_path.iterdir())) == 3, "each event alerts once"

    # An action planned stops the clock: no reminder for the next deadline of another review.
    reviews.plan(conn, rid, "cover from billing")
    conn.commit()
    assert alerts.pending_events(conn) == []


def test_the_effect_is_measured_and_a_recovery_verified_with_a_pinned_baseline(conn, tmp_path):  # noqa: F811
    # 35 healthy days at a 10 h median, 12 days of a shortage at 35 h, the fix, then 14 days at 10 h.
    make_tickets(conn, "tech_support", DAY0, [(35, 10.0), (12, 35.0), (14, 10.0)])
    rid = _open(conn, days=3)
    reviews.acknowledge(conn, rid)
    reviews.plan(conn, rid, "restore staffing")
    reviews.implemented(conn, rid, FIXED)
    conn.commit()

    early = verification.measure(conn, today=FIXED + dt.timedelta(days=3))
    assert early.measured == [], "no whole post-change window yet"

    last = FIXED + dt.timedelta(days=13)
    result = verification.measure(conn, today=last)
    assert result.verified == [rid]
    review = reviews.get(conn, rid)
    # Windows ending FIXED+6, +7, +8 are within tolerance: verified on the third.
    verified_on = FIXED + dt.timedelta(days=6 + verification.VERIFY_DAYS - 1)
    assert review["status"] == "verified" and review["verified_on"] == verified_on
    (effect,) = review["effects"]
    assert effect["post_start"] == verified_on - dt.timedelta(days=6) and effect["post_end"] == verified_on
    assert effect["post_n"] == 7 * 40
    # The drift window is the last finding's 7 days (DETECTED+2): two healthy days, five short-staffed.
    assert 9.0 < effect["baseline_value"] < 11.0 and 20.0 < effect["drift_value"] < 35.0
    # Against the drift the median fell by more than half; against the baseline it is back to about 0.
    assert effect["effect_vs_drift_low"] < effect["effect_vs_drift"] < effect["effect_vs_drift_high"] < -0.5
    assert effect["effect_vs_baseline_low"] < 0.0 < effect["effect_vs_baseline_high"] < 0.2
    assert effect["days_within_tolerance"] == verification.VERIFY_DAYS
    assert review["history"][-1]["actor"] == "effect measurement"

    pins = verification.pinned_baselines(conn, verified_on, verified_on + dt.timedelta(days=60))
    assert pins == {
        ("tech_support", "resolution_time"): (
            DETECTED - dt.timedelta(days=34), DETECTED - dt.timedelta(days=7),
            verified_on + dt.timedelta(days=1), FIXED + dt.timedelta(days=33),
        )
    }  # fmt: skip
    assert verification.pinned_baselines(conn, FIXED + dt.timedelta(days=34), FIXED + dt.timedelta(days=40)) == {}

    sent = alerts.send_review_alerts(conn, outbox=tmp_path, today=last)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{rid}.opened.eml", f"{rid}.verified.eml"]
    assert len(sent.sent) == 2
    verified = email.message_from_bytes((tmp_path / f"{rid}.verified.eml").read_bytes(), policy=policy.default)
    text = verified.get_body(("plain",)).get_content()
    assert "back within tolerance" in text and "95% CI" in text


def test_a_change_that_did_not_work_is_not_verified(conn):  # noqa: F811
    make_tickets(conn, "tech_support", DAY0, [(35, 10.0), (26, 35.0)])
    rid = _open(conn, days=3)
    reviews.plan(conn, rid, "overtime")
    reviews.implemented(conn, rid, FIXED)
    conn.commit()
    result = verification.measure(conn, today=FIXED + dt.timedelta(days=13))
    assert result.measured == [rid] and result.verified == []
    review = reviews.get(conn, rid)
    assert review["status"] == "implemented"
    (effect,) = review["effects"]
    assert effect["days_within_tolerance"] == 0 and effect["effect_vs_baseline_low"] > 1.0
    # The owner can go back to planning; the measurement then stops.
    reviews.plan(conn, rid, "hire two agents")
    conn.commit()
    assert reviews.get(conn, rid)["implemented_on"] is None


def test_the_cli_acts_on_reviews_and_refuses_bad_transitions(conn, fresh_db, monkeypatch, capsys):  # noqa: F811
    from serviceloop import cli

    rid = _open(conn)
    monkeypatch.setenv("SERVICELOOP_WAREHOUSE_URL", fresh_db)
    assert cli.main(["reviews", "ack", rid, "--note", "on it", "--as", "jonas"]) == 0
    assert f"{rid}: open -> acknowledged" in capsys.readouterr().out
    assert cli.main(["reviews", "implemented", rid, "--on", str(FIXED)]) == 1
    err = capsys.readouterr().err
    assert "cannot become implemented; allowed: action_planned, dismissed" in err
    with pytest.raises(SystemExit):
        cli.main(["reviews", "implemented", rid, "--on", "yesterday"])
    assert "not a date (YYYY-MM-DD): 'yesterday'" in capsys.readouterr().err
    assert cli.main(["reviews", "plan", rid, "--note", "cover the queue"]) == 0
    assert cli.main(["reviews", "list", "--status", "action_planned"]) == 0
    assert rid in capsys.readouterr().out
    assert cli.main(["reviews", "show", rid]) == 0
    out = capsys.readouterr().out
    assert "on it" in out and "cover the queue" in out and "jonas" in out
    assert reviews.get(conn, rid)["status"] == "action_planned"


def test_a_pinned_baseline_catches_a_relapse_the_rolling_reference_would_hide(conn, tmp_path):  # noqa: F811
    from serviceloop import drift

    # Two identical teams: healthy, a 12-day shortage, fixed for 9 days, then a relapse to 22 h.
    stretches = [(35, 10.0), (12, 35.0), (9, 10.0), (14, 22.0)]
    for team in ("tech_support", "billing"):
        make_tickets(conn, team, DAY0, stretches, seed=5)

    def evaluate_through(day: dt.date):
        with conn.cursor() as cur:
            cur.execute(
                """insert into ops.batches (batch_id, source, entity, interval_start, interval_end, window_end,
                   rows_read, rows_loaded, rows_quarantined) values (%s, 'helpdesk', 'tickets', %s, %s, %s, 0, 0, 0)""",
                (f"b{day}", day, day + dt.timedelta(days=1), day + dt.timedelta(days=1)),
            )
        conn.commit()
        result = drift.run(conn, reports_dir=tmp_path)
        conn.commit()
        reviews.open_from_findings(conn, result.finding_ids)
        conn.commit()

    evaluate_through(FIXED + dt.timedelta(days=8))
    (tech,) = [
        r["review_id"] for r in reviews.list_reviews(conn, segment="tech_support") if "resolution" in r["review_id"]
    ]
    reviews.plan(conn, tech, "restore staffing")
    reviews.implemented(conn, tech, FIXED)
    conn.commit()
    assert verification.measure(conn).verified == [tech]

    last = DAY0 + dt.timedelta(days=69)
    evaluate_through(last)
    with conn.cursor() as cur:
        cur.execute(
            """select segment, is_finding, reference_value from monitoring.drift_findings
               where metric = 'resolution_time' and as_of = %s order by segment""",
            (last,),
        )
        (billing, billing_found, billing_ref), (tech_seg, tech_found, tech_ref) = cur.fetchall()
    assert tech_found and 9.0 < tech_ref < 11.0, "against the pinned healthy baseline the relapse shows"
    assert not billing_found and billing_ref > 15.0, "the rolling reference still holds the shortage"
    relapse = [r for r in reviews.list_reviews(conn, segment="tech_support") if r["review_id"] != tech]
    assert any(r["metric"] == "resolution_time" and r["status"] == "open" for r in relapse)


def test_the_simulated_manager_implements_the_scenarios_fix_once_and_says_so(conn, tmp_path):  # noqa: F811
    import json

    from serviceloop import simulated_manager

    rid = _open(conn)
    other = _open(conn, "billing", "csat")
    truth = tmp_path / "ground_truth.json"
    scenario = {"kind": "staffing_shortage", "team": "tech_support", "start": str(DETECTED - dt.timedelta(days=3))}
    truth.write_text(json.dumps({"scenarios": [{**scenario, "end": str(FIXED), "absent_agents": ["a1", "a2"]}]}))

    # A shortage still going on at the end of the period has no fix to record.
    assert simulated_manager.act(conn, truth, period_end=FIXED) == []
    assert reviews.get(conn, rid)["status"] == "open"

    done = simulated_manager.act(conn, truth, period_end=FIXED + dt.timedelta(days=20))
    assert done == [f"{rid}: acknowledged, action planned, implemented on {FIXED}"]
    review = reviews.get(conn, rid)
    assert review["status"] == "implemented" and review["implemented_on"] == FIXED
    assert {h["actor"] for h in review["history"][1:]} == {"simulated manager"}
    assert reviews.get(conn, other)["status"] == "open", "only the scenario's team is acted on"
    assert simulated_manager.act(conn, truth, period_end=FIXED + dt.timedelta(days=20)) == [], "a rerun does nothing"
