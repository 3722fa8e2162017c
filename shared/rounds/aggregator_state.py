"""Serialization of :class:`AggregatorCore` so that a restarted aggregator resumes.

The blob holds everything but the global cache entries and the accepted uploads, which
the state store keeps on their own (written in the same transaction as the blob at each
round commit, and per upload as they arrive). Tensors travel as raw little-endian bytes;
nothing here executes code on load.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgpack
import torch
import zstandard
from torch import Tensor

from shared.cache_policy import CacheCommit, RequestPlan
from shared.errors import StateError
from shared.protocol.messages import DistillTargets
from shared.protocol.tensors import decode_tensor, encode_tensor
from shared.rounds.aggregator import AggregatorCore, RoundPhase

__all__ = ["dump_aggregator", "restore_aggregator"]

_VERSION = 1
_MAX = 2**40  # trusted local state: bounds only guard against corruption


def dump_aggregator(core: AggregatorCore, extra: Mapping[str, object] | None = None) -> bytes:
    """Serialize the state machine (without cache entries and uploads) plus ``extra``.

    ``extra`` carries the service's own fields (server model weights, stage flags); its
    values must be msgpack-able (use :func:`encode_tensor` for tensors).
    """
    plan = core.plan
    doc: dict[str, object] = {
        "v": _VERSION,
        "run": core.config.run_id,
        "round": core.round,
        "phase": core.phase.value,
        "clients": list(core.clients),
        "plan": None
        if plan is None
        else [encode_tensor(plan.requested), encode_tensor(plan.reused)],
        "previous": None if core.downlink_targets is None else _targets(core.downlink_targets),
        "commit": None if core.last_commit is None else _commit(core.last_commit),
        "targets_digest": core.downlink_digest,
        "cache_version": core.cache_version,
        "mirrors": None
        if core.mirrors is None
        else zstandard.ZstdCompressor(level=3).compress(
            core.mirrors.written.numpy().astype("<i8").tobytes()
        ),
        "extra": dict(extra or {}),
    }
    packed = msgpack.packb(doc, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def restore_aggregator(
    core: AggregatorCore,
    blob: bytes,
    cache_labels: Tensor | None,
    cache_written: Tensor | None,
    cache_version: int,
) -> dict[str, object]:
    """Load ``blob`` into a freshly built ``core``; returns the ``extra`` map.

    Args:
        core: a new :class:`AggregatorCore` built from the same configuration.
        blob: what :func:`dump_aggregator` returned.
        cache_labels: (|P|, C) global cache labels from the store (None without a cache).
        cache_written: (|P|,) written rounds from the store.
        cache_version: the store's cache version.

    Raises:
        StateError: a blob of another run or version, or a cache version that disagrees.
    """
    doc = msgpack.unpackb(blob, raw=False)
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
        raise StateError("aggregator state: unknown format version")
    if doc["run"] != core.config.run_id:
        raise StateError(f"aggregator state belongs to run {doc['run']!r}")
    if core.cache is not None:
        if cache_labels is None or cache_written is None:
            raise StateError("aggregator state: the cache entries are missing")
        if cache_version != doc["cache_version"]:
            raise StateError(
                f"aggregator state: cache version {cache_version} in the store, "
                f"{doc['cache_version']} in the aggregator state"
            )
        core.cache.labels = cache_labels.clone()
        core.cache.written = cache_written.clone()
        core.cache.version = cache_version
    core.round = int(doc["round"])
    core.phase = RoundPhase(doc["phase"])
    core.clients = tuple(int(k) for k in doc["clients"])
    plan = doc["plan"]
    core.plan = None if plan is None else RequestPlan(_i64(plan[0]), _i64(plan[1]))
    core.downlink_targets = None if doc["previous"] is None else _load_targets(doc["previous"])
    core.last_commit = None if doc["commit"] is None else _load_commit(doc["commit"])
    core.downlink_digest = str(doc["targets_digest"])
    if core.mirrors is not None and doc["mirrors"] is not None:
        raw = zstandard.ZstdDecompressor().decompress(doc["mirrors"])
        shape = core.mirrors.written.shape
        core.mirrors.written = torch.frombuffer(bytearray(raw), dtype=torch.int64).reshape(shape)
    core.uploads = {}
    extra = doc["extra"]
    assert isinstance(extra, dict)
    return extra


def _i64(obj: object) -> Tensor:
    return decode_tensor(obj, "state", dtype="<i8", shape=(None,), max_elements=_MAX)


def _f32(obj: object) -> Tensor:
    return decode_tensor(obj, "state", dtype="<f4", shape=(None, None), max_elements=_MAX)


def _targets(t: DistillTargets) -> dict[str, object]:
    return {
        "round": t.round,
        "indices": encode_tensor(t.indices),
        "signals": None if t.signals is None else encode_tensor(t.signals),
        "labels": encode_tensor(t.fresh_labels),
    }


def _load_targets(d: dict[str, object]) -> DistillTargets:
    signals = None if d["signals"] is None else _i64(d["signals"])
    return DistillTargets(int(d["round"]), _i64(d["indices"]), signals, _f32(d["labels"]))  # type: ignore[call-overload]


def _commit(c: CacheCommit) -> dict[str, object]:
    return {
        "round": c.round,
        "indices": encode_tensor(c.indices),
        "signals": encode_tensor(c.signals),
        "targets": encode_tensor(c.targets),
        "fresh": encode_tensor(c.fresh_labels),
        "prev_written": encode_tensor(c.previous_written),
        "prev_labels": encode_tensor(c.previous_labels),
    }


def _load_commit(d: dict[str, object]) -> CacheCommit:
    return CacheCommit(
        round=int(d["round"]),  # type: ignore[call-overload]
        indices=_i64(d["indices"]),
        signals=_i64(d["signals"]),
        targets=_f32(d["targets"]),
        fresh_labels=_f32(d["fresh"]),
        previous_written=_i64(d["prev_written"]),
        previous_labels=_f32(d["prev_labels"]),
    )
