"""``scarlet compare``: the configured federation against DS-FL with the same codec.

What a user decides on is how much communication reaches a given accuracy, and in how
many rounds. DS-FL with our codec is the fair baseline for a codec-carrying SCARLET (the
codec applies to DS-FL just as well), so the comparison runs both on the same split::

    rows = compare(config, out=Path("runs/compare"))

and prints one table: final and best server accuracy, then for 90, 95 and 99 % of DS-FL's
final accuracy the first round each run reaches it and the wire bytes spent by then, and
the run's total wire bytes. The results files and ``scarlet report``'s plots are written
to ``out``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.config import FederationConfig
from shared.results import RoundRecord, RunResults

__all__ = ["TARGETS", "Crossing", "baseline_config", "compare", "crossing", "format_comparison"]

TARGETS: tuple[float, ...] = (0.90, 0.95, 0.99)


def baseline_config(config: FederationConfig) -> FederationConfig:
    """DS-FL with the codecs, sizes and seed of ``config`` (validated: it must be a valid run)."""
    return FederationConfig(
        **{
            **config.model_dump(),
            "run_id": f"{config.run_id}-dsfl",
            "algorithm": "dsfl",
            "cache_policy": "fixed",
            "max_cache_duration": 0,
        }
    )


@dataclass(frozen=True)
class Crossing:
    """The first round (1-based) a run reaches ``target``, and its wire bytes by then."""

    target: float
    round: int | None
    wire_bytes: float


def crossing(results: RunResults, target: float) -> Crossing:
    """Where ``results``' server accuracy first reaches ``target`` (round None: never)."""
    spent = 0.0
    for i, record in enumerate(results.rounds):
        spent += record.wire_bytes_up + record.wire_bytes_down
        if record.server_accuracy >= target:
            return Crossing(target, i + 1, spent)
    return Crossing(target, None, math.nan)


def format_comparison(runs: Sequence[tuple[str, RunResults]]) -> str:
    """A Markdown table; the last run is the DS-FL reference whose final sets the targets."""
    reference = runs[-1][1]
    final = reference.summary()["final_server_accuracy"]
    targets = [share * final for share in TARGETS]
    hits = {name: [crossing(r, t) for t in targets] for name, r in runs}
    ref_hits = hits[runs[-1][0]]
    header = ["run", "final / best server acc"]
    header += [
        f"{100 * s:.0f} % ({100 * t:.1f} %): round, wire"
        for s, t in zip(TARGETS, targets, strict=True)
    ]
    header += ["wire total"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, results in runs:
        s = results.summary()
        cells = [name, f"{s['final_server_accuracy']:.2%} / {s['best_server_accuracy']:.2%}"]
        for hit, ref in zip(hits[name], ref_hits, strict=True):
            if hit.round is None:
                cells.append("not reached")
                continue
            ratio = "" if not ref.round else f" ({hit.wire_bytes / ref.wire_bytes:.2f}x)"
            cells.append(f"{hit.round}, {hit.wire_bytes / 2**10:,.0f} KiB{ratio}")
        total = s["wire_bytes_total"]
        ref_total = reference.summary()["wire_bytes_total"]
        cells.append(f"{total / 2**10:,.0f} KiB ({total / ref_total:.2f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(
    config: FederationConfig,
    out: Path,
    on_round: Callable[[str, RoundRecord], None] | None = None,
) -> tuple[list[tuple[str, RunResults]], list[Path]]:
    """Run ``config`` and DS-FL with the same codec on one split; write results and plots.

    Returns:
        The (name, results) pairs, ours first, and the files written.

    Raises:
        ValueError: when ``config`` is DS-FL itself (there would be nothing to compare).
    """
    if config.algorithm == "dsfl":
        raise ValueError("compare: the configuration is DS-FL already; compare needs another one")
    from scarlet.report import write_report  # matplotlib only once the runs are done
    from scarlet.simulate import EmbeddedFederation, prepare_data

    data = prepare_data(config)  # the split depends on sizes, alpha and seed: shared
    runs: list[tuple[str, RunResults]] = []
    written: list[Path] = []
    for cfg in (config, baseline_config(config)):
        name = _name(cfg)
        results = EmbeddedFederation(cfg, data).run(
            functools.partial(_report_round, on_round, name)
        )
        written.append(results.write(out / f"{cfg.run_id}.json"))
        runs.append((name, results))
    written += write_report(written[:2], out)  # accuracy vs bytes, bytes, vs rounds
    return runs, written


def _report_round(
    on_round: Callable[[str, RoundRecord], None] | None, name: str, record: RoundRecord
) -> None:
    if on_round is not None:
        on_round(name, record)


def _name(config: FederationConfig) -> str:
    codec = (
        config.uplink_codec
        if config.uplink_codec == config.downlink_codec
        else f"{config.uplink_codec} up, {config.downlink_codec} down"
    )
    if config.algorithm == "scarlet":
        return f"scarlet ({config.cache_policy} cache), {codec}"
    return f"{config.algorithm}, {codec}"
