"""The one table ``python -m bench.load`` prints: a row per measurement, with its goal."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Row", "render"]


@dataclass(frozen=True, slots=True)
class Row:
    """One measurement.

    Attributes:
        section: the section that measured it (``ingest``, ``memory``, ...).
        metric: what was measured, e.g. ``aggregator ingest / raw pika``.
        setting: the conditions, e.g. ``C=10, 5.4 KB bodies``.
        value: the measured value, formatted with its unit (``0.91``, ``87 MiB``).
        goal: the acceptance goal as text (``>= 0.80``), or ``""`` when only reported.
        ok: whether the goal is met; None when there is no goal.
    """

    section: str
    metric: str
    setting: str
    value: str
    goal: str = ""
    ok: bool | None = None


def render(rows: list[Row]) -> str:
    """``rows`` as a fixed-width text table (a header, a rule, one line a row)."""
    header = ("section", "metric", "setting", "value", "goal", "met")
    cells = [header] + [
        (
            r.section,
            r.metric,
            r.setting,
            r.value,
            r.goal,
            "" if r.ok is None else "yes" if r.ok else "NO",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
