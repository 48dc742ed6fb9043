"""The main job: simulate a service organisation and run the whole loop through Airflow.

``serviceloop run`` starts the embedded warehouse, prepares Airflow (metadata DB, dbt
manifest), writes the simulated helpdesk database and survey drop, then runs the three DAGs
for the simulated period's last day with ``airflow dags test`` (a real DAG run, recorded in
Airflow's metadata and visible in the UI): ingest, then transform, then drift. It ends with
a summary read back from the warehouse.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from serviceloop import airflow_env, warehouse
from serviceloop.settings import HELPDESK_DB, paths

# Piped output (CI, logs) gets a width that fits the summary's tables instead of rich's 80.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


@dataclass
class RunOptions:
    seed: int = 7
    start: dt.date = dt.date(2026, 6, 1)
    days: int = 120
    tickets_per_day: int = 200
    scenarios: tuple[str, ...] = ()
    simulate: bool = True
    # The DAGs to run; after `serviceloop import`, transform and drift alone work on what it loaded.
    stages: tuple[str, ...] = ("ingest", "transform", "drift")


@contextmanager
def step(label: str):
    started = time.monotonic()
    with console.status(f"[bold]{label}[/bold] ..."):
        yield
    console.print(f"[green]done[/green] {label} [dim]({time.monotonic() - started:.1f} s)[/dim]")


def simulation_config(options: RunOptions):
    from serviceloop.simulator import SimulationConfig, default_scenarios, parse_scenario

    config = SimulationConfig(
        seed=options.seed, start=options.start, days=options.days, tickets_per_day=options.tickets_per_day
    )
    scenarios = [parse_scenario(s) for s in options.scenarios] if options.scenarios else default_scenarios(config)
    return SimulationConfig(
        seed=options.seed,
        start=options.start,
        days=options.days,
        tickets_per_day=options.tickets_per_day,
        scenarios=scenarios,
    )


def simulate(options: RunOptions) -> dt.datetime:
    """Write the simulated source systems; returns the end of the simulated period."""
    from serviceloop.simulator import simulate as run_simulation
    from serviceloop.simulator import write_ground_truth, write_helpdesk, write_survey_drop

    p = paths()
    end = period_end(options)
    data = run_simulation(simulation_config(options))
    # The source systems as they stood when the period ended: tickets still open then are
    # open in the helpdesk, and the survey tool has exported every complete day.
    write_helpdesk(data, warehouse.url(HELPDESK_DB), as_of=end)
    write_survey_drop(data, p.survey_drop, as_of=end)
    write_ground_truth(data, p.ground_truth)
    return end


def period_end(options: RunOptions) -> dt.datetime:
    return dt.datetime.combine(options.start + dt.timedelta(days=options.days), dt.time(), dt.UTC)


def prepare_warehouse() -> None:
    """The warehouse's roles (as the administrator) and ServiceLoop's schemas (as the pipeline's role).

    On the embedded server the pipeline's role is ``serviceloop_pipeline``; on an external one
    it is the URL's own role. The analyst reads what that role builds in the marts.
    """
    from serviceloop import roles, schema

    with warehouse.connect() as conn:
        if not warehouse.is_external():
            roles.ensure_pipeline(conn, password=warehouse.pipeline_password())
        roles.ensure_analyst(conn, owner=None if warehouse.is_external() else roles.PIPELINE_ROLE)
    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn:
        schema.ensure(conn)


def prepare(log_path: Path) -> None:
    warehouse.start()
    prepare_warehouse()
    airflow_env.migrate(log_path)
    airflow_env.dbt_parse(log_path)


def dbt_docs(log_path: Path) -> Path:
    """Build the dbt docs site of the models (one static HTML page); returns its path."""
    docs = paths().reports / "dbt-docs"
    args = [
        airflow_env.dbt_bin(), "docs", "generate", "--static", "--project-dir", str(paths().dbt_project),
        "--profiles-dir", str(paths().dbt_project), "--target-path", str(docs), "--target", "warehouse",
    ]  # fmt: skip
    if airflow_env.run_logged(args, log_path) != 0:
        raise RuntimeError(f"`dbt docs generate` failed; see {log_path}")
    return docs / "static_index.html"


def run(options: RunOptions) -> int:
    p = paths()
    log_path = p.home / "logs" / f"run-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.log"
    console.print(f"[bold]ServiceLoop[/bold] - state in {p.home}, log in {log_path}")
    with step("start the embedded warehouse and prepare Airflow (first time: a minute)"):
        prepare(log_path)
    end = period_end(options)
    if options.simulate:
        with step(f"simulate {options.days} days of a service organisation (seed {options.seed})"):
            simulate(options)
    if "ingest" not in options.stages:
        # The data is what is loaded already (an import, an earlier run): as of its last batch.
        end = latest_interval_end() or end
    logical_date = end.isoformat()
    for stage, dag_id, label in (
        ("ingest", "serviceloop_ingest", "ingest: extract, validate (Great Expectations), load raw and quarantine"),
        ("transform", "serviceloop_transform", "transform: dbt models and tests through Cosmos"),
        ("drift", "serviceloop_drift", "drift: Evidently per team and day, reviews, alerts"),
    ):
        if stage not in options.stages:
            continue
        with step(f"{dag_id} - {label}"):
            airflow_env.dags_test(dag_id, logical_date, log_path)
    with step("dbt docs: every model, column and KPI definition as one HTML page"):
        dbt_docs(log_path)
    manager_actions = None
    if options.simulate:
        with step("simulated manager: act on the reviews the scenario's fix answers, then measure the effect"):
            manager_actions = act_as_simulated_manager(end)
    with step("weekly report: the organisation's service quality report of the last whole week (a sample)"):
        sample_report()
    print_summary(end, manager_actions)
    return 0


def sample_report() -> None:
    """The organisation's weekly report as HTML and, with Chromium, a PNG screenshot (not sent)."""
    from serviceloop import report

    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn:
        _html, _png, note = report.sample(conn, paths().reports)
    if note:
        console.print(f"[yellow]note[/yellow] no PNG of the sample report: {note}")


def act_as_simulated_manager(end: dt.datetime) -> list[str]:
    """The demo's manager acts through the review API; the effect is then measured as the DAG does."""
    from serviceloop import alerts, simulated_manager, verification

    p = paths()
    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn:
        done = simulated_manager.act(conn, p.ground_truth, end.date())
        verification.measure(conn)
        alerts.send_review_alerts(conn, outbox=p.outbox)
    return done


def summary(end: dt.datetime) -> dict:
    """Everything the run summary shows, read from the warehouse."""
    from serviceloop.ingest import batch_id
    from serviceloop.sources import SOURCES, raw_table

    out: dict = {"batches": [], "findings": [], "reviews": [], "alerts": []}
    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn, conn.cursor() as cur:
        for source in SOURCES.values():
            for entity in source.entities:
                # The interval's batch; an import's batch is named by its file, its interval ends at its last update.
                cur.execute(
                    """
                    select rows_read, rows_loaded, rows_quarantined, data_docs, batch_id from ops.batches
                    where batch_id = %s or (source = %s and entity = %s and interval_end = %s)
                    order by batch_id = %s desc, loaded_at desc limit 1
                    """,
                    (batch_id(source.name, entity.name, end), source.name, entity.name, end,
                     batch_id(source.name, entity.name, end)),
                )  # fmt: skip
                row = cur.fetchone()
                if row:
                    cur.execute(
                        f"""
                        select rule, count(*) from quarantine.{raw_table(source.name, entity.name)},
                            unnest(failed_rules) as rule
                        where batch_id = %s group by rule order by count(*) desc, rule
                        """,
                        (row[4],),
                    )
                    reasons = ", ".join(f"{rule} {n}" for rule, n in cur.fetchall())
                    out["batches"].append((source.name, entity.name, *row[:3], reasons))
                    if row[3]:
                        out.setdefault("data_docs", []).append((source.name, entity.name, row[3]))
        cur.execute("select count(*) from marts.kpi_daily")
        out["kpi_rows"] = cur.fetchone()[0]
        cur.execute("select count(*), count(*) filter (where is_finding) from monitoring.drift_findings")
        out["evaluations"], out["finding_days"] = cur.fetchone()
        cur.execute(
            """
            select r.segment, r.metric, r.reference_value, r.current_value, r.effect, r.since, r.detected_on,
                r.review_id, r.status, r.owner_name, r.report_path,
                (select count(*) from monitoring.review_evidence as e where e.review_id = r.review_id),
                r.implemented_on, r.verified_on, x.effect_vs_baseline, x.effect_vs_drift, x.effect_vs_drift_low,
                x.effect_vs_drift_high, r.effect_unit
            from monitoring.improvement_reviews as r
            left join monitoring.review_effects as x on x.review_id = r.review_id
            order by r.detected_on, r.segment, r.metric
            """
        )
        out["reviews"] = cur.fetchall()
        cur.execute("select alert_key, recipient, location from monitoring.alerts order by sent_at, alert_key")
        out["alerts"] = cur.fetchall()
    return out


def latest_interval_end() -> dt.datetime | None:
    with warehouse.connect(dsn=warehouse.pipeline_url()) as conn, conn.cursor() as cur:
        cur.execute("select max(interval_end) from ops.batches")
        return cur.fetchone()[0]


def print_summary(end: dt.datetime | None = None, manager_actions: list[str] | None = None) -> None:
    from serviceloop.alerts import describe_change

    end = end or latest_interval_end()
    if end is None:
        console.print("Nothing has been loaded yet: run `serviceloop run` first.")
        return
    s = summary(end)
    table = Table(title=f"Ingest of the interval ending {end:%Y-%m-%d %H:%M} UTC")
    for col in ("source", "entity", "read", "loaded", "quarantined"):
        table.add_column(col, justify="right" if col in ("read", "loaded", "quarantined") else "left")
    table.add_column("quarantined because (rule rows)", overflow="fold")
    for source, entity, read, loaded, quarantined, reasons in s["batches"]:
        table.add_row(source, entity, str(read), str(loaded), str(quarantined), reasons)
    console.print(table)
    if s.get("data_docs"):
        console.print(f"Validation results (Great Expectations Data Docs): {paths().data_docs / 'index.html'}")
        for source, entity, page in s["data_docs"]:
            console.print(f"  {source}__{entity}: {page}")
    console.print(f"KPI rows built (marts.kpi_daily, day x team x channel x priority): {s['kpi_rows']}")
    console.print(f"Drift evaluations (team x metric x day): {s['evaluations']}, of them findings: {s['finding_days']}")
    reviews = Table(title="Improvement reviews (one per team and metric)")
    for col in ("review", "team", "metric", "reference -> current", "since", "detected", "evidence", "owner"):
        reviews.add_column(col, overflow="fold")
    reviews.add_column("status")
    for row in s["reviews"]:
        seg, metric, ref_v, cur_v, effect, since, detected, rid, status, owner, _report, evidence, *_, unit = row
        reviews.add_row(
            rid, seg, metric, describe_change(metric, ref_v, cur_v, effect, unit=unit), str(since), str(detected),
            f"{evidence} findings", owner or "", status,
        )  # fmt: skip
    console.print(reviews)
    opened = [r for r in s["reviews"] if r[8] not in ("verified", "dismissed")]
    verified = [r for r in s["reviews"] if r[8] == "verified"]
    dismissed = sum(1 for r in s["reviews"] if r[8] == "dismissed")
    console.print(
        f"Reviews opened: {len(s['reviews'])} (in progress {len(opened)}, verified {len(verified)}, "
        f"dismissed as false alarms {dismissed})"
    )
    if manager_actions:
        console.print("Simulated manager's actions (the demo plays the manager, from the scenario's ground truth):")
        for line in manager_actions:
            console.print(f"  {line}")
    for r in verified:
        *_, implemented_on, verified_on, vs_base, vs_drift, low, high, _unit = r
        console.print(
            f"  verified {r[7]} on {verified_on} (changed {implemented_on}): effect against the drift\n"
            f"    {vs_drift:+.2f} (95% CI {low:+.2f} to {high:+.2f}), against the old baseline {vs_base:+.2f}"
        )
    console.print(f"Alerts written: {len(s['alerts'])}")
    for _key, recipient, location in s["alerts"]:
        console.print(f"  to {recipient}: {location}")
    p = paths()
    console.print(
        "\nNext:\n"
        "  make up                      Airflow UI on http://127.0.0.1:8080 (login printed)\n"
        f"  open {p.reports / 'drift'}   Evidently drift reports (HTML)\n"
        "  make evidently-ui             Evidently UI on http://127.0.0.1:8000: each team's metrics over time\n"
        f"  ls {p.outbox}                alerts to managers (.eml)\n"
        "  .venv/bin/serviceloop warehouse url   connect with psql to query the marts"
    )
    docs = p.reports / "dbt-docs" / "static_index.html"
    if docs.exists():
        console.print(f"  open {docs}   dbt docs: models, columns, KPI definitions")
    samples = sorted((p.reports / "quality").glob("*/organisation.html"))
    if samples:
        shot = samples[-1].with_suffix(".png")
        console.print(
            f"  open {samples[-1]}   weekly service quality report (organisation, sample)"
            + (f"\n  open {shot}   its screenshot" if shot.exists() else "")
        )
