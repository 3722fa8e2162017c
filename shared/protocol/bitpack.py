"""Bit-level building blocks of the compact wire codecs: fixed-width codes and varints.

- :func:`pack_bits` / :func:`unpack_bits`: M values of ``width`` bits each, MSB first,
  zero-padded to a whole byte; the decoder checks the length and the padding.
- :func:`encode_varints` / :func:`decode_varints`: unsigned LEB128, canonical (at most
  :data:`MAX_VARINT_BYTES` bytes, no redundant zero byte); the decoder checks both.

Vectorised numpy, no Python loop per value. Decoders raise only
:class:`~shared.errors.DecodeError`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shared.errors import DecodeError

__all__ = ["MAX_VARINT_BYTES", "decode_varints", "encode_varints", "pack_bits", "unpack_bits"]

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]

MAX_VARINT_BYTES = 6  # ceil(41 / 7): zig-zag differences need 41 bits


def pack_bits(values: _I64, width: int) -> bytes:
    """Pack (M,) values with ``width`` bits each, MSB first."""
    if width == 8:
        return values.astype(np.uint8).tobytes()
    nbytes = _container_bytes(width)
    big_endian = values.astype(f">u{nbytes}").view(np.uint8).reshape(-1, nbytes)
    planes = np.unpackbits(big_endian, axis=1)[:, 8 * nbytes - width :]
    return np.packbits(planes.ravel()).tobytes()


def unpack_bits(buf: bytes, width: int, count: int, field: str) -> _I64:
    """Inverse of :func:`pack_bits`; the length and the padding are checked first."""
    expected = (count * width + 7) // 8
    if len(buf) != expected:
        raise DecodeError(
            f"{field}: {len(buf)} bytes, expected {expected} for {count} codes of {width} bits"
        )
    if width == 8:
        return np.frombuffer(buf, np.uint8).astype(np.int64)
    bits = np.unpackbits(np.frombuffer(buf, np.uint8))
    if bits[count * width :].any():
        raise DecodeError(f"{field}: non-zero padding bits")
    nbytes = _container_bytes(width)
    planes = np.zeros((count, 8 * nbytes), dtype=np.uint8)
    planes[:, 8 * nbytes - width :] = bits[: count * width].reshape(count, width)
    return np.packbits(planes, axis=1).view(f">u{nbytes}").ravel().astype(np.int64)


def _container_bytes(width: int) -> int:
    return next(n for n in (1, 2, 4, 8) if 8 * n >= width)


def encode_varints(values: _I64) -> bytes:
    """Unsigned LEB128 of each non-negative value, concatenated."""
    values = values.astype(np.int64)
    lengths = np.ones(values.size, dtype=np.int64)
    for k in range(1, MAX_VARINT_BYTES):
        lengths += values >= (1 << (7 * k))
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    for j in range(int(lengths.max(initial=0))):
        has = lengths > j
        more = np.where(lengths[has] - 1 > j, 0x80, 0)
        out[starts[has] + j] = ((values[has] >> (7 * j)) & 0x7F) | more
    return out.tobytes()


def decode_varints(buf: _U8, count: int, field: str) -> _I64:
    """Exactly ``count`` canonical varints filling ``buf``."""
    if count == 0:
        if buf.size:
            raise DecodeError(f"{field}: {buf.size} trailing bytes")
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(buf < 0x80)  # the last byte of each varint
    if ends.size != count or ends[-1] != buf.size - 1:
        raise DecodeError(
            f"{field}: {ends.size} complete varints in {buf.size} bytes, expected {count}"
        )
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise DecodeError(f"{field}: varint longer than {MAX_VARINT_BYTES} bytes")
    if np.any((lengths > 1) & (buf[ends] == 0)):
        raise DecodeError(f"{field}: non-canonical varint (redundant zero byte)")
    values = np.zeros(count, dtype=np.int64)
    for j in range(int(lengths.max())):
        has = lengths > j
        values[has] |= (buf[starts[has] + j] & 0x7F).astype(np.int64) << (7 * j)
    return values
