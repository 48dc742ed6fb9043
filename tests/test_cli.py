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
