"""Tensors as raw little-endian bytes with dtype and shape: no pickle, no torch.load."""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgpack
import numpy as np
import torch
from torch import Tensor

from shared.errors import DecodeError

__all__ = [
    "decode_any_tensor",
    "decode_tensor",
    "decode_tensor_map",
    "encode_tensor",
    "encode_tensor_map",
]

_DTYPES: dict[str, tuple[np.dtype[np.generic], torch.dtype]] = {
    "<f4": (np.dtype("<f4"), torch.float32),
    "<f2": (np.dtype("<f2"), torch.float16),
    "<i8": (np.dtype("<i8"), torch.int64),
    "<i4": (np.dtype("<i4"), torch.int32),
    "|u1": (np.dtype("|u1"), torch.uint8),
    "|i1": (np.dtype("|i1"), torch.int8),
}
_BY_TORCH = {t: name for name, (_, t) in _DTYPES.items()}


def encode_tensor(tensor: Tensor) -> dict[str, object]:
    """Describe a CPU tensor as ``{"dtype", "shape", "data"}`` (raw little-endian bytes).

    Raises:
        ValueError: for a dtype outside float32/float16/int64/int32/uint8/int8.
    """
    name = _BY_TORCH.get(tensor.dtype)
    if name is None:
        raise ValueError(f"cannot encode tensors of dtype {tensor.dtype}")
    array = tensor.detach().cpu().contiguous().numpy().astype(_DTYPES[name][0], copy=False)
    return {"dtype": name, "shape": list(tensor.shape), "data": array.tobytes()}


def decode_tensor(
    obj: object, field: str, *, dtype: str, shape: tuple[int | None, ...], max_elements: int
) -> Tensor:
    """Decode and validate a tensor map produced by :func:`encode_tensor`.

    Args:
        obj: the decoded msgpack value.
        field: field name, for error messages.
        dtype: the required dtype name (e.g. ``"<f4"``).
        shape: the required shape; ``None`` entries are free but bounded by ``max_elements``.
        max_elements: upper bound on the element count, checked before any allocation.

    Raises:
        DecodeError: naming ``field`` and the problem.
    """
    if not isinstance(obj, Mapping) or set(obj) != {"dtype", "shape", "data"}:
        raise DecodeError(f"{field}: expected a tensor map with dtype, shape and data")
    if obj["dtype"] != dtype:
        raise DecodeError(f"{field}: dtype {obj['dtype']!r}, expected {dtype!r}")
    got = obj["shape"]
    if (
        not isinstance(got, list | tuple)
        or len(got) != len(shape)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in got)
    ):
        raise DecodeError(f"{field}: shape {got!r} is not {len(shape)} non-negative integers")
    for want, have in zip(shape, got, strict=True):
        if want is not None and want != have:
            raise DecodeError(f"{field}: shape {list(got)}, expected {list(shape)}")
    count = math.prod(got)
    if count > max_elements:
        raise DecodeError(f"{field}: {count} elements exceed the limit of {max_elements}")
    np_dtype, torch_dtype = _DTYPES[dtype]
    data = obj["data"]
    if not isinstance(data, bytes) or len(data) != count * np_dtype.itemsize:
        raise DecodeError(f"{field}: data holds the wrong number of bytes for shape {list(got)}")
    array = np.frombuffer(data, dtype=np_dtype).reshape(got)
    return torch.from_numpy(array.astype(np_dtype.newbyteorder("="), copy=True)).to(torch_dtype)


def encode_tensor_map(tensors: Mapping[str, Tensor]) -> bytes:
    """Pack a name → tensor map (a model state dict, a replica) into msgpack bytes."""
    packed = msgpack.packb({k: encode_tensor(v) for k, v in tensors.items()}, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def decode_tensor_map(data: bytes, *, max_elements: int = 2**34) -> dict[str, Tensor]:
    """Inverse of :func:`encode_tensor_map`; validates every entry.

    Raises:
        DecodeError: bytes that are not such a map.
    """
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated exception types
        raise DecodeError(f"tensor map: not valid msgpack ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise DecodeError("tensor map: expected a map")
    out: dict[str, Tensor] = {}
    for name, obj in doc.items():
        if not isinstance(obj, Mapping) or not isinstance(obj.get("shape"), list):
            raise DecodeError(f"tensor map: entry {name!r} is not a tensor")
        if obj.get("dtype") not in _DTYPES:
            raise DecodeError(f"tensor map: entry {name!r} has dtype {obj.get('dtype')!r}")
        out[str(name)] = decode_any_tensor(obj, name, max_elements=max_elements)
    return out


def decode_any_tensor(obj: object, field: str, *, max_elements: int) -> Tensor:
    """Decode a tensor map of any supported dtype and rank (for trusted local state).

    Raises:
        DecodeError: not a tensor map, an unknown dtype, or more than ``max_elements``.
    """
    if not isinstance(obj, Mapping) or not isinstance(obj.get("shape"), list):
        raise DecodeError(f"{field}: expected a tensor map with dtype, shape and data")
    dtype = obj.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise DecodeError(f"{field}: unsupported dtype {dtype!r}")
    shape = tuple(None for _ in obj["shape"])
    return decode_tensor(obj, field, dtype=dtype, shape=shape, max_elements=max_elements)
