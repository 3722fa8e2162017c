"""Rounds-to-target and bytes-to-target, and the verdict of issue 13's acceptance.

A *target* is a share (90, 95, 99 %) of DS-FL's final server accuracy, DS-FL being the
f32 ``dsfl`` row, on the mean accuracy curve over seeds. For every federated method the
tables give the first round its mean curve reaches the target and the mean cumulative
wire and paper bytes spent by then. Wire bytes are compared with ``dsfl+codec`` (DS-FL
with the same codec as ours: the fair baseline for a codec-carrying method), paper bytes
with ``dsfl``.

The acceptance (issue 13) reads, per alpha: ours reaches 95 % of DS-FL's final in no
more rounds than DS-FL; with at most half the wire bytes DS-FL + codec spent to get there;
and ends within 0.5 points of DS-FL's final accuracy, or above.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bench.experiments.grid import BASELINE_METHODS, METHODS, alpha_label
from scarlet.compare import TARGETS
from shared.results import RoundRecord

__all__ = [
    "ACCEPTANCE_METHOD",
    "TARGETS",
    "CurveCrossing",
    "GridRun",
    "Verdict",
    "acceptance",
    "crossings",
    "format_acceptance",
    "format_targets",
    "mean_curve",
    "mean_curves",
]

ACCEPTANCE_METHOD = "scarlet+sliding"
REFERENCE, CODEC_REFERENCE = "dsfl", "dsfl+codec"
ACCEPTANCE_SHARE, BYTES_GOAL, ACCURACY_SLACK = 0.95, 0.5, 0.005


class GridRun(Protocol):
    """What a grid run offers here (:class:`bench.experiments.report.LoadedRun` is one)."""

    @property
    def method(self) -> str: ...

    @property
    def alpha(self) -> float: ...

    @property
    def rounds(self) -> Sequence[RoundRecord]: ...

    def cumulative(self, kind: str) -> list[float]: ...


@dataclass(frozen=True)
class Curves:
    """A method's mean curves over seeds: accuracy and cumulative bytes after each round."""

    accuracy: list[float]
    wire: list[float]
    paper: list[float]
    seeds: int

    @property
    def final(self) -> float:
        """The last round's mean accuracy."""
        return self.accuracy[-1]


@dataclass(frozen=True)
class CurveCrossing:
    """Where one method's mean curve first reaches one target (``round`` None: never)."""

    method: str
    share: float
    target: float
    round: int | None  # 1-based
    wire: float
    paper: float


def mean_curves(runs: Sequence[GridRun]) -> dict[str, Curves]:
    """Per federated method, the mean curves over its seeds (cut to the shortest run)."""
    by_method: dict[str, list[GridRun]] = defaultdict(list)
    for run in runs:
        if run.method not in BASELINE_METHODS:
            by_method[run.method].append(run)
    out = {}
    for method, group in by_method.items():
        acc = mean_curve([[r.server_accuracy for r in g.rounds] for g in group])
        wire = mean_curve([g.cumulative("wire") for g in group])
        paper = mean_curve([g.cumulative("paper") for g in group])
        out[method] = Curves(acc, wire, paper, len(group))
    return out


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """The mean over curves, round by round, cut to the shortest."""
    n = min(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves) for i in range(n)]


def crossings(curves: dict[str, Curves], shares: Sequence[float] = TARGETS) -> list[CurveCrossing]:
    """Every method's first crossing of every target (empty without a ``dsfl`` row)."""
    if REFERENCE not in curves:
        return []
    out = []
    for share in shares:
        target = share * curves[REFERENCE].final
        for method in sorted(curves, key=_order):
            c = curves[method]
            i = next((i for i, a in enumerate(c.accuracy) if a >= target), None)
            wire, paper = (math.nan, math.nan) if i is None else (c.wire[i], c.paper[i])
            hit = None if i is None else i + 1
            out.append(CurveCrossing(method, share, target, hit, wire, paper))
    return out


