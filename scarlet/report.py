"""``scarlet report``: the figures a person looks at instead of reading results files.

Given one or more results files (written by ``scarlet simulate`` or ``scarlet up``), it
writes three PNGs into a folder::

    paths = write_report([Path("runs/scarlet.json"), Path("runs/dsfl.json")], Path("report"))

* ``accuracy_vs_bytes.png``: server accuracy against the cumulative bytes on the wire,
  one line per run, labelled from its configuration (algorithm and codecs);
* ``bytes_per_round.png``: per run, the wire bytes of every round, uplink and downlink
  stacked, with the DS-FL float32 baseline of the same round as a line;
* ``accuracy_vs_rounds.png``: server accuracy against rounds completed (rounds are
  wall-clock time), one line per run.

Matplotlib draws through its Agg backend on figures that never touch ``pyplot``, so no
display is needed and nothing global is changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from shared.errors import DataError
from shared.results import RoundRecord

__all__ = [
    "ACCURACY_FILE",
    "BYTES_FILE",
    "ROUNDS_FILE",
    "ReportRun",
    "byte_unit",
    "load_run",
    "write_report",
]

ACCURACY_FILE = "accuracy_vs_bytes.png"
BYTES_FILE = "bytes_per_round.png"
ROUNDS_FILE = "accuracy_vs_rounds.png"

_UP_COLOR, _DOWN_COLOR, _BASELINE_COLOR = "#4C72B0", "#DD8452", "#333333"


@dataclass(frozen=True)
class ReportRun:
    """One results file, ready to plot."""

    path: Path
    label: str
    rounds: list[RoundRecord]

    @property
    def cumulative_wire(self) -> list[int]:
        """Wire bytes (up + down) summed over the rounds so far, after each round."""
        total, out = 0, []
        for r in self.rounds:
            total += r.wire_bytes_up + r.wire_bytes_down
            out.append(total)
        return out


def load_run(path: Path) -> ReportRun:
    """Read a results file and label it from its configuration.

    Raises:
        DataError: the file cannot be read, is not a results file, or has no rounds.
    """
    try:
        doc = json.loads(path.read_text())
        config = doc["config"]
        rounds = [RoundRecord.from_json(row) for row in doc["rounds"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"report: {path} is not a readable results file: {e}") from None
    if not rounds:
        raise DataError(f"report: {path} holds no rounds")
    return ReportRun(path, run_label(config), rounds)


def run_label(config: dict[str, object]) -> str:
    """``algorithm, codec`` (``up/down`` codecs when they differ), e.g. ``scarlet, q8+zstd``."""
    algorithm = str(config.get("algorithm", "?"))
    up = str(config.get("uplink_codec", "?"))
    down = str(config.get("downlink_codec", "?"))
    codec = up if up == down else f"{up} up / {down} down"
    return f"{algorithm}, {codec}"


def byte_unit(largest: float) -> tuple[float, str]:
    """The binary unit that keeps ``largest`` between 1 and 1024: (divisor, name)."""
    for power, name in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if largest >= 1024**power:
            return float(1024**power), name
    return 1.0, "B"


def write_report(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    width_px: int = 1200,
    height_px: int = 700,
    dpi: int = 100,
) -> list[Path]:
    """Write the report's PNGs into ``out_dir`` (created when missing).

    Args:
        paths: results files, one line or panel each, in this order.
        out_dir: the folder for the PNGs.
        width_px: width of every image in pixels.
        height_px: height of every image in pixels.
        dpi: dots per inch (font sizes are in points, so this scales the text).

    Returns:
        The paths written: :data:`ACCURACY_FILE`, :data:`BYTES_FILE`, :data:`ROUNDS_FILE`.

    Raises:
        DataError: a results file cannot be read (see :func:`load_run`).
        ValueError: no results files, or a non-positive size.
    """
    if not paths:
        raise ValueError("report: give at least one results file")
    if width_px <= 0 or height_px <= 0 or dpi <= 0:
        raise ValueError("report: width, height and dpi must be positive")
    runs = _unique_labels([load_run(Path(p)) for p in paths])
    out_dir.mkdir(parents=True, exist_ok=True)
    size = (width_px / dpi, height_px / dpi)
    written = []
    for name, draw in (
        (ACCURACY_FILE, _accuracy_vs_bytes),
        (BYTES_FILE, _bytes_per_round),
        (ROUNDS_FILE, _accuracy_vs_rounds),
    ):
        fig = Figure(figsize=size, dpi=dpi, layout="constrained")
        draw(fig, runs)
        path = out_dir / name
        fig.savefig(path, dpi=dpi, format="png")
        written.append(path)
    return written


def _unique_labels(runs: list[ReportRun]) -> list[ReportRun]:
    """Add the file name to labels that two runs share."""
    labels = [r.label for r in runs]
    return [
        ReportRun(r.path, f"{r.label} ({r.path.stem})", r.rounds)
        if labels.count(r.label) > 1
        else r
        for r in runs
    ]


def _accuracy_vs_bytes(fig: Figure, runs: list[ReportRun]) -> None:
    ax = fig.add_subplot()
    largest = max(max(r.cumulative_wire) for r in runs)
    div, unit = byte_unit(largest)
    for run in runs:
        xs = [b / div for b in run.cumulative_wire]
        ys = [100 * r.server_accuracy for r in run.rounds]
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, linewidth=2, label=run.label)
        final = run.rounds[-1].server_accuracy
        if not math.isnan(final):
            ax.annotate(
                f"{100 * final:.1f}%",
                (xs[-1], ys[-1]),
                textcoords="offset points",
                xytext=(6, 0),
                va="center",
                fontsize=9,
                color=line.get_color(),
            )
    ax.set_title("Server accuracy vs cumulative bytes on the wire", fontsize=14)
    ax.set_xlabel(f"cumulative bytes on the wire, uplink + downlink ({unit})", fontsize=11)
    ax.set_ylabel("server accuracy on the test split (%)", fontsize=11)
    ax.set_xlim(0, largest / div * 1.1)  # room for the final accuracy labels
    ax.grid(True, alpha=0.3)
    ax.legend(title="run (algorithm, codec)", loc="lower right", fontsize=10)


def _accuracy_vs_rounds(fig: Figure, runs: list[ReportRun]) -> None:
    # rounds are wall-clock time: a method that saves bytes but takes more rounds shows here
    ax = fig.add_subplot()
    for run in runs:
        xs = [r.round + 1 for r in run.rounds]
        ys = [100 * r.server_accuracy for r in run.rounds]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=2, label=run.label)
    ax.set_title("Server accuracy vs rounds", fontsize=14)
    ax.set_xlabel("rounds completed", fontsize=11)
    ax.set_ylabel("server accuracy on the test split (%)", fontsize=11)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(title="run (algorithm, codec)", loc="lower right", fontsize=10)


def _bytes_per_round(fig: Figure, runs: list[ReportRun]) -> None:
    cols = 1 if len(runs) <= 2 else 2
    rows = math.ceil(len(runs) / cols)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    largest = max(
        max(
            max(r.wire_bytes_up + r.wire_bytes_down, r.baseline_bytes_up + r.baseline_bytes_down)
            for r in run.rounds
        )
        for run in runs
    )
    div, unit = byte_unit(largest)
    for i, run in enumerate(runs):
        _bytes_panel(axes[i // cols][i % cols], run, div, unit)
    for j in range(len(runs), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    axes[0][0].set_ylim(0, largest / div * 1.1)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=10)
    fig.suptitle("Bytes per round on the wire vs the DS-FL float32 baseline", fontsize=14)


def _bytes_panel(ax: Axes, run: ReportRun, div: float, unit: str) -> None:
    x = [r.round for r in run.rounds]
    up = [r.wire_bytes_up / div for r in run.rounds]
    down = [r.wire_bytes_down / div for r in run.rounds]
    base = [(r.baseline_bytes_up + r.baseline_bytes_down) / div for r in run.rounds]
    ax.bar(x, up, width=0.7, color=_UP_COLOR, label="uplink (uploads)")
    ax.bar(x, down, width=0.7, bottom=up, color=_DOWN_COLOR, label="downlink (tasks)")
    # one flat segment across each round's bar: the baseline of that very round
    edges = [x[0] - 0.5, *((a + b) / 2 for a, b in zip(x, x[1:], strict=False)), x[-1] + 0.5]
    ax.stairs(
        base,
        edges,
        baseline=None,
        color=_BASELINE_COLOR,
        linestyle="--",
        linewidth=1.5,
        label="DS-FL float32 baseline",
    )
    total = sum(r.wire_bytes_up + r.wire_bytes_down for r in run.rounds)
    baseline = sum(r.baseline_bytes_up + r.baseline_bytes_down for r in run.rounds)
    saved = f", {1 - total / baseline:.0%} below the baseline" if baseline else ""
    ax.set_title(f"{run.label}: {_human(total)} in {len(x)} rounds{saved}", fontsize=11)
    ax.set_xlabel("round", fontsize=10)
    ax.set_ylabel(f"bytes per round ({unit})", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, axis="y", alpha=0.3)


def _human(n: float) -> str:
    div, unit = byte_unit(n)
    return f"{n / div:.1f} {unit}" if unit != "B" else f"{int(n)} B"
