"""Every message that crosses a process boundary, as frozen dataclasses. No I/O.

Directions use the paper's vocabulary: *downlink* is aggregator → worker, *uplink* is
worker → aggregator. Arrays are numpy (:mod:`shared.arrays`): int64 indices, rounds and
signals, float32 soft labels; shapes are in the field comments.
The wire encoding lives in :mod:`shared.protocol.codec`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.arrays import IndexArray, LabelArray

__all__ = [
    "MAX_CLUSTERS",
    "CatchUp",
    "DistillTargets",
    "SoftLabelUpload",
    "TrainTask",
]


MAX_CLUSTERS = 64
"""The most COMET centroids per public sample a task may carry (a decoding bound)."""


@dataclass(frozen=True, slots=True)
class DistillTargets:
    """Round t-1's global soft labels as sent to a client in round t.

    Under SCARLET only the non-CACHED rows travel; the client restores the rest from its
    replica. Under DS-FL ``signals`` is None and every row travels. Under COMET each index
    has ``clusters`` rows, its k-means centroids, one after the other (no signals).
    """

    round: int  # t-1: the round the labels were aggregated in
    indices: IndexArray  # (n,) int64: requested indices (ascending), then reused (ascending)
    signals: IndexArray | None  # (n,) int64 CacheSignal codes, or None without a cache
    # (n_fresh * clusters, C) float32: rows of the non-CACHED entries, in order; under
    # COMET index i's centroids are rows i*clusters .. (i+1)*clusters - 1
    fresh_labels: LabelArray
    clusters: int = 1  # rows per index: 1, or COMET's K_c (then signals is None)


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Replica repair for a client that missed rounds (partial participation)."""

    update_indices: IndexArray  # (u,) int64
    update_labels: LabelArray  # (u, C) float32
    update_written: IndexArray  # (u,) int64: round each updated entry was written in
    clear_indices: IndexArray  # (v,) int64


@dataclass(frozen=True, slots=True)
class TrainTask:
    """Downlink: what one sampled client does in round t."""

    run_id: str
    round: int
    client_id: int
    request_indices: IndexArray  # (q,) int64 ascending: public samples to predict on
    targets: DistillTargets | None  # None in round 0
    catch_up: CatchUp | None  # None when the client is in step (or without a cache)
    cache_version: int  # global cache version after round t-1 was committed
    targets_digest: str = ""  # SHA-256 of the restored (n, C) targets; "" without a cache


@dataclass(frozen=True, slots=True)
class SoftLabelUpload:
    """Uplink: one client's predictions on the requested public samples of round t."""

    run_id: str
    round: int
    client_id: int
    indices: IndexArray  # (q,) int64 ascending, equal to the task's request_indices
    soft_labels: LabelArray  # (q, C) float32, rows on the simplex
    train_loss: float  # mean cross-entropy of the last local epoch
    client_accuracy: float  # accuracy on the client's own test shard, or NaN if not measured
