"""Wire encoding of :mod:`shared.protocol.messages`: msgpack maps, validated on decode.

Every body is a msgpack map with ``v`` (schema version) and ``kind``. Decoders check
everything (size, version, kind, field types, shapes against the federation's public set
size and class count, index ranges and uniqueness, finite non-negative probabilities whose
rows sum to 1) before returning a message; the only exceptions they raise are
:class:`~shared.errors.ProtocolError` subclasses. The full field reference is
``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import msgpack
import torch
from torch import Tensor

from shared.errors import DecodeError, MessageTooLarge, UnsupportedVersion
from shared.protocol.indexsets import (
    decode_codes,
    decode_index_list,
    decode_index_set,
    encode_codes,
    encode_index_list,
    encode_index_set,
)
from shared.protocol.messages import CatchUp, DistillTargets, SoftLabelUpload, TrainTask
from shared.protocol.softlabels import CodecSpec, decode_soft_labels, encode_soft_labels
from shared.protocol.tensors import decode_tensor, encode_tensor

__all__ = [
    "F32",
    "SCHEMA_VERSION",
    "DecodeLimits",
    "decode_task",
    "decode_upload",
    "encode_task",
    "encode_upload",
    "peek_kind",
]

SCHEMA_VERSION = 1

_SIGNAL_CODES = (0, 1, 2)
_CACHED, _NEWLY, _EXPIRED = 0, 1, 2  # CacheSignal values (the protocol does not import the rules)
F32 = CodecSpec("f32")
"""The uncompressed baseline codec."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What a valid message may contain in this federation."""

    public_size: int  # |P|: indices must lie in [0, public_size)
    num_classes: int  # C
    max_body_bytes: int = 64 * 1024 * 1024


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
    return _pack(body)


def encode_upload(upload: SoftLabelUpload, spec: CodecSpec = F32, *, public_size: int) -> bytes:
    """Encode an uplink :class:`SoftLabelUpload` to bytes (indices must be ascending)."""
    body: dict[str, object] = {
        **_envelope("upload", upload.run_id, upload.round, upload.client_id),
        "indices": encode_index_set(upload.indices, public_size),
        "labels": encode_soft_labels(upload.soft_labels, spec),
        "train_loss": float(upload.train_loss),
        "client_accuracy": float(upload.client_accuracy),
    }
    return _pack(body)


def peek_kind(body: bytes, limits: DecodeLimits) -> str:
    """Return the ``kind`` of a message after checking size and schema version only."""
    return str(_unpack(body, limits)["kind"])


def decode_task(body: bytes, limits: DecodeLimits) -> TrainTask:
    """Decode and validate a :class:`TrainTask`.

    Raises:
        MessageTooLarge: body over ``limits.max_body_bytes``.
        UnsupportedVersion: unknown schema version.
        DecodeError: anything else that is wrong, naming the field.
    """
    msg = _unpack(body, limits, kind="train_task")
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
        cache_version=_int(msg.get("cache_version"), "cache_version"),
        targets_digest=_digest_field(msg.get("targets_digest"), "targets_digest"),
    )


def decode_upload(body: bytes, limits: DecodeLimits) -> SoftLabelUpload:
    """Decode and validate a :class:`SoftLabelUpload`.

    Raises:
        MessageTooLarge: body over ``limits.max_body_bytes``.
        UnsupportedVersion: unknown schema version.
        DecodeError: anything else that is wrong, naming the field.
    """
    msg = _unpack(body, limits, kind="upload")
    run_id, round_no, client_id = _envelope_fields(msg)
    indices = _index_set(msg.get("indices"), "indices", limits)
    labels = _labels(msg.get("labels"), "labels", indices.numel(), limits)
    loss = _float(msg.get("train_loss"), "train_loss")
    accuracy = _float(msg.get("client_accuracy"), "client_accuracy", allow_nan=True)
    return SoftLabelUpload(run_id, round_no, client_id, indices, labels, loss, accuracy)


