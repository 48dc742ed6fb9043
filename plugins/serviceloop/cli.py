"""The ``serviceloop`` command."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _simulation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7, help="random seed (same seed, same organisation)")
    parser.add_argument("--start", type=_date, default=dt.date(2026, 6, 1), help="first simulated day")
    parser.add_argument("--days", type=int, default=120, help="number of simulated days")
    parser.add_argument("--tickets-per-day", type=int, default=200, help="mean tickets on a weekday")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="inject a degradation, e.g. 'staffing_shortage(team=billing,start=2026-08-01,days=10,severity=0.5)'; "
        "default: one staffing shortage",
    )


def _options(args):
    from serviceloop.pipeline import RunOptions
    from serviceloop.simulator import parse_scenario

    for text in args.scenario:
        parse_scenario(text)  # a typo fails here, before anything is started

    return RunOptions(
        seed=args.seed,
        start=args.start,
        days=args.days,
        tickets_per_day=args.tickets_per_day,
        scenarios=tuple(args.scenario),
        simulate=not getattr(args, "no_simulate", False),
        stages=tuple(getattr(args, "stages", None) or STAGES),
    )


STAGES = ("ingest", "transform", "drift")


def _stages(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    wrong = [s for s in chosen if s not in STAGES]
    if wrong or not chosen:
        raise argparse.ArgumentTypeError(f"stages are a comma-separated subset of {','.join(STAGES)}: {text!r}")
    return tuple(s for s in STAGES if s in chosen)


def cmd_warehouse(args) -> int:
    from serviceloop import warehouse

    if args.action == "start":
        info = warehouse.start()
    elif args.action == "stop":
        info = warehouse.stop()
    else:
        info = warehouse.status()
    if args.action == "url":
        print(warehouse.display_url() if info.running else "not running")
        return 0 if info.running else 1
    kind = "embedded" if info.embedded else "external"
    state = "running" if info.running else "stopped"
    detail = f" pid {info.pid}" if info.pid else ""
    where = f" data in {info.pgdata}" if info.pgdata else ""
    print(f"warehouse ({kind}): {state}{detail}{where}")
    if info.running:
        print(f"url: {warehouse.display_url()}")
    return 0 if info.running or args.action == "stop" else 1


def cmd_simulate(args) -> int:
    from serviceloop import pipeline, warehouse

    warehouse.start()
    end = pipeline.simulate(_options(args))
    print(f"simulated through {end:%Y-%m-%d}; ground truth in {pipeline.paths().ground_truth}")
    return 0


def cmd_prepare(args) -> int:
    from serviceloop import pipeline

    log_path = pipeline.paths().home / "logs" / "prepare.log"
    pipeline.prepare(log_path)
    print(f"warehouse, Airflow metadata and dbt manifest ready (log: {log_path})")
    return 0


def cmd_run(args) -> int:
    from serviceloop import pipeline

    return pipeline.run(_options(args))


def cmd_summary(args) -> int:
    from serviceloop import pipeline

    pipeline.warehouse.start()
    pipeline.print_summary()
    return 0


def cmd_up(args) -> int:
    from serviceloop import airflow_env, pipeline

    log_path = pipeline.paths().home / "logs" / "airflow-standalone.log"
    pipeline.prepare(pipeline.paths().home / "logs" / "prepare.log")
    pid = airflow_env.up(log_path)
    print(f"Airflow starting (pid {pid}, log {log_path}) ...")
    if not airflow_env.wait_for_ui():
        print(f"the Airflow UI did not answer in time; see {log_path}", file=sys.stderr)
        return 1
    user, password = airflow_env.ui_login()
    print(f"Airflow UI: http://{airflow_env.UI_HOST}:{airflow_env.UI_PORT}  login: {user} / {password}")
    return 0


def cmd_down(args) -> int:
    from serviceloop import airflow_env, warehouse

    stopped = airflow_env.down()
    print("Airflow stopped" if stopped else "Airflow was not running")
    if args.warehouse:
        warehouse.stop()
        print("warehouse stopped")
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of ticket counts: {text!r}") from None
    if not sizes or min(sizes) < 1000:
        raise argparse.ArgumentTypeError(f"sizes are ticket counts of at least 1000: {text!r}")
    return sizes


def cmd_bench(args) -> int:
    from pathlib import Path

    from serviceloop import bench
    from serviceloop.settings import REPO_ROOT

    output = Path(args.output) if args.output else REPO_ROOT / "bench" / "results.json"
    if args.table:
        if not output.exists():
            print(f"no results at {output}: run `serviceloop bench` first", file=sys.stderr)
            return 1
        print(bench.markdown_table(json.loads(output.read_text())), end="")
        return 0
    results = bench.run(args.sizes, output, home=Path(args.home) if args.home else None, history_days=args.history_days)
    bench.print_table(results)
    print(f"results: {output}")
    return 0


def cmd_evaluate_detection(args) -> int:
    from pathlib import Path

    from serviceloop import detection_eval
    from serviceloop.settings import REPO_ROOT

    output = Path(args.output) if args.output else REPO_ROOT / "bench" / "detection.json"
    return detection_eval.main(args.seeds, output)


def cmd_evidently_ui(args) -> int:
    """The Evidently UI on loopback over the drift monitor's workspace (runs until stopped)."""
    import shutil
    import subprocess
    from pathlib import Path

    from serviceloop.settings import paths

    workspace = paths().evidently_workspace
    workspace.mkdir(parents=True, exist_ok=True)
    executable = shutil.which("evidently", path=str(Path(sys.executable).parent)) or shutil.which("evidently")
    if executable is None:
        raise RuntimeError("the evidently command is not installed in this environment (pip install -e .)")
    print(f"Evidently UI on http://127.0.0.1:{args.port} (workspace {workspace}); Ctrl-C stops it", flush=True)
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    command = [executable, "ui", "--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(args.port)]
    return subprocess.call(command, env=env)


def cmd_reviews(args) -> int:
    from serviceloop import review_cli

    return review_cli.run(args)


def cmd_quarantine(args) -> int:
    from serviceloop import quarantine

    return quarantine.run(args)


def cmd_report(args) -> int:
    from serviceloop import report

    return report.run(args)


def cmd_sources(args) -> int:
    """Validate the sources file and list what it declares."""
    from pathlib import Path

    from serviceloop.sources import SourcesConfigError, load_sources

    try:
        sources = load_sources(Path(args.file) if args.file else None)
    except SourcesConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for s in sources.values():
        state = "" if s.enabled else "  (disabled)"
        if s.kind == "servicenow_csv":
            print(f"{s.name}: {s.kind}, loaded by `serviceloop import servicenow-csv PATH`{state}")
        else:
            where = s.connection.describe() if s.connection else s.folder if "://" in s.folder else f"drops/{s.folder}"
            print(f"{s.name}: {s.kind} from {where}, schedule {s.schedule!r}, overlap {s.overlap}{state}")
        for name, m in s.mappings.items():
            if s.kind == "servicenow":
                place = f"/api/now/table/{s.table}"
            elif s.kind == "servicenow_csv":
                place = "the export's latest row per incident" if name == "tickets" else "the export's updates"
            else:
                place = m.table or m.endpoint or f"{s.prefix}_YYYYMMDD.<{'|'.join(s.formats)}>"
            print(f"  {s.name}__{name} <- {place}")
    return 0


def cmd_import(args) -> int:
    """Load a ServiceNow CSV export through validation into raw and quarantine; print the counts."""
    from serviceloop import warehouse
    from serviceloop.servicenow import import_export

    warehouse.start()
    with warehouse.connect() as conn:
        result = import_export(conn, args.path, args.source)
        kept_out = []
        with conn.cursor() as cur:
            for b in result.batches:
                cur.execute(
                    f"""
                    select origin, coalesce(record ->> '_parse_error', array_to_string(failed_rules, ', '))
                    from quarantine.{b.source}__{b.entity} where batch_id = %s order by row_number limit 10
                    """,
                    (b.batch_id,),
                )
                kept_out += cur.fetchall()
    print(
        f"{result.location}: {result.rows} rows, {result.incidents} incidents, {result.rows_kept_out} rows kept out"
        f" (outside ServiceNow's vocabulary, or unreadable; sha256 {result.checksum[:12]})"
    )
    if result.imported_before:
        print("  imported before: its batches were replaced, nothing is loaded twice")
    print(f"{'entity':<16}{'read':>8}{'loaded':>8}{'quarantined':>13}  quarantined because (rule rows)")
    for b in result.batches:
        reasons = ", ".join(f"{rule} {n}" for rule, n in sorted(b.quarantine_reasons.items(), key=lambda kv: -kv[1]))
        print(f"{b.entity:<16}{b.rows_read:>8}{b.rows_loaded:>8}{b.rows_quarantined:>13}  {reasons}")
        print(f"  batch {b.batch_id}" + (f", Data Docs {b.data_docs}" if b.data_docs else ""))
    if kept_out:
        print("quarantined (the first 10 of each entity):")
        for origin, reason in kept_out:
            print(f"  {origin}: {reason}")
    print(
        f"all of them: `serviceloop quarantine list --table {args.source}__tickets`; the KPIs and drift on the"
        " data loaded: `serviceloop run --no-simulate --stages transform,drift`"
    )
    return 0


def cmd_servicenow_export(args) -> int:
    """Write a simulated ServiceNow event-log export (one row per incident update)."""
    from pathlib import Path

    from serviceloop.pipeline import simulation_config
    from serviceloop.simulated_servicenow import write_export
    from serviceloop.simulator import simulate

    options = _options(args)
    data = simulate(simulation_config(options))
    as_of = dt.datetime.combine(args.as_of or options.start + dt.timedelta(days=options.days), dt.time(), dt.UTC)
    result = write_export(data.as_of(as_of), Path(args.path), bad_rows=args.bad_rows, seed=args.seed)
    print(f"{result.path}: {result.rows} rows of {result.incidents} incidents as of {as_of:%Y-%m-%d %H:%M} UTC")
    for line, column, value in result.spoiled:
        print(f"  line {line}: {column} = {value!r} (outside ServiceNow's vocabulary)")
    return 0


def cmd_servicenow_api(args) -> int:
    from serviceloop import simulated_servicenow

    user, password = os.environ.get("SERVICELOOP_SERVICENOW_USER"), os.environ.get("SERVICELOOP_SERVICENOW_PASSWORD")
    simulated_servicenow.serve(
        days=args.days, tickets_per_day=args.tickets_per_day, seed=args.seed, port=args.port,
        basic=(user, password) if user else None, token=os.environ.get("SERVICELOOP_SERVICENOW_TOKEN"),
    )  # fmt: skip
    return 0


def cmd_survey_api(args) -> int:
    from serviceloop import simulated_api

    simulated_api.serve(days=args.days, tickets_per_day=args.tickets_per_day, seed=args.seed, port=args.port,
                        token=os.environ.get("SERVICELOOP_SURVEY_API_TOKEN"))  # fmt: skip
    return 0


def cmd_passthrough(tool: str, argv: list[str]) -> int:
    import subprocess

    from serviceloop import airflow_env

    command = airflow_env.airflow_command() if tool == "airflow" else [airflow_env.dbt_bin()]
    extra = []
    if tool == "dbt" and argv and argv[0] not in ("--help", "-h"):
        p = airflow_env.paths()
        extra = ["--project-dir", str(p.dbt_project), "--target-path", str(p.dbt_target)]
    return subprocess.run([*command, *argv, *extra], env=airflow_env.environment()).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serviceloop", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the main job: simulate, then run ingest, transform and drift through Airflow")
    _simulation_args(p)
    p.add_argument("--no-simulate", action="store_true", help="use the source systems as they are")
    p.add_argument(
        "--stages", type=_stages, default=STAGES,
        help="the DAGs to run, of ingest,transform,drift (default all); after `serviceloop import`:"
        " --no-simulate --stages transform,drift",
    )  # fmt: skip
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("warehouse", help="the embedded PostgreSQL")
    p.add_argument("action", choices=["start", "stop", "status", "url"])
    p.set_defaults(func=cmd_warehouse)

    p = sub.add_parser("simulate", help="write a simulated helpdesk database and survey drop")
    _simulation_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("prepare", help="start the warehouse, migrate Airflow's metadata, write the dbt manifest")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("summary", help="print the summary of the latest interval loaded")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("up", help="start the Airflow UI, scheduler, DAG processor and triggerer in the background")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what `up` started")
    p.add_argument("--warehouse", action="store_true", help="also stop the embedded warehouse")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("bench", help="measure each stage beside its bare anchor at 10k, 100k and 1M tickets")
    p.add_argument("--sizes", type=_sizes, default=[10_000, 100_000, 1_000_000], help="ticket counts, comma-separated")
    p.add_argument("--output", help="results file (default: bench/results.json; sizes not measured are kept)")
    p.add_argument("--home", help="the bench's state folder (default: <SERVICELOOP_HOME>/bench)")
    p.add_argument(
        "--history-days", type=int, default=56, help="days of history per size (at least 42: drift needs 35)"
    )
    p.add_argument(
        "--table", action="store_true", help="measure nothing: print the results file's sizes as a Markdown table"
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "evaluate-detection", help="recall, precision, delay of the drift monitor and a z-score baseline on scenarios"
    )
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds 1..N (default 3)")
    p.add_argument("--output", help="results file (default: bench/detection.json)")
    p.set_defaults(func=cmd_evaluate_detection)

    p = sub.add_parser("evidently-ui", help="the Evidently UI on 127.0.0.1 over the drift snapshots of each segment")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_evidently_ui)

    p = sub.add_parser("reviews", help="improvement reviews: list, show, and act on them")
    from serviceloop.review_cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_reviews)

    p = sub.add_parser("quarantine", help="rows validation kept out of raw: list them, replay them after a fix")
    from serviceloop.quarantine import add_arguments as quarantine_arguments

    quarantine_arguments(p)
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("report", help="the weekly service quality report per owner: render it, or --send it")
    from serviceloop.report import add_arguments as report_arguments

    report_arguments(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sources", help="validate sources.yml and list the sources and entities it declares")
    p.add_argument("--file", help="the sources file (default: SERVICELOOP_SOURCES_FILE or sources.yml)")
    p.set_defaults(func=cmd_sources)

    p = sub.add_parser("import", help="load an export through validation into raw and quarantine")
    kinds = p.add_subparsers(dest="kind", required=True)
    k = kinds.add_parser(
        "servicenow-csv", help="a ServiceNow incident export (CSV; one row per incident or per update)"
    )
    k.add_argument("path", help="the export: a path or an fsspec URL (file://, memory://, s3:// ...)")
    k.add_argument("--source", default="servicenow_export", help="its servicenow_csv source in sources.yml")
    k.set_defaults(func=cmd_import)

    p = sub.add_parser("servicenow-export", help="write a simulated ServiceNow event-log export (CSV)")
    _simulation_args(p)
    p.add_argument("path", help="the CSV file to write")
    p.add_argument("--as-of", type=_date, help="the export's moment (default: the end of the simulated days)")
    p.add_argument("--bad-rows", type=int, default=0, help="rows to spoil with values outside ServiceNow's vocabulary")
    p.set_defaults(func=cmd_servicenow_export)

    p = sub.add_parser("servicenow-api", help="serve a ServiceNow Table API stand-in (incidents) on loopback")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--tickets-per-day", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_servicenow_api)

    p = sub.add_parser("survey-api", help="serve the simulated survey tool's REST API on loopback")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--tickets-per-day", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_survey_api)

    sub.add_parser("airflow", help="run an airflow command in the project's environment", add_help=False)
    sub.add_parser("dbt", help="run a dbt command against the warehouse", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("airflow", "dbt"):
        return cmd_passthrough(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError) as exc:
        # Errors the user can act on (a warehouse that will not start, a failed DAG, a bad
        # scenario) end with their message, not a traceback; the logs hold the detail.
        print(f"serviceloop: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
