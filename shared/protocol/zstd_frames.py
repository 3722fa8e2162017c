"""zstd frames of soft-label data, decompressed only within a bound the caller computes.

A frame must declare its content size (at least one byte: empty data travel without a
frame), and that size is checked against the bound before anything is allocated.
"""

from __future__ import annotations

import zstandard

from shared.errors import DecodeError
from shared.protocol.codec_spec import CodecSpec

__all__ = ["compress_data", "decompress_data"]


def compress_data(raw: bytes, spec: CodecSpec) -> bytes:
    """``raw`` as one zstd frame at ``spec.level`` declaring its size (unchanged without zstd)."""
    if spec.entropy == "none" or not raw:  # see decompress_data: no frame for nothing
        return raw
    return zstandard.ZstdCompressor(level=spec.level, write_content_size=True).compress(raw)


def decompress_data(data: bytes, spec: CodecSpec, limit: int, *, exact: bool) -> bytes:
    """The raw bytes, at most ``limit`` of them (exactly ``limit`` when ``exact``).

    Raises:
        DecodeError: for a bad frame, one declaring no size or more than ``limit``, or a
            length other than the bound allows.
    """
    if spec.entropy == "zstd" and data:
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            raise DecodeError("data: not a zstd frame") from None
        # never let the frame choose the allocation: python-zstandard trusts its header.
        # It also returns b"" for a declared 0 without reading on, so empty data travels
        # without a frame and a frame must declare at least one byte.
        if declared <= 0:
            raise DecodeError("data: the zstd frame does not declare a content size >= 1")
        if declared > limit:
            raise DecodeError(f"data: zstd frame declares {declared} bytes, limit {limit}")
        try:
            data = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=limit, allow_extra_data=False
            )
        except zstandard.ZstdError as error:
            raise DecodeError(f"data: bad zstd frame ({error})") from None
    if len(data) > limit or (exact and len(data) != limit):
        raise DecodeError(f"data: {len(data)} bytes, expected {'' if exact else '<= '}{limit}")
    return data