def _envelope(kind: str, run_id: str, round_no: int, sender: int) -> dict[str, object]:
    return {"v": SCHEMA_VERSION, "kind": kind, "run": run_id, "round": round_no, "client": sender}


def _pack(body: Mapping[str, object]) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def _unpack(body: bytes, limits: DecodeLimits, kind: str | None = None) -> dict[str, object]:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise DecodeError(f"body: expected bytes, got {type(body).__name__}")
    if len(body) > limits.max_body_bytes:
        raise MessageTooLarge(
            f"body: {len(body)} bytes exceed the limit of {limits.max_body_bytes}"
        )
    try:
        # msgpack's own bounds stop a forged length from allocating more than the body holds
        msg = msgpack.unpackb(
            body, raw=False, strict_map_key=True, max_bin_len=len(body), max_str_len=len(body)
        )
    except Exception as e:  # msgpack raises several unrelated exception types
        raise DecodeError(f"body: not valid msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(msg, dict):
        raise DecodeError(f"body: expected a map, got {type(msg).__name__}")
    version = msg.get("v")
    if version != SCHEMA_VERSION:
        raise UnsupportedVersion(
            f"v: schema version {version!r}, this build speaks {SCHEMA_VERSION}"
        )
    if not isinstance(msg.get("kind"), str):
        raise DecodeError("kind: missing or not a string")
    if kind is not None and msg["kind"] != kind:
        raise DecodeError(f"kind: expected {kind!r}, got {msg['kind']!r}")
    return msg


def _envelope_fields(msg: Mapping[str, object]) -> tuple[str, int, int]:
    run_id = msg.get("run")
    if not isinstance(run_id, str) or not 0 < len(run_id) <= 128:
        raise DecodeError("run: expected a non-empty string of at most 128 characters")
    round_no = _int(msg.get("round"), "round")
    client = _int(msg.get("client"), "client")
    return run_id, round_no, client


def _int(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise DecodeError(f"{field}: expected a non-negative integer, got {value!r}")
    return value


def _digest_field(value: object, field: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) not in (0, 64)
        or not all(c in "0123456789abcdef" for c in value)
    ):
        raise DecodeError(f"{field}: expected an empty string or 64 hex digits")
    return value


def _float(value: object, field: str, *, allow_nan: bool = False) -> float:
    if not isinstance(value, float | int) or isinstance(value, bool):
        raise DecodeError(f"{field}: expected a number, got {type(value).__name__}")
    if math.isnan(value) and allow_nan:
        return float(value)
    if not math.isfinite(value):
        raise DecodeError(f"{field}: expected a finite number, got {value!r}")
    return float(value)


def _bytes(obj: object, field: str) -> bytes:
    if not isinstance(obj, bytes):
        raise DecodeError(f"{field}: expected bytes, got {type(obj).__name__}")
    return obj


def _index_set(obj: object, field: str, limits: DecodeLimits) -> Tensor:
    try:
        return decode_index_set(
            _bytes(obj, field), limits.public_size, max_items=limits.public_size
        )
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None


def _index_list(obj: object, field: str, limits: DecodeLimits) -> Tensor:
    try:
        return decode_index_list(
            _bytes(obj, field), limits.public_size, max_items=limits.public_size
        )
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None


def _labels(obj: object, field: str, rows: int, limits: DecodeLimits) -> Tensor:
    if not isinstance(obj, Mapping):
        raise DecodeError(f"{field}: expected a soft-label map")
    try:
        labels = decode_soft_labels(
            obj, max_rows=limits.public_size, num_classes=limits.num_classes
        )
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None
    if labels.shape[0] != rows:
        raise DecodeError(f"{field}: {labels.shape[0]} rows, expected {rows}")
    return labels


def _catch_up_spec(spec: CodecSpec) -> CodecSpec:
    # catch-up rows are cache entries, i.e. already decoded values: only codecs that
    # reproduce them bit for bit may carry them (quantization and f32 do; f16 does not)
    return spec if spec.kind in ("quant", "f32") and not spec.delta else F32


def _encode_targets(
    targets: DistillTargets, spec: CodecSpec, public_size: int
) -> dict[str, object]:
    labels = encode_soft_labels(targets.fresh_labels, spec)
    head: dict[str, object] = {"round": targets.round, "labels": labels}
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
        and _ascending(fresh_idx)
        and (_ascending(cached_idx))
    ):
        # the usual shape (requested ascending, then reused ascending): two sets and one
        # bit per fresh entry (NEWLY_CACHED or EXPIRED) say everything
        expired = (targets.signals[:q] == int(_EXPIRED)).to(torch.int64)
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
    round_no = _int(obj.get("round"), "targets.round")
    signals: Tensor | None
    if layout == "plain":
        indices = _index_list(obj.get("indices"), "targets.indices", limits)
        signals = None
        fresh = indices.numel()
    elif layout == "split":
        fresh_idx = _index_set(obj.get("fresh"), "targets.fresh", limits)
        cached_idx = _index_set(obj.get("cached"), "targets.cached", limits)
        if bool(torch.isin(fresh_idx, cached_idx).any()):
            raise DecodeError("targets: an index is both fresh and cached")
        expired = _codes(obj.get("expired"), "targets.expired", 1, fresh_idx.numel())
        indices = torch.cat([fresh_idx, cached_idx])
        signals = torch.cat(
            [
                torch.where(expired == 1, int(_EXPIRED), int(_NEWLY)),
                torch.full((cached_idx.numel(),), int(_CACHED), dtype=torch.int64),
            ]
        )
        fresh = fresh_idx.numel()
    elif layout == "list":
        indices = _index_list(obj.get("indices"), "targets.indices", limits)
        signals = _codes(obj.get("signals"), "targets.signals", 2, indices.numel())
        if bool((signals > 2).any()):
            raise DecodeError(f"targets.signals: codes outside {_SIGNAL_CODES}")
        fresh = int((signals != int(_CACHED)).sum())
    else:
        raise DecodeError(f"targets.layout: expected plain, split or list, got {layout!r}")
    labels = _labels(obj.get("labels"), "targets.labels", fresh, limits)
    return DistillTargets(round_no, indices, signals, labels)


