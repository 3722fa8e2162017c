"""What every message codec shares: the msgpack envelope, the decode bounds, field checks.

A body is a msgpack map that opens with the envelope ``{"v": SCHEMA_VERSION, "kind":
..., "run": ...}``; each codec appends its own fields (:mod:`shared.protocol.codec` for
tasks and uploads, :mod:`shared.protocol.cache_sync` for the cache-sync RPC). Decoding
goes through :func:`unpack`, which bounds the work a hostile body can cause before any
field is read, and then through the ``*_field`` checks below. Every check raises
:class:`~shared.errors.DecodeError` naming the field, so a codec's only exceptions are
:class:`~shared.errors.ProtocolError` subclasses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeGuard

import msgpack

from shared.arrays import IndexArray
from shared.digests import is_digest
from shared.errors import DecodeError, MessageTooLarge, UnsupportedVersion

__all__ = [
    "SCHEMA_VERSION",
    "DecodeLimits",
    "bytes_field",
    "digest_field",
    "envelope",
    "float_field",
    "int_field",
    "is_ascending",
    "is_safe_name",
    "pack",
    "safe_name_field",
    "unpack",
]

SCHEMA_VERSION: Final = 1
"""The envelope's ``v``: the one schema version this build encodes and accepts."""

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What a valid message may contain in this federation."""

    public_size: int  # |P|: indices must lie in [0, public_size)
    num_classes: int  # C
    max_body_bytes: int = 64 * 1024 * 1024


def envelope(kind: str, run_id: str) -> dict[str, object]:
    """The fields every body opens with; a codec appends its own after them."""
    return {"v": SCHEMA_VERSION, "kind": kind, "run": run_id}


def pack(body: Mapping[str, object]) -> bytes:
    """Encode a body map with msgpack (str as str, bytes as bin; key order preserved)."""
    packed = msgpack.packb(body, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def unpack(body: bytes, limits: DecodeLimits, kind: str | None = None) -> dict[str, object]:
    """Decode a body to its map after checking size, schema version and kind.

    Args:
        body: the message bytes.
        limits: ``max_body_bytes`` bounds the body.
        kind: the expected ``kind``; None accepts any string.

    Raises:
        MessageTooLarge: body over ``limits.max_body_bytes``.
        UnsupportedVersion: ``v`` is not :data:`SCHEMA_VERSION`.
        DecodeError: not bytes, not a msgpack map, or a missing or unexpected ``kind``.
    """
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


def int_field(value: object, field: str) -> int:
    """Return ``value`` if it is an int in [0, 2**62) (bool excluded).

    Raises:
        DecodeError: anything else.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise DecodeError(f"{field}: expected a non-negative integer, got {value!r}")
    return value


def float_field(value: object, field: str, *, allow_nan: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number (or NaN, when allowed).

    Raises:
        DecodeError: not an int or float (bool excluded), or infinite, or NaN unless
            ``allow_nan``.
    """
    if not isinstance(value, float | int) or isinstance(value, bool):
        raise DecodeError(f"{field}: expected a number, got {type(value).__name__}")
    if math.isnan(value) and allow_nan:
        return float(value)
    if not math.isfinite(value):
        raise DecodeError(f"{field}: expected a finite number, got {value!r}")
    return float(value)


def bytes_field(value: object, field: str) -> bytes:
    """Return ``value`` if it is bytes (a msgpack bin).

    Raises:
        DecodeError: anything else.
    """
    if not isinstance(value, bytes):
        raise DecodeError(f"{field}: expected bytes, got {type(value).__name__}")
    return value


def digest_field(value: object, field: str, *, allow_empty: bool) -> str:
    """Return ``value`` if it is a digest (64 lowercase hex digits), or "" when allowed.

    Raises:
        DecodeError: anything else.
    """
    if allow_empty and value == "":
        return ""
    if not is_digest(value):
        expected = "an empty string or 64 hex digits" if allow_empty else "64 lowercase hex digits"
        raise DecodeError(f"{field}: expected {expected}")
    return value


def is_safe_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` may be part of a queue or key name (a run or worker id).

    That is 1-128 characters of ``A-Za-z0-9_.-`` starting with a letter or digit: no
    ``:``, glob or routing-key characters, so one name's pattern never matches another's.
    """
    return isinstance(value, str) and _SAFE_NAME.fullmatch(value) is not None


def safe_name_field(value: object, field: str) -> str:
    """Return ``value`` if :func:`is_safe_name` accepts it.

    Raises:
        DecodeError: anything else.
    """
    if not is_safe_name(value):
        raise DecodeError(f"{field}: expected 1-128 characters of A-Za-z0-9_.- (no leading _.-)")
    return value


def is_ascending(indices: IndexArray) -> bool:
    """Whether a (n,) index array is strictly ascending (true for n < 2)."""
    return indices.size < 2 or bool((indices[1:] > indices[:-1]).all())
