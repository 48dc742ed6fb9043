"""The demo's manager: acts on reviews as a real one would, from the simulation's ground truth.

A simulated organisation has no manager to read the alert, so ``serviceloop run`` plays one,
and says so wherever it shows the result. The simulator knows when a staffing shortage
ended (``ground_truth.json``: each scenario's ``end``, the first day back at full strength):
that is the fix. For every scenario whose end lies inside the simulated period, the
simulated manager takes the team's open review through the same functions the
``serviceloop reviews`` commands call - acknowledge, plan ("restore staffing"),
implemented on the scenario's end day - each recorded in the review's history with the actor
``simulated manager``. Whether the fix *worked* is not taken from the ground truth: the
effect measurement decides that from the data, as for any review.

Nothing here runs in a deployment: only ``serviceloop run`` on simulated data calls it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

ACTOR = "simulated manager"


def act(conn, ground_truth_path: Path, period_end: dt.date) -> list[str]:
    """Act on the reviews each scenario's fix answers; returns what was done, one line each."""
    from serviceloop import reviews

    if not ground_truth_path.exists():
        return []
    truth = json.loads(ground_truth_path.read_text())
    done = []
    for scenario in truth.get("scenarios", []):
        fixed_on = dt.date.fromisoformat(scenario["end"])
        if fixed_on >= period_end:
            continue  # the shortage outlasts the period: nothing was fixed yet
        for review in reviews.list_reviews(conn, segment=scenario["team"]):
            if review["status"] not in ("open", "acknowledged", "action_planned"):
                continue
            if review["detected_on"] > fixed_on + dt.timedelta(days=7):
                continue  # opened after the fix had long taken effect: not this episode
            rid = review["review_id"]
            if review["status"] == "open":
                reviews.acknowledge(conn, rid, f"seen: {scenario['kind']} in {scenario['team']}", actor=ACTOR)
            if review["status"] in ("open", "acknowledged"):
                reviews.plan(
                    conn,
                    rid,
                    f"restore staffing: {len(scenario.get('absent_agents', []))} absent agents back on shift",
                    actor=ACTOR,
                )
            reviews.implemented(conn, rid, fixed_on, "staff back at full strength", actor=ACTOR)
            done.append(f"{rid}: acknowledged, action planned, implemented on {fixed_on}")
    conn.commit()
    return done
