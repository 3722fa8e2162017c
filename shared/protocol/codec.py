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
from shared.protocol.messages import CatchUp, DistillTargets, SoftLabelUpload, TrainTask
from shared.protocol.tensors import decode_tensor, encode_tensor

__all__ = [
    "SCHEMA_VERSION",
    "DecodeLimits",
    "decode_task",
    "decode_upload",
    "encode_task",
    "encode_upload",
    "peek_kind",
]

SCHEMA_VERSION = 1
SIMPLEX_TOLERANCE = 1e-3
"""Largest accepted |row sum - 1| of a decoded soft-label row (float32 and float16 alike)."""

_RENORMALIZE_ABOVE = 2.0**-20
_SIGNAL_CODES = (0, 1, 2)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What a valid message may contain in this federation."""

    public_size: int  # |P|: indices must lie in [0, public_size)
    num_classes: int  # C
    max_body_bytes: int = 64 * 1024 * 1024


def encode_task(task: TrainTask) -> bytes:
    """Encode a downlink :class:`TrainTask` to bytes."""
    body: dict[str, object] = {
        **_envelope("train_task", task.run_id, task.round, task.client_id),
        "request": encode_tensor(task.request_indices),
        "cache_version": task.cache_version,
        "targets_digest": task.targets_digest,
        "targets": None if task.targets is None else _encode_targets(task.targets),
        "catch_up": None if task.catch_up is None else _encode_catch_up(task.catch_up),
    }
    return _pack(body)


def encode_upload(upload: SoftLabelUpload) -> bytes:
    """Encode an uplink :class:`SoftLabelUpload` to bytes."""
    body: dict[str, object] = {
        **_envelope("upload", upload.run_id, upload.round, upload.client_id),
        "indices": encode_tensor(upload.indices),
        "labels": encode_tensor(upload.soft_labels.to(torch.float32)),
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
    request = _indices(msg.get("request"), "request", limits)
    _require_ascending(request, "request")
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
    indices = _indices(msg.get("indices"), "indices", limits)
    _require_ascending(indices, "indices")
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


def _indices(obj: object, field: str, limits: DecodeLimits) -> Tensor:
    idx = decode_tensor(obj, field, dtype="<i8", shape=(None,), max_elements=limits.public_size)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= limits.public_size):
        raise DecodeError(f"{field}: indices outside [0, {limits.public_size})")
    if torch.unique(idx).numel() != idx.numel():
        raise DecodeError(f"{field}: indices are not unique")
    return idx


def _require_ascending(idx: Tensor, field: str) -> None:
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise DecodeError(f"{field}: indices must be ascending")


def _labels(obj: object, field: str, rows: int, limits: DecodeLimits) -> Tensor:
    labels = decode_tensor(
        obj,
        field,
        dtype="<f4",
        shape=(rows, limits.num_classes),
        max_elements=limits.public_size * limits.num_classes,
    )
    return _check_simplex(labels, field)


def _check_simplex(labels: Tensor, field: str) -> Tensor:
    if not bool(torch.isfinite(labels).all()):
        raise DecodeError(f"{field}: non-finite probabilities")
    if bool((labels < 0).any()):
        raise DecodeError(f"{field}: negative probabilities")
    sums = labels.to(torch.float64).sum(dim=1)
    if labels.shape[0] and float((sums - 1).abs().max()) > SIMPLEX_TOLERANCE:
        raise DecodeError(f"{field}: rows do not sum to 1 (tolerance {SIMPLEX_TOLERANCE})")
    # rows already on the simplex to float32 precision stay bit-exact (f32 round-trips exactly)
    off = (sums - 1).abs() > _RENORMALIZE_ABOVE
    if bool(off.any()):
        labels = labels.clone()
        labels[off] = (labels[off].to(torch.float64) / sums[off].unsqueeze(1)).to(torch.float32)
    return labels


def _encode_targets(targets: DistillTargets) -> dict[str, object]:
    return {
        "round": targets.round,
        "indices": encode_tensor(targets.indices),
        "signals": None
        if targets.signals is None
        else encode_tensor(targets.signals.to(torch.int8)),
        "labels": encode_tensor(targets.fresh_labels.to(torch.float32)),
    }


def _decode_targets(obj: object, limits: DecodeLimits) -> DistillTargets:
    if not isinstance(obj, Mapping):
        raise DecodeError("targets: expected a map")
    indices = _indices(obj.get("indices"), "targets.indices", limits)
    n = indices.numel()
    signals_obj = obj.get("signals")
    signals: Tensor | None = None
    if signals_obj is None:
        fresh = n
    else:
        raw = decode_tensor(signals_obj, "targets.signals", dtype="|i1", shape=(n,), max_elements=n)
        signals = raw.to(torch.int64)
        if not bool(torch.isin(signals, torch.tensor(_SIGNAL_CODES)).all()):
            raise DecodeError(f"targets.signals: codes outside {_SIGNAL_CODES}")
        fresh = int((signals != 0).sum())
    labels = _labels(obj.get("labels"), "targets.labels", fresh, limits)
    return DistillTargets(_int(obj.get("round"), "targets.round"), indices, signals, labels)


def _encode_catch_up(diff: CatchUp) -> dict[str, object]:
    return {
        "update": encode_tensor(diff.update_indices),
        "labels": encode_tensor(diff.update_labels.to(torch.float32)),
        "written": encode_tensor(diff.update_written),
        "clear": encode_tensor(diff.clear_indices),
    }


def _decode_catch_up(obj: object, limits: DecodeLimits) -> CatchUp:
    if not isinstance(obj, Mapping):
        raise DecodeError("catch_up: expected a map")
    update = _indices(obj.get("update"), "catch_up.update", limits)
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
    clear = _indices(obj.get("clear"), "catch_up.clear", limits)
    return CatchUp(update, labels, written, clear)
