"""Per-round records and the machine-readable results file of a federation run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["RoundRecord", "RunResults", "format_round_line"]


@dataclass
class RoundRecord:
    """Everything measured in one round."""

    round: int
    server_accuracy: float
    client_accuracy: float  # mean over the clients that evaluated (NaN if none did)
    clients: int
    requested: int
    reused: int
    labels_up: int
    labels_down: int
    wire_bytes_up: int
    wire_bytes_down: int
    paper_bytes_up: int
    paper_bytes_down: int
    baseline_bytes_up: int
    baseline_bytes_down: int
    uploads: dict[str, int]
    cache_version: int
    seconds: float
    phase_seconds: dict[str, float] = field(default_factory=dict)
    rejected_bytes_up: int = 0  # bodies received but not aggregated; not in wire_bytes_up
    server_top5: float = math.nan  # top-5 accuracy (NaN in results written before it)

    @classmethod
    def from_json(cls, row: dict[str, object]) -> RoundRecord:
        """Inverse of the JSON form (``null`` accuracies become NaN; extra keys ignored)."""
        fields = {f for f in cls.__dataclass_fields__}
        values = {k: (math.nan if v is None else v) for k, v in row.items() if k in fields}
        return cls(**values)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready row (NaN as null) with the cache hit ratio added."""
        row = asdict(self)
        row["cache_hit_ratio"] = self.cache_hit_ratio
        out = _nan_to_none(row)
        assert isinstance(out, dict)
        return out

    @property
    def cache_hit_ratio(self) -> float:
        """Share of the round's drawn public samples served from the cache."""
        drawn = self.requested + self.reused
        return self.reused / drawn if drawn else 0.0


@dataclass
class RunResults:
    """A whole run: configuration, rounds and totals."""

    config: dict[str, object]
    rounds: list[RoundRecord] = field(default_factory=list)
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, float | int]:
        """Totals and final/best accuracies."""
        r = self.rounds
        accs = [x.server_accuracy for x in r]
        clients = [x.client_accuracy for x in r if not math.isnan(x.client_accuracy)]
        total = {
            key: sum(getattr(x, key) for x in r)
            for key in (
                "labels_up",
                "labels_down",
                "wire_bytes_up",
                "wire_bytes_down",
                "paper_bytes_up",
                "paper_bytes_down",
                "baseline_bytes_up",
                "baseline_bytes_down",
            )
        }
        baseline = total["baseline_bytes_up"] + total["baseline_bytes_down"]
        paper = total["paper_bytes_up"] + total["paper_bytes_down"]
        wire = total["wire_bytes_up"] + total["wire_bytes_down"]
        return {
            "rounds": len(r),
            "final_server_accuracy": accs[-1] if accs else math.nan,
            "best_server_accuracy": max(accs) if accs else math.nan,
            "final_server_top5": r[-1].server_top5 if r else math.nan,
            "final_client_accuracy": clients[-1] if clients else math.nan,
            **total,
            "paper_bytes_total": paper,
            "wire_bytes_total": wire,
            "baseline_bytes_total": baseline,
            "saved_by_cache_bytes": baseline - paper,
            "saved_by_compression_bytes": paper - wire,
            "wall_seconds": self.wall_seconds,
        }

    def to_json(self) -> dict[str, object]:
        """A JSON-ready document (NaN written as null)."""
        rounds = [x.to_json() for x in self.rounds]
        doc = _nan_to_none({"config": self.config, "summary": self.summary(), "rounds": rounds})
        assert isinstance(doc, dict)
        return doc

    def write(self, path: str | Path) -> Path:
        """Write the results file (JSON), creating parent folders."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return out


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def format_round_line(rec: RoundRecord) -> str:
    """One human line per round, as the progress view prints it."""
    client = "  -  " if math.isnan(rec.client_accuracy) else f"{rec.client_accuracy:5.1%}"
    return (
        f"round {rec.round:>3}  server acc {rec.server_accuracy:6.2%}  client acc {client}  "
        f"labels up {rec.labels_up:>6} down {rec.labels_down:>6}  "
        f"wire up {_human(rec.wire_bytes_up)} down {_human(rec.wire_bytes_down)}  "
        f"paper {_human(rec.paper_bytes_up + rec.paper_bytes_down)}  "
        f"cache hit {rec.cache_hit_ratio:5.1%}  {rec.seconds:5.1f}s"
    )


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:7.1f} {unit}" if unit != "B" else f"{int(n):7d} B  "
        n /= 1024
    return str(n)
