"""The command line: clear errors before any work, and the commands a user reads about exist."""

from __future__ import annotations

import pytest

from serviceloop.cli import build_parser, main


def test_a_bad_scenario_fails_fast_with_a_clear_message(capsys):
    assert main(["run", "--scenario", "staffing_shortage(team=nowhere,start=2026-07-01,days=5,severity=0.5)"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("serviceloop: ") and "nowhere" in err


def test_a_bad_date_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--start", "June"])
    assert "not a date" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["run"], ["warehouse", "start"], ["warehouse", "url"], ["simulate"], ["prepare"], ["summary"], ["up"], ["down"]],
)
def test_documented_commands_parse(argv):
    assert callable(build_parser().parse_args(argv).func)


@pytest.mark.parametrize("argv", [["version"], ["dags", "no-such-command"]])
def test_airflow_through_serviceloop_answers_as_airflow_does(argv, tmp_path):
    """`dags test` runs through `serviceloop.airflow_cli`: same output and exit code as `airflow`."""
    import os
    import subprocess

    from serviceloop import airflow_env

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    plain = subprocess.run([airflow_env.airflow_bin(), *argv], env=env, capture_output=True, text=True)
    ours = subprocess.run([*airflow_env.airflow_command(), *argv], env=env, capture_output=True, text=True)
    assert (ours.returncode, ours.stdout) == (plain.returncode, plain.stdout)
    assert ours.stderr.splitlines()[-1:] == plain.stderr.splitlines()[-1:]
    assert plain.stdout or plain.stderr


def test_bench_readme_quotes_the_results_file(capsys):
    """bench/README.md's table of three sizes is `serviceloop bench --table` of bench/results.json, and
    names the commit every size was measured on: a new run cannot leave the README quoting an old one."""
    import json

    from serviceloop.settings import REPO_ROOT

    assert main(["bench", "--table"]) == 0
    table = capsys.readouterr().out
    readme = (REPO_ROOT / "bench" / "README.md").read_text()
    assert table in readme, "regenerate the table with `serviceloop bench --table`"
    results = json.loads((REPO_ROOT / "bench" / "results.json").read_text())
    commits = {m["commit"]["hash"] for m in results["sizes"].values()}
    assert len(commits) == 1, "the sizes were measured on different commits"
    assert all(m["complete"] and not m["commit"]["uncommitted_changes"] for m in results["sizes"].values())
    section = readme[readme.index("## One commit, three sizes") :]
    assert f"commit {commits.pop()[:7]}" in section.split("|")[0]
