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
