"""Wire encoding of :mod:`shared.protocol.messages`: msgpack maps, validated on decode.

Every body is a msgpack map with ``v`` (schema version) and ``kind``. Decoders check
everything (size, version, kind, field types, shapes against the federation's public set
size and class count, index ranges and uniqueness, finite non-negative probabilities whose
rows sum to 1) before returning a message; the only exceptions they raise are
:class:`~shared.errors.ProtocolError` subclasses. The full field reference is
``docs/PROTOCOL.md``.

The envelope, the size-checked unpack and the field checks are shared with the
cache-sync RPC and live in :mod:`shared.protocol.wire`; :class:`DecodeLimits` is
defined there and re-exported here, so that its many callers import it from the codec.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from shared.arrays import IndexArray, LabelArray
from shared.errors import DecodeError
from shared.protocol.indexsets import (
    decode_codes,
    decode_index_list,
    decode_index_set,
    encode_codes,
    encode_index_list,
    encode_index_set,
)
from shared.protocol.messages import (
    MAX_CLUSTERS,
    CatchUp,
    DistillTargets,
    SoftLabelUpload,
    TrainTask,
)
from shared.protocol.softlabels import CodecSpec, decode_soft_labels, encode_soft_labels
from shared.protocol.tensors import decode_tensor, encode_tensor
from shared.protocol.wire import (
    DecodeLimits,
    bytes_field,
    digest_field,
    envelope,
    float_field,
    int_field,
    is_ascending,
    pack,
    unpack,
)

__all__ = [
    "F32",
    "DecodeLimits",
    "decode_task",
    "decode_upload",
    "encode_task",
    "encode_upload",
    "peek_kind",
]

_SIGNAL_CODES = (0, 1, 2)
_CACHED, _NEWLY, _EXPIRED = 0, 1, 2  # CacheSignal values (the protocol does not import the rules)
F32 = CodecSpec("f32")
"""The uncompressed baseline codec."""


def encode_task(task: TrainTask, spec: CodecSpec = F32, *, public_size: int) -> bytes:
    """Encode a downlink :class:`TrainTask` to bytes.

    Args:
        task: the task.
        spec: soft-label codec of the global labels (and of catch-up labels).
        public_size: |P|, the universe of the index sets.
    """
    body: dict[str, object] = {
        **_envelope("train_task", task.run_id, task.round, task.client_id),
        "request": encode_index_set(task.request_indices, public_size),
        "cache_version": task.cache_version,
        "targets_digest": task.targets_digest,
        "targets": None
        if task.targets is None
        else _encode_targets(task.targets, spec, public_size),
        "catch_up": None
        if task.catch_up is None
        else _encode_catch_up(task.catch_up, spec, public_size),
    }
    return pack(body)


def encode_upload(upload: SoftLabelUpload, spec: CodecSpec = F32, *, public_size: int) -> bytes:
    """Encode an uplink :class:`SoftLabelUpload` to bytes (indices must be ascending)."""
    body: dict[str, object] = {
        **_envelope("upload", upload.run_id, upload.round, upload.client_id),
        "indices": encode_index_set(upload.indices, public_size),
        "labels": encode_soft_labels(upload.soft_labels, spec),
        "train_loss": float(upload.train_loss),
        "client_accuracy": float(upload.client_accuracy),
    }
    return pack(body)


def peek_kind(body: bytes, limits: DecodeLimits) -> str:
    """Return the ``kind`` of a message after checking size and schema version only."""
    return str(unpack(body, limits)["kind"])


def decode_task(body: bytes, limits: DecodeLimits) -> TrainTask:
    """Decode and validate a :class:`TrainTask`.

    Raises:
        MessageTooLarge: body over ``limits.max_body_bytes``.
        UnsupportedVersion: unknown schema version.
        DecodeError: anything else that is wrong, naming the field.
    """
    msg = unpack(body, limits, kind="train_task")
    run_id, round_no, client_id = _envelope_fields(msg)
    request = _index_set(msg.get("request"), "request", limits)
    targets_obj, catch_obj = msg.get("targets"), msg.get("catch_up")
    return TrainTask(
        run_id=run_id,
        round=round_no,
        client_id=client_id,
        request_indices=request,
        targets=None if targets_obj is None else _decode_targets(targets_obj, limits),
        catch_up=None if catch_obj is None else _decode_catch_up(catch_obj, limits),
        cache_version=int_field(msg.get("cache_version"), "cache_version"),
        targets_digest=digest_field(msg.get("targets_digest"), "targets_digest", allow_empty=True),
    )


def decode_upload(body: bytes, limits: DecodeLimits) -> SoftLabelUpload:
    """Decode and validate a :class:`SoftLabelUpload`.

    Raises:
        MessageTooLarge: body over ``limits.max_body_bytes``.
        UnsupportedVersion: unknown schema version.
        DecodeError: anything else that is wrong, naming the field.
    """
    msg = unpack(body, limits, kind="upload")
    run_id, round_no, client_id = _envelope_fields(msg)
    indices = _shared_index_set(msg.get("indices"), limits)
    labels = _labels(msg.get("labels"), "labels", indices.size, limits)
    loss = float_field(msg.get("train_loss"), "train_loss")
    accuracy = float_field(msg.get("client_accuracy"), "client_accuracy", allow_nan=True)
    return SoftLabelUpload(run_id, round_no, client_id, indices, labels, loss, accuracy)


def _envelope(kind: str, run_id: str, round_no: int, sender: int) -> dict[str, object]:
    return {**envelope(kind, run_id), "round": round_no, "client": sender}


def _envelope_fields(msg: Mapping[str, object]) -> tuple[str, int, int]:
    run_id = msg.get("run")
    if not isinstance(run_id, str) or not 0 < len(run_id) <= 128:
        raise DecodeError("run: expected a non-empty string of at most 128 characters")
    round_no = int_field(msg.get("round"), "round")
    client = int_field(msg.get("client"), "client")
    return run_id, round_no, client


def _index_set(obj: object, field: str, limits: DecodeLimits) -> IndexArray:
    try:
        return decode_index_set(
            bytes_field(obj, field), limits.public_size, max_items=limits.public_size
        )
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None


def _shared_index_set(obj: object, limits: DecodeLimits) -> IndexArray:
    # every upload of a round carries the same request set, byte for byte: decode it once
    # (read-only, since the uploads share it); other bytes decode as usual
    data = bytes_field(obj, "indices")
    try:
        return _decode_shared(data, limits.public_size)
    except DecodeError as e:
        raise DecodeError(f"indices: {e}") from None


@functools.lru_cache(maxsize=8)
def _decode_shared(data: bytes, public_size: int) -> IndexArray:
    values = decode_index_set(data, public_size, max_items=public_size)
    values.flags.writeable = False
    return values


def _index_list(obj: object, field: str, limits: DecodeLimits) -> IndexArray:
    try:
        return decode_index_list(
            bytes_field(obj, field), limits.public_size, max_items=limits.public_size
        )
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None


def _labels(
    obj: object, field: str, rows: int, limits: DecodeLimits, *, max_rows: int | None = None
) -> LabelArray:
    # max_rows: the decoding bound, |P| unless the caller expects more rows (centroids)
    if not isinstance(obj, Mapping):
        raise DecodeError(f"{field}: expected a soft-label map")
    bound = limits.public_size if max_rows is None else max(max_rows, limits.public_size)
    try:
        labels = decode_soft_labels(obj, max_rows=bound, num_classes=limits.num_classes)
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None
    if labels.shape[0] != rows:
        raise DecodeError(f"{field}: {labels.shape[0]} rows, expected {rows}")
    return labels


def _catch_up_spec(spec: CodecSpec) -> CodecSpec:
    # catch-up rows are cache entries, i.e. values this codec already decoded; every
    # codec's round trip is a projection (softlabels.roundtrip), so the same codec
    # carries them bit for bit. f32 would not: it renormalizes f16 rows (sums off by up
    # to 5e-4) and large-C quant rows. Delta needs a reference the receiver lacks here;
    # quantization does not depend on it, so the codes are the same without it.
    return CodecSpec(spec.kind, spec.bits, False, spec.entropy, spec.level)


def _encode_targets(
    targets: DistillTargets, spec: CodecSpec, public_size: int
) -> dict[str, object]:
    labels = encode_soft_labels(targets.fresh_labels, spec)
    head: dict[str, object] = {"round": targets.round, "labels": labels}
    if targets.clusters != 1:
        # COMET's centroids: the key is absent otherwise, so other bodies are unchanged
        head["clusters"] = targets.clusters
    if targets.signals is None:
        return head | {
            "layout": "plain",
            "indices": encode_index_list(targets.indices, public_size),
        }
    cached = targets.signals == int(_CACHED)
    q = int((~cached).sum())
    fresh_idx, cached_idx = targets.indices[:q], targets.indices[q:]
    if (
        bool(cached[q:].all())
        and not bool(cached[:q].any())
        and is_ascending(fresh_idx)
        and is_ascending(cached_idx)
    ):
        # the usual shape (requested ascending, then reused ascending): two sets and one
        # bit per fresh entry (NEWLY_CACHED or EXPIRED) say everything
        expired = (targets.signals[:q] == int(_EXPIRED)).astype(np.int64)
        return head | {
            "layout": "split",
            "fresh": encode_index_set(fresh_idx, public_size),
            "cached": encode_index_set(cached_idx, public_size),
            "expired": encode_codes(expired, 1),
        }
    return head | {
        "layout": "list",
        "indices": encode_index_list(targets.indices, public_size),
        "signals": encode_codes(targets.signals, 2),
    }


def _decode_targets(obj: object, limits: DecodeLimits) -> DistillTargets:
    if not isinstance(obj, Mapping):
        raise DecodeError("targets: expected a map")
    layout = obj.get("layout")
    round_no = int_field(obj.get("round"), "targets.round")
    signals: IndexArray | None
    if layout == "plain":
        indices = _index_list(obj.get("indices"), "targets.indices", limits)
        signals = None
        fresh = indices.size
    elif layout == "split":
        fresh_idx = _index_set(obj.get("fresh"), "targets.fresh", limits)
        cached_idx = _index_set(obj.get("cached"), "targets.cached", limits)
        if np.intersect1d(fresh_idx, cached_idx, assume_unique=True).size:
            raise DecodeError("targets: an index is both fresh and cached")
        expired = _codes(obj.get("expired"), "targets.expired", 1, fresh_idx.size)
        indices = np.concatenate([fresh_idx, cached_idx])
        signals = np.concatenate(
            [
                np.where(expired == 1, int(_EXPIRED), int(_NEWLY)),
                np.full(cached_idx.size, int(_CACHED), dtype=np.int64),
            ]
        )
        fresh = fresh_idx.size
    elif layout == "list":
        indices = _index_list(obj.get("indices"), "targets.indices", limits)
        signals = _codes(obj.get("signals"), "targets.signals", 2, indices.size)
        if bool((signals > 2).any()):
            raise DecodeError(f"targets.signals: codes outside {_SIGNAL_CODES}")
        fresh = int((signals != int(_CACHED)).sum())
    else:
        raise DecodeError(f"targets.layout: expected plain, split or list, got {layout!r}")
    clusters = _clusters(obj.get("clusters", 1), signals is not None)
    rows = fresh * clusters
    labels = _labels(obj.get("labels"), "targets.labels", rows, limits, max_rows=rows)
    return DistillTargets(round_no, indices, signals, labels, clusters)


def _clusters(value: object, signalled: bool) -> int:
    """COMET's centroids per index (absent: 1, one label row per index)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CLUSTERS:
        raise DecodeError(
            f"targets.clusters: expected an integer in [1, {MAX_CLUSTERS}], got {value!r}"
        )
    if value > 1 and signalled:
        raise DecodeError("targets.clusters: centroids travel without cache signals (plain)")
    return value


