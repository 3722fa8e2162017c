"""Communication accounting, two ways side by side (PAPER.md "Decisions", §4).

* **paper**: tensor bytes as the official code counts them: float32 soft-label entries
  4 B, int64 indices and signals 8 B; uplink and downlink; downlink once per client.
* **wire**: the real size of every encoded message body.
* **baseline**: what DS-FL with float32 would have sent in the same round (same sampled
  clients, same public draw), in the paper's accounting.

So ``baseline - paper`` is what the cache saved and ``paper - wire`` what the codec saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.protocol.messages import SoftLabelUpload, TrainTask

__all__ = [
    "ByteLedger",
    "Traffic",
    "dsfl_task_bytes",
    "dsfl_upload_bytes",
    "paper_task_bytes",
    "paper_upload_bytes",
]

_F32 = 4
_I64 = 8


def paper_task_bytes(task: TrainTask, num_classes: int, *, full_participation: bool = False) -> int:
    """Tensor bytes of a downlink task under the paper's accounting.

    COMET's centroids (K_c rows per index) count as the authors' pipeline counts them:
    divided by K_c when every client is sampled (``full_participation``: the server could
    then pick each client's centroid itself, since a client's prediction before
    distilling is its last upload), all K_c rows otherwise (DECISIONS §34).
    """
    total = _I64 * task.request_indices.size
    if task.targets is not None:
        t = task.targets
        rows = t.fresh_labels.shape[0]
        if full_participation:
            rows //= t.clusters  # exact: a centroid block has indices x clusters rows
        total += _F32 * num_classes * rows + _I64 * t.indices.size
        if t.signals is not None:
            total += _I64 * t.signals.size
    if task.catch_up is not None:
        c = task.catch_up
        total += (_F32 * num_classes + _I64) * c.update_indices.size
        total += _I64 * c.clear_indices.size
    return total


def paper_upload_bytes(upload: SoftLabelUpload, num_classes: int, *, hard: bool = False) -> int:
    """Tensor bytes of an upload under the paper's accounting.

    With ``hard`` (CFD) a label is one int64 class index, as the official code counts it.
    """
    per_label = _I64 if hard else _F32 * num_classes
    return (per_label + _I64) * upload.indices.size


def dsfl_task_bytes(previous: int, requested: int, num_classes: int) -> int:
    """DS-FL float32 downlink for one client: labels + indices of t-1, indices of t."""
    return (_F32 * num_classes + _I64) * previous + _I64 * requested


def dsfl_upload_bytes(requested: int, num_classes: int) -> int:
    """DS-FL float32 uplink for one client: labels and indices of every drawn sample."""
    return (_F32 * num_classes + _I64) * requested


@dataclass
class Traffic:
    """Byte and message counts of one direction."""

    messages: int = 0
    wire: int = 0
    paper: int = 0
    baseline: int = 0
    labels: int = 0  # soft-label rows carried
    rejected_wire: int = 0  # bodies received but not aggregated (not part of wire)

    def add(self, *, wire: int, paper: int, baseline: int, labels: int) -> None:
        """Count one message."""
        self.messages += 1
        self.wire += wire
        self.paper += paper
        self.baseline += baseline
        self.labels += labels


@dataclass
class ByteLedger:
    """Per-round traffic, uplink and downlink."""

    up: Traffic = field(default_factory=Traffic)
    down: Traffic = field(default_factory=Traffic)

    def add_task(
        self,
        task: TrainTask,
        wire: int,
        num_classes: int,
        dsfl_previous: int,
        dsfl_requested: int,
        *,
        full_participation: bool = False,
    ) -> None:
        """Count one downlink task whose encoded body was ``wire`` bytes.

        ``full_participation``: every client is sampled (see :func:`paper_task_bytes`).
        """
        labels = 0
        if task.targets is not None:
            labels += task.targets.fresh_labels.shape[0]
        if task.catch_up is not None:
            labels += task.catch_up.update_indices.size
        self.down.add(
            wire=wire,
            paper=paper_task_bytes(task, num_classes, full_participation=full_participation),
            baseline=dsfl_task_bytes(dsfl_previous, dsfl_requested, num_classes),
            labels=labels,
        )

    def add_upload(
        self,
        upload: SoftLabelUpload,
        wire: int,
        num_classes: int,
        dsfl_requested: int,
        *,
        hard: bool = False,
    ) -> None:
        """Count one accepted uplink message whose encoded body was ``wire`` bytes.

        With ``hard`` (CFD) the paper accounting counts int64 hard labels.
        """
        self.up.add(
            wire=wire,
            paper=paper_upload_bytes(upload, num_classes, hard=hard),
            baseline=dsfl_upload_bytes(dsfl_requested, num_classes),
            labels=upload.indices.size,
        )

    def add_unaccepted_upload(self, wire: int) -> None:
        """Count a body that reached the aggregator but was not aggregated.

        Duplicates, late, forged and invalid bodies crossed the wire but carried nothing
        the federation used: they are counted apart, in ``rejected_wire``, so that a flood
        of junk cannot inflate the accepted wire bytes (the codec's saving) of a round.
        """
        self.up.rejected_wire += wire
