"""The aggregator's checkpoint: state machine, round progress and server model, as one blob.

The blob is saved before tasks are published, after they are, at the round commit (in
the same store transaction as the cache update, see
:meth:`~shared.state.base.FederationStore.commit_round`) and when a round is recorded.
The global cache entries and the accepted uploads are not in it: the store keeps them
on their own, and :func:`restore_checkpoint` reads them back.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from services.aggregator.progress import RoundProgress
from shared.arrays import IndexArray, LabelArray
from shared.cache_policy import NEVER, CacheSignal
from shared.digests import EMPTY_DIGEST
from shared.errors import StateError
from shared.models.arrays import load_state_arrays, state_arrays
from shared.protocol.plain import from_plain, to_plain
from shared.protocol.tensors import decode_tensor_map, encode_tensor_map
from shared.rounds.aggregator import AggregatorCore
from shared.rounds.aggregator_state import dump_aggregator, restore_aggregator
from shared.state.base import CacheUpdate, FederationStore

__all__ = ["cache_update", "checkpoint_blob", "restore_checkpoint"]


def checkpoint_blob(core: AggregatorCore, progress: RoundProgress, server: nn.Module) -> bytes:
    """Everything a restarted aggregator needs besides the store's cache and uploads."""
    extra = {
        "progress": to_plain(progress),
        "server_model": encode_tensor_map(state_arrays(server)),
    }
    return dump_aggregator(core, extra)


def restore_checkpoint(
    blob: bytes,
    core: AggregatorCore,
    server: nn.Module,
    store: FederationStore,
) -> RoundProgress:
    """Load ``blob`` into a freshly built ``core`` and ``server``; returns the progress.

    The open round's recorded uploads are not in the blob: see
    :meth:`~services.aggregator.intake.UploadIntake.readmit_recorded`.

    Raises:
        StateError: a blob of another run or format, or one that disagrees with the store.
        DecodeError: a corrupt progress record.
    """
    labels = written = None
    version = store.cache_version()
    if core.cache is not None:
        labels, written = _dense_cache(store, core.config.public_size, core.num_classes)
    extra = restore_aggregator(core, blob, labels, written, version)
    load_state_arrays(server, decode_tensor_map(_bytes(extra["server_model"])))
    return from_plain(RoundProgress, extra["progress"], "progress")


def cache_update(core: AggregatorCore, store: FederationStore) -> CacheUpdate:
    """What the round just closed changes in the store's cache (empty without a cache)."""
    cache, commit = core.cache, core.last_commit
    empty = np.empty(0, dtype=np.int64)
    if cache is None or commit is None or commit.round != core.round - 1:
        labels = np.empty((0, core.num_classes), dtype=np.float32)
        return CacheUpdate(store.cache_version() + 1, EMPTY_DIGEST, empty, empty, labels, empty)
    newly = commit.signals == int(CacheSignal.NEWLY_CACHED)
    expired = commit.signals == int(CacheSignal.EXPIRED)
    set_idx = commit.indices[newly]
    return CacheUpdate(
        version=cache.version,
        digest=cache.digest(),
        set_indices=set_idx,
        set_written=cache.written[set_idx],
        set_labels=cache.labels[set_idx],
        clear_indices=commit.indices[expired & (commit.previous_written != NEVER)],
    )


def _dense_cache(
    store: FederationStore, public_size: int, num_classes: int
) -> tuple[LabelArray, IndexArray]:
    snap = store.cache_snapshot()
    labels = np.zeros((public_size, num_classes), dtype=np.float32)
    written = np.full(public_size, NEVER, dtype=np.int64)
    if snap.indices.size:
        labels[snap.indices] = snap.labels
        written[snap.indices] = snap.written
    return labels, written


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise StateError("aggregator state: the server model is not stored as bytes")
    return value