def _codes(obj: object, field: str, bits: int, count: int) -> IndexArray:
    try:
        return decode_codes(bytes_field(obj, field), bits, count)
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None


def _encode_catch_up(diff: CatchUp, spec: CodecSpec, public_size: int) -> dict[str, object]:
    return {
        "update": encode_index_list(diff.update_indices, public_size),
        "labels": encode_soft_labels(diff.update_labels, _catch_up_spec(spec)),
        "written": encode_tensor(diff.update_written),
        "clear": encode_index_set(diff.clear_indices, public_size),
    }


def _decode_catch_up(obj: object, limits: DecodeLimits) -> CatchUp:
    if not isinstance(obj, Mapping):
        raise DecodeError("catch_up: expected a map")
    update = _index_list(obj.get("update"), "catch_up.update", limits)
    labels = _labels(obj.get("labels"), "catch_up.labels", update.size, limits)
    written = decode_tensor(
        obj.get("written"),
        "catch_up.written",
        dtype="<i8",
        shape=(update.size,),
        max_elements=limits.public_size,
    )
    if bool((written < 0).any()):
        raise DecodeError("catch_up.written: negative rounds")
    clear = _index_set(obj.get("clear"), "catch_up.clear", limits)
    return CatchUp(update, labels, written, clear)
