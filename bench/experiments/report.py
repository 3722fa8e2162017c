"""Tables and plots of a grid's results folder.

``write_report(folder)`` reads every ``folder/runs/*.json`` written by
:mod:`bench.experiments.grid` and writes

* ``folder/results.md``: one Markdown table per alpha, one row per method, means (and
  standard deviations of accuracies) over the seeds;
* ``folder/accuracy_vs_bytes_alpha-<a>.png``: server accuracy against rounds and against
  cumulative bytes (paper accounting and wire), one line per method, mean over seeds.

Cells: accuracies in %; bytes are totals over the run, uplink and downlink separately,
downlink counted once per receiving client. "vs DS-FL" divides a run's total (up + down)
by the DS-FL f32 run's total on the same (alpha, seed), then averages over seeds.
``centralized`` and ``individual`` exchange no soft labels: their traffic cells read
"n/a". "—" marks a quantity a run did not measure (client accuracy with
``client_eval_every = 0``, or a ratio without a DS-FL run to compare with).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.experiments.grid import BASELINE_METHODS, METHODS, alpha_label
from bench.experiments.targets import (
    acceptance,
    format_acceptance,
    format_targets,
    mean_curve,
    mean_curves,
)
from shared.results import RoundRecord

__all__ = [
    "COLUMNS",
    "LoadedRun",
    "MethodRow",
    "format_table",
    "load_runs",
    "method_rows",
    "write_report",
]

NA = "n/a"  # the method has no federated traffic
MISSING = "—"  # the run did not measure it

COLUMNS: tuple[str, ...] = (
    "method",
    "seeds",
    "final server acc (%)",
    "best server acc (%)",
    "client acc (%)",
    "up wire",
    "down wire",
    "up paper",
    "down paper",
    "vs DS-FL (paper)",
    "vs DS-FL (wire)",
    "wall (s/run)",
)

_UP_DOWN = ("wire_bytes_up", "wire_bytes_down", "paper_bytes_up", "paper_bytes_down")


@dataclass
class LoadedRun:
    """One results file of the grid."""

    method: str
    alpha: float
    seed: int
    config: dict[str, object]
    rounds: list[RoundRecord]
    wall_seconds: float

    def total(self, key: str) -> int:
        """Sum of a per-round counter (e.g. ``wire_bytes_up``) over the run."""
        return int(sum(getattr(r, key) for r in self.rounds))

    @property
    def paper_total(self) -> int:
        """Paper-accounting bytes, uplink + downlink."""
        return self.total("paper_bytes_up") + self.total("paper_bytes_down")

    @property
    def wire_total(self) -> int:
        """Wire bytes, uplink + downlink."""
        return self.total("wire_bytes_up") + self.total("wire_bytes_down")

    def cumulative(self, kind: str) -> list[float]:
        """Cumulative ``kind`` (``paper`` or ``wire``) bytes, up + down, after each round."""
        out, acc = [], 0.0
        for r in self.rounds:
            acc += getattr(r, f"{kind}_bytes_up") + getattr(r, f"{kind}_bytes_down")
            out.append(acc)
        return out

    @property
    def final_client_accuracy(self) -> float:
        """The last measured mean client accuracy (NaN when never measured)."""
        measured = [r.client_accuracy for r in self.rounds if not math.isnan(r.client_accuracy)]
        return measured[-1] if measured else math.nan


@dataclass
class MethodRow:
    """One method on one alpha, aggregated over seeds."""

    method: str
    seeds: int
    final_server: tuple[float, float]  # mean, std
    best_server: tuple[float, float]
    client: tuple[float, float]
    bytes: dict[str, float]  # mean over seeds of each of _UP_DOWN
    paper_ratio: float  # NaN when no DS-FL run to compare with
    wire_ratio: float
    wall_seconds: float

    @property
    def has_traffic(self) -> bool:
        """False for the reference points that exchange nothing."""
        return self.method not in BASELINE_METHODS


def load_runs(folder: str | Path) -> list[LoadedRun]:
    """Every ``folder/runs/*.json`` of the grid, sorted by alpha, method order and seed."""
    runs = []
    for path in sorted(Path(folder, "runs").glob("*.json")):
        doc = json.loads(path.read_text())
        exp = doc["experiment"]
        runs.append(
            LoadedRun(
                method=str(exp["method"]),
                alpha=float(exp["alpha"]),
                seed=int(exp["seed"]),
                config=doc["config"],
                rounds=[RoundRecord.from_json(r) for r in doc["rounds"]],
                wall_seconds=float(doc["summary"].get("wall_seconds") or 0.0),
            )
        )
    runs.sort(key=lambda r: (_alpha_order(r.alpha), _method_order(r.method), r.seed))
    return runs


def _alpha_order(alpha: float) -> float:
    return math.inf if alpha == 0 else alpha  # IID last


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), std


def method_rows(runs: Iterable[LoadedRun]) -> dict[float, list[MethodRow]]:
    """Aggregate runs per alpha and method (means over seeds); alphas in report order."""
    by_cell: dict[float, dict[str, list[LoadedRun]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_cell[run.alpha][run.method].append(run)
    out: dict[float, list[MethodRow]] = {}
    for alpha in sorted(by_cell, key=_alpha_order):
        methods = by_cell[alpha]
        dsfl = {r.seed: r for r in methods.get("dsfl", [])}
        rows = []
        for method in sorted(methods, key=_method_order):
            group = methods[method]
            paper_ratios = [
                r.paper_total / dsfl[r.seed].paper_total
                for r in group
                if r.seed in dsfl and dsfl[r.seed].paper_total
            ]
            wire_ratios = [
                r.wire_total / dsfl[r.seed].wire_total
                for r in group
                if r.seed in dsfl and dsfl[r.seed].wire_total
            ]
            rows.append(
                MethodRow(
                    method=method,
                    seeds=len(group),
                    final_server=_mean_std([r.rounds[-1].server_accuracy for r in group]),
                    best_server=_mean_std(
                        [max(x.server_accuracy for x in r.rounds) for r in group]
                    ),
                    client=_mean_std([r.final_client_accuracy for r in group]),
                    bytes={k: statistics.fmean(r.total(k) for r in group) for k in _UP_DOWN},
                    paper_ratio=statistics.fmean(paper_ratios) if paper_ratios else math.nan,
                    wire_ratio=statistics.fmean(wire_ratios) if wire_ratios else math.nan,
                    wall_seconds=statistics.fmean(r.wall_seconds for r in group),
                )
            )
        out[alpha] = rows
    return out


def format_accuracy(mean: float, std: float) -> str:
    """``"81.23 ± 0.45"`` (percent); the mean alone for one seed; "—" when unmeasured."""
    if math.isnan(mean):
        return MISSING
    if math.isnan(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def byte_unit(rows: Sequence[MethodRow]) -> tuple[str, int]:
    """MiB when some method sent at least 1 MiB in one direction, else KiB."""
    largest = max((v for r in rows for v in r.bytes.values()), default=0.0)
    return ("MiB", 2**20) if largest >= 2**20 else ("KiB", 2**10)


def format_table(rows: Sequence[MethodRow]) -> str:
    """A Markdown table of :data:`COLUMNS`, one line per row; every cell non-empty."""
    unit, scale = byte_unit(rows)
    header = [c if c not in _HEADER_BYTES else f"{c} ({unit})" for c in COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    for row in rows:
        if row.has_traffic:
            traffic = [f"{row.bytes[k] / scale:,.2f}" for k in _UP_DOWN]
            ratios = [_ratio(row.paper_ratio), _ratio(row.wire_ratio)]
        else:
            traffic, ratios = [NA] * len(_UP_DOWN), [NA, NA]
        cells = [
            row.method,
            str(row.seeds),
            format_accuracy(*row.final_server),
            format_accuracy(*row.best_server),
            format_accuracy(*row.client),
            *traffic,
            *ratios,
            f"{row.wall_seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_HEADER_BYTES = {"up wire", "down wire", "up paper", "down paper"}


def _ratio(value: float) -> str:
    return MISSING if math.isnan(value) else f"{value:.3f}"


def _describe(runs: Sequence[LoadedRun]) -> str:
    cfg = next((r.config for r in runs if r.method not in BASELINE_METHODS), runs[0].config)
    keys = (
        "dataset",
        "model",
        "clients",
        "samples_per_client",
        "test_per_client",
        "public_size",
        "public_per_round",
        "rounds",
        "local_epochs",
        "distill_epochs",
        "server_distill_epochs",
        "batch_size",
        "distill_batch_size",
        "lr",
        "distill_lr",
        "cache_duration",
        "beta",
        "temperature",
        "drift_threshold",
        "max_cache_duration",
        "sample_ratio",
    )
    setting = ", ".join(f"`{k}={cfg[k]}`" for k in keys if k in cfg)
    seeds = sorted({r.seed for r in runs})
    return f"Setting: {setting}; seeds {seeds}."


NOTES = """\
Columns: accuracies are means ± standard deviation over seeds (the mean alone for one
seed), in %: *final* is the last round, *best* the best round of the server model on the
full test split; *client* is the mean accuracy of the clients on their own test shards in
the last round. Bytes are run totals (mean over seeds), downlink counted once per
receiving client: *wire* is the size of every encoded message body, *paper* the
official code's tensor accounting (float32 soft-label entry 4 B, int64 index or signal
8 B; CFD's hard labels 8 B; COMET's K_c centroids per sample divided by K_c when every
client is sampled, as the authors count them, while the wire carries all K_c). *vs DS-FL*
is the run's total (up + down) over the DS-FL f32 run's total on the same alpha and seed,
averaged over seeds.
`centralized` and `individual` exchange no soft labels: their traffic cells are "n/a"
(centralized pools the raw private data once, which is not a comparable protocol cost;
individual sends nothing). For `individual` the server columns hold the mean accuracy of
the clients' own models on the full test split (there is no server).
"""


def write_report(folder: str | Path) -> Path:
    """Write ``results.md`` and one PNG per alpha into ``folder``; return the Markdown path.

    Raises:
        FileNotFoundError: when ``folder/runs`` holds no results.
    """
    folder = Path(folder)
    runs = load_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no results in {folder / 'runs'}")
    rows = method_rows(runs)
    parts = ["# Experiment grid: results", "", _describe(runs), "", NOTES]
    for alpha, alpha_rows in rows.items():
        title = "IID" if alpha == 0 else f"Dirichlet α = {alpha_label(alpha)}"
        alpha_runs = [r for r in runs if r.alpha == alpha]
        png = plot_alpha(alpha_runs, folder, alpha)
        parts += [f"## {title}", "", format_table(alpha_rows), ""]
        target = format_targets(mean_curves(alpha_runs))
        if target:
            parts += [target, ""]
        parts += [f"![{title}]({png.name})", ""]
    verdicts = acceptance(runs)
    if verdicts:
        parts += ["## Acceptance (issue 13)", "", format_acceptance(verdicts), ""]
    out = folder / "results.md"
    out.write_text("\n".join(parts))
    return out


def plot_alpha(runs: Sequence[LoadedRun], folder: Path, alpha: float) -> Path:
    """Server accuracy vs round, vs cumulative paper bytes and vs wire bytes (one PNG).

    Baselines (no traffic) appear as curves in the per-round panel and as horizontal lines
    at their final accuracy in the two byte panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    by_method: dict[str, list[LoadedRun]] = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4), layout="constrained")
    title = "IID" if alpha == 0 else f"Dirichlet α = {alpha_label(alpha)}"
    cmap = matplotlib.colormaps["tab10"]
    for method in sorted(by_method, key=_method_order):
        group = by_method[method]
        color = cmap(_method_order(method) % 10)
        acc = [100 * a for a in mean_curve([[r.server_accuracy for r in g.rounds] for g in group])]
        rounds = list(range(1, len(acc) + 1))
        label = f"{method} (n={len(group)})"
        if method in BASELINE_METHODS:
            style = "--" if method == "centralized" else ":"
            axes[0].plot(rounds, acc, style, color=color, label=label)
            for ax in axes[1:]:
                ax.axhline(acc[-1], linestyle=style, color=color)
            continue
        axes[0].plot(rounds, acc, "-", color=color, label=label, lw=1.8)
        for ax, kind in zip(axes[1:], ("paper", "wire"), strict=True):
            cum = mean_curve([g.cumulative(kind) for g in group])
            n = min(len(cum), len(acc))
            ax.plot([b / 2**20 for b in cum[:n]], acc[:n], "-", color=color, label=label, lw=1.8)
            ax.plot(cum[n - 1] / 2**20, acc[n - 1], "o", color=color, ms=5)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("cumulative bytes, paper accounting (MiB, log)")
    axes[2].set_xlabel("cumulative bytes on the wire (MiB, log)")
    for ax in axes:
        ax.set_ylabel("server accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1:]:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_tick))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_tick))
    axes[0].set_title(f"{title}: server accuracy per round")
    axes[1].set_title("accuracy vs communication (paper bytes)")
    axes[2].set_title("accuracy vs communication (wire bytes)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    out = folder / f"accuracy_vs_bytes_alpha-{alpha_label(alpha)}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _tick(value: float, _: object) -> str:
    return f"{value:g}"


def _minor_tick(value: float, _: object) -> str:
    # label the 2s and 5s of each decade, so that a range within one decade still reads
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0.0
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""