def _order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def format_targets(curves: dict[str, Curves]) -> str:
    """One Markdown table: per target, each method's round and bytes to reach it."""
    found = crossings(curves)
    if not found:
        return ""
    ref = {(x.method, x.share): x for x in found}
    lines = [
        "Rounds and bytes to reach a share of DS-FL's final accuracy (mean curves over "
        "seeds; wire bytes relative to DS-FL + codec's at its own crossing, paper bytes "
        "relative to DS-FL's):",
        "",
        "| target | method | first round | wire (MiB) | paper (MiB) | wire vs DS-FL+codec "
        "| paper vs DS-FL |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for x in found:
        label = f"{100 * x.share:.0f} % ({100 * x.target:.2f} %)"
        if x.round is None:
            lines.append(f"| {label} | {x.method} | not reached | — | — | — | — |")
            continue
        codec_ref = ref.get((CODEC_REFERENCE, x.share))
        paper_ref = ref[(REFERENCE, x.share)]
        wire_ratio = (
            x.wire / codec_ref.wire if codec_ref is not None and codec_ref.round else math.nan
        )
        lines.append(
            f"| {label} | {x.method} | {x.round} | {x.wire / 2**20:,.3f} | "
            f"{x.paper / 2**20:,.3f} | {_ratio(wire_ratio)} | {_ratio(x.paper / paper_ref.paper)} |"
        )
    return "\n".join(lines)


def _ratio(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


@dataclass(frozen=True)
class Verdict:
    """Issue 13's three goals at one alpha, with the numbers they were read from."""

    alpha: float
    seeds: int
    target: float
    rounds: tuple[int | None, int | None]  # (ours, DS-FL)
    wire: tuple[float, float]  # (ours, DS-FL + codec) at their own crossings
    final: tuple[float, float]  # (ours, DS-FL)

    @property
    def rounds_met(self) -> bool:
        """Ours reaches the target in no more rounds than DS-FL."""
        ours, dsfl = self.rounds
        return ours is not None and dsfl is not None and ours <= dsfl

    @property
    def wire_ratio(self) -> float:
        """Ours' wire bytes to the target over DS-FL + codec's."""
        ours, ref = self.wire
        return ours / ref if ref and not math.isnan(ours) else math.nan

    @property
    def bytes_met(self) -> bool:
        """At most half the wire bytes of DS-FL + the same codec."""
        return not math.isnan(self.wire_ratio) and self.wire_ratio <= BYTES_GOAL

    @property
    def accuracy_met(self) -> bool:
        """Final accuracy within 0.5 points of DS-FL's, or above."""
        ours, dsfl = self.final
        return ours >= dsfl - ACCURACY_SLACK

    @property
    def met(self) -> bool:
        """All three goals."""
        return self.rounds_met and self.bytes_met and self.accuracy_met


def acceptance(runs: Sequence[GridRun], ours: str = ACCEPTANCE_METHOD) -> list[Verdict]:
    """One verdict per alpha that has ``dsfl``, ``dsfl+codec`` and ``ours`` runs."""
    by_alpha: dict[float, list[GridRun]] = defaultdict(list)
    for run in runs:
        by_alpha[float(run.alpha)].append(run)
    out = []
    for alpha in sorted(by_alpha, key=lambda a: math.inf if a == 0 else a):
        curves = mean_curves(by_alpha[alpha])
        if not {REFERENCE, CODEC_REFERENCE, ours} <= curves.keys():
            continue
        hit = {
            x.method: x
            for x in crossings(curves, (ACCEPTANCE_SHARE,))
            if x.method in (REFERENCE, CODEC_REFERENCE, ours)
        }
        out.append(
            Verdict(
                alpha=alpha,
                seeds=min(curves[m].seeds for m in (REFERENCE, CODEC_REFERENCE, ours)),
                target=hit[REFERENCE].target,
                rounds=(hit[ours].round, hit[REFERENCE].round),
                wire=(hit[ours].wire, hit[CODEC_REFERENCE].wire),
                final=(curves[ours].final, curves[REFERENCE].final),
            )
        )
    return out


def format_acceptance(verdicts: Sequence[Verdict], ours: str = ACCEPTANCE_METHOD) -> str:
    """The acceptance table of issue 13, one line per alpha, and an overall line."""
    if not verdicts:
        return (
            f"acceptance: no alpha has {REFERENCE}, {CODEC_REFERENCE} and {ours} runs "
            "(run the grid with those methods)"
        )
    lines = [
        f"Acceptance (issue 13): {ours} against DS-FL and DS-FL + the same codec, mean "
        "curves over seeds, target = 95 % of DS-FL's final accuracy.",
        "",
        "| alpha | seeds | target (%) | rounds: ours / DS-FL | met | wire to target: ours / "
        "DS-FL+codec (MiB) | ratio (<= 0.5) | met | final (%): ours / DS-FL | met |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|---|",
    ]
    for v in verdicts:
        ours_round, ref_round = ("not reached" if r is None else str(r) for r in v.rounds)
        lines.append(
            f"| {'IID' if v.alpha == 0 else alpha_label(v.alpha)} | {v.seeds} | "
            f"{100 * v.target:.2f} | {ours_round} / {ref_round} | {_yes(v.rounds_met)} | "
            f"{v.wire[0] / 2**20:,.3f} / {v.wire[1] / 2**20:,.3f} | {_ratio(v.wire_ratio)} | "
            f"{_yes(v.bytes_met)} | {100 * v.final[0]:.2f} / {100 * v.final[1]:.2f} | "
            f"{_yes(v.accuracy_met)} |"
        )
    met = sum(v.met for v in verdicts)
    lines += ["", f"All goals met at {met} of {len(verdicts)} alphas."]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"
