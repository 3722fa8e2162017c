"""Serialization of :class:`AggregatorCore` so that a restarted aggregator resumes.

The blob holds everything but the global cache entries and the accepted uploads, which
the state store keeps on their own (written in the same transaction as the blob at each
round commit, and per upload as they arrive). Arrays travel as raw little-endian bytes;
nothing here executes code on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from shared.arrays import IndexArray, LabelArray
from shared.cache_policy import CacheCommit, RequestPlan
from shared.errors import DecodeError, StateError
from shared.protocol.messages import DistillTargets
from shared.protocol.plain import from_plain, to_plain
from shared.rounds.aggregator import AggregatorCore, RoundPhase
from shared.rounds.mirrors import SparseClientMirrors

__all__ = ["dump_aggregator", "restore_aggregator"]

_VERSION = 3  # 2: fields (de)serialised from _CoreState's annotations; 3: sparse mirrors


@dataclass(frozen=True, slots=True)
class _CoreState:
    """The state machine's fields as stored (the cache entries and uploads are not)."""

    v: int
    run: str
    round: int
    phase: RoundPhase
    clients: tuple[int, ...]
    plan: RequestPlan | None
    previous: DistillTargets | None
    commit: CacheCommit | None
    targets_digest: str
    cache_version: int
    mirrors: bytes | None  # SparseClientMirrors.to_bytes(): the entries clients hold
    extra: dict[str, Any]
    # COMET's plain means of the last closed round (absent from blobs written before it)
    server_targets: LabelArray | None = None


def dump_aggregator(core: AggregatorCore, extra: Mapping[str, object] | None = None) -> bytes:
    """Serialize the state machine (without cache entries and uploads) plus ``extra``.

    ``extra`` carries the service's own fields (server model weights, round progress);
    its values must be msgpack-ready (see :func:`~shared.protocol.plain.to_plain`).
    """
    mirrors = core.mirrors.to_bytes() if core.mirrors is not None else None
    state = _CoreState(
        v=_VERSION,
        run=core.config.run_id,
        round=core.round,
        phase=core.phase,
        clients=core.clients,
        plan=core.plan,
        previous=core.downlink_targets,
        commit=core.last_commit,
        targets_digest=core.downlink_digest,
        cache_version=core.cache_version,
        mirrors=mirrors,
        extra=dict(extra or {}),
        server_targets=core.server_targets,
    )
    packed = msgpack.packb(to_plain(state), use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def restore_aggregator(
    core: AggregatorCore,
    blob: bytes,
    cache_labels: LabelArray | None,
    cache_written: IndexArray | None,
    cache_version: int,
) -> dict[str, Any]:
    """Load ``blob`` into a freshly built ``core``; returns the ``extra`` map.

    Args:
        core: a new :class:`AggregatorCore` built from the same configuration.
        blob: what :func:`dump_aggregator` returned.
        cache_labels: (|P|, C) global cache labels from the store (None without a cache).
        cache_written: (|P|,) written rounds from the store.
        cache_version: the store's cache version.

    Raises:
        StateError: a blob of another run or version, a corrupt one, or a cache version
            that disagrees.
    """
    state = _load(blob)
    if state.run != core.config.run_id:
        raise StateError(f"aggregator state belongs to run {state.run!r}")
    if core.cache is not None:
        if cache_labels is None or cache_written is None:
            raise StateError("aggregator state: the cache entries are missing")
        if cache_version != state.cache_version:
            raise StateError(
                f"aggregator state: cache version {cache_version} in the store, "
                f"{state.cache_version} in the aggregator state"
            )
        core.cache.labels = cache_labels.copy()
        core.cache.written = cache_written.copy()
        core.cache.version = cache_version
    core.round = state.round
    core.phase = state.phase
    core.clients = state.clients
    core.plan = state.plan
    core.downlink_targets = state.previous
    core.last_commit = state.commit
    core.downlink_digest = state.targets_digest
    core.server_targets = state.server_targets
    if core.mirrors is not None and state.mirrors is not None:
        mirrors = core.mirrors
        core.mirrors = SparseClientMirrors.from_bytes(
            state.mirrors, mirrors.num_clients, mirrors.public_size
        )
    core.uploads = {}
    return state.extra


def _load(blob: bytes) -> _CoreState:
    try:
        doc = msgpack.unpackb(blob, raw=False)
    except Exception as e:  # msgpack raises several unrelated exception types
        raise StateError(f"aggregator state: not valid msgpack ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
        raise StateError("aggregator state: unknown format version")
    try:
        return from_plain(_CoreState, doc, "aggregator state")
    except DecodeError as e:
        raise StateError(str(e)) from None
