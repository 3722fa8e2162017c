"""``--help`` works for every command and subcommand (help text is %-formatted by argparse)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from scarlet.cli import main as scarlet_main
from services.aggregator.__main__ import main as aggregator_main
from services.cache.__main__ import main as cache_main
from services.worker.__main__ import main as worker_main

Main = Callable[[Sequence[str] | None], int]

COMMANDS: list[tuple[str, Main, list[str]]] = [
    (
        "scarlet",
        scarlet_main,
        ["simulate", "compare", "up", "provision", "down", "report", "check-config"],
    ),
    ("scarlet-aggregator", aggregator_main, ["run", "declare-topology", "check-config"]),
    ("scarlet-worker", worker_main, ["run", "check-config"]),
    ("scarlet-cache", cache_main, ["run", "check-config"]),
]

CASES = [
    pytest.param(main, argv, id=" ".join([prog, *argv]))
    for prog, main, subcommands in COMMANDS
    for argv in ([], *([sub] for sub in subcommands))
]


@pytest.mark.parametrize(("main", "argv"), CASES)
def test_help_exits_zero_and_prints_the_usage(main, argv, capsys):
    # Given a command line asking for help
    # When it is parsed
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    # Then argparse printed the usage of that (sub)command and exited 0
    out = capsys.readouterr().out
    assert stopped.value.code == 0
    assert out.startswith("usage: ")
    assert " ".join(argv) in out.splitlines()[0]


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        pytest.param(scarlet_main, ["up"], id="scarlet up"),
        pytest.param(aggregator_main, ["run"], id="scarlet-aggregator run"),
        pytest.param(worker_main, ["check-config"], id="scarlet-worker check-config"),
    ],
)
def test_a_percent_sign_in_a_default_is_shown_as_written(main, argv, capsys):
    # Given the default broker URL, whose vhost "/" is written %2F
    # When the help of a command with the service flags is printed
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    # Then the default appears as written, not doubled
    out = capsys.readouterr().out
    assert "5672/%2F" in out and "%%" not in out