def _codes(obj: object, field: str, bits: int, count: int) -> Tensor:
    try:
        return decode_codes(_bytes(obj, field), bits, count)
    except DecodeError as e:
        raise DecodeError(f"{field}: {e}") from None


def _ascending(idx: Tensor) -> bool:
    return idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all())


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
    labels = _labels(obj.get("labels"), "catch_up.labels", update.numel(), limits)
    written = decode_tensor(
        obj.get("written"),
        "catch_up.written",
        dtype="<i8",
        shape=(update.numel(),),
        max_elements=limits.public_size,
    )
    if bool((written < 0).any()):
        raise DecodeError("catch_up.written: negative rounds")
    clear = _index_set(obj.get("clear"), "catch_up.clear", limits)
    return CatchUp(update, labels, written, clear)


SIMPLEX_TOLERANCE = 1e-3
"""Largest accepted |row sum - 1| of a soft-label row carried as a raw float32 tensor."""


def _indices(obj: object, field: str, limits: DecodeLimits) -> Tensor:
    """Decode an int64 index tensor (raw layout): in range and unique."""
    idx = decode_tensor(obj, field, dtype="<i8", shape=(None,), max_elements=limits.public_size)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= limits.public_size):
        raise DecodeError(f"{field}: indices outside [0, {limits.public_size})")
    if torch.unique(idx).numel() != idx.numel():
        raise DecodeError(f"{field}: indices are not unique")
    return idx


def _require_ascending(idx: Tensor, field: str) -> None:
    if not _ascending(idx):
        raise DecodeError(f"{field}: indices must be ascending")
