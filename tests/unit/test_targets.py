"""Rounds- and bytes-to-target, and issue 13's acceptance verdict, on hand-made curves."""

from __future__ import annotations

import math

import pytest

from bench.experiments.report import LoadedRun
from bench.experiments.targets import (
    acceptance,
    crossings,
    format_acceptance,
    format_targets,
    mean_curves,
)
from scarlet.compare import crossing
from shared.results import RoundRecord, RunResults


def _record(t: int, acc: float, wire: int, paper: int | None = None) -> RoundRecord:
    paper = 2 * wire if paper is None else paper
    return RoundRecord(
        round=t,
        server_accuracy=acc,
        client_accuracy=math.nan,
        clients=1,
        requested=0,
        reused=0,
        labels_up=0,
        labels_down=0,
        wire_bytes_up=wire // 2,
        wire_bytes_down=wire - wire // 2,
        paper_bytes_up=paper,
        paper_bytes_down=0,
        baseline_bytes_up=paper,
        baseline_bytes_down=0,
        uploads={},
        cache_version=0,
        seconds=0.0,
    )


def _run(method: str, accs: list[float], wire: int, seed: int = 0, alpha: float = 0.5):
    rounds = [_record(t, a, wire) for t, a in enumerate(accs)]
    return LoadedRun(method, alpha, seed, {}, rounds, 1.0)


# DS-FL's final is 0.80: the 95 % target is 0.76, reached in round 3
DSFL = [0.50, 0.70, 0.77, 0.79, 0.80]


def test_crossings_are_the_first_round_of_the_mean_curve_and_the_bytes_spent_by_then():
    runs = [
        _run("dsfl", DSFL, wire=100),
        _run("scarlet+sliding", [0.5, 0.7, 0.74, 0.78, 0.80], wire=40, seed=0),
        _run("scarlet+sliding", [0.5, 0.7, 0.76, 0.78, 0.80], wire=40, seed=1),
    ]
    found = {(x.method, x.share): x for x in crossings(mean_curves(runs))}
    ours = found[("scarlet+sliding", 0.95)]
    # mean curve of ours: 0.50, 0.70, 0.75, 0.78, 0.80 -> 0.76 first in round 4
    assert ours.round == 4
    assert ours.wire == pytest.approx(4 * 40)
    assert found[("dsfl", 0.95)].round == 3
    assert found[("dsfl", 0.99)].round == 5
    table = format_targets(mean_curves(runs))
    assert "| 95 % (76.00 %) | scarlet+sliding | 4 |" in table


def test_the_verdict_reads_rounds_bytes_and_final_accuracy():
    runs = [
        _run("dsfl", DSFL, wire=100),
        _run("dsfl+codec", DSFL, wire=10),
        # same rounds, 4 of 10 bytes per round, final 0.796 (0.4 points below)
        _run("scarlet+sliding", [0.50, 0.70, 0.77, 0.79, 0.796], wire=4),
    ]
    (v,) = acceptance(runs)
    assert v.rounds == (3, 3) and v.rounds_met
    assert v.wire_ratio == pytest.approx(0.4) and v.bytes_met
    assert v.accuracy_met and v.met
    assert "All goals met at 1 of 1 alphas." in format_acceptance([v])


@pytest.mark.parametrize(
    ("accs", "wire", "failed"),
    [
        ([0.50, 0.70, 0.75, 0.77, 0.80], 4, "rounds"),  # one round later
        ([0.50, 0.70, 0.77, 0.79, 0.80], 6, "bytes"),  # 0.6 of the bytes
        ([0.50, 0.70, 0.77, 0.79, 0.794], 4, "accuracy"),  # 0.6 points below
        ([0.50, 0.60, 0.70, 0.72, 0.74], 4, "rounds"),  # never reached
    ],
)
def test_each_goal_can_fail_on_its_own(accs, wire, failed):
    runs = [
        _run("dsfl", DSFL, wire=100),
        _run("dsfl+codec", DSFL, wire=10),
        _run("scarlet+sliding", accs, wire=wire),
    ]
    (v,) = acceptance(runs)
    flags = {"rounds": v.rounds_met, "bytes": v.bytes_met, "accuracy": v.accuracy_met}
    assert not flags[failed] and not v.met
    assert "**no**" in format_acceptance([v])


def test_an_alpha_without_the_three_methods_has_no_verdict():
    assert acceptance([_run("dsfl", DSFL, wire=100), _run("dsfl+codec", DSFL, wire=10)]) == []
    assert "no alpha has" in format_acceptance([])


def test_compare_finds_the_first_round_and_the_wire_bytes_up_to_it():
    results = RunResults(config={})
    results.rounds = [_record(t, a, 10) for t, a in enumerate([0.2, 0.5, 0.6, 0.55])]
    hit = crossing(results, 0.55)
    assert (hit.round, hit.wire_bytes) == (3, 30)
    assert crossing(results, 0.9).round is None
