"""Arrays as raw little-endian bytes with dtype and shape: no pickle, no torch.load.

An encoded array ("tensor map") is ``{"dtype": "<f4", "shape": [n, c], "data": b"..."}``;
the arrays are numpy (:mod:`shared.arrays`), so that no process needs torch to read or
write one. Model state dicts convert at the model's edge (:mod:`shared.models.arrays`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgpack
import numpy as np

from shared.arrays import AnyArray
from shared.errors import DecodeError

__all__ = [
    "decode_any_tensor",
    "decode_tensor",
    "decode_tensor_map",
    "encode_tensor",
    "encode_tensor_map",
]

_DTYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(name) for name in ("<f4", "<f2", "<i8", "<i4", "|u1", "|i1")
}


def encode_tensor(array: AnyArray) -> dict[str, object]:
    """Describe an array as ``{"dtype", "shape", "data"}`` (raw little-endian bytes).

    Raises:
        ValueError: for a dtype outside float32/float16/int64/int32/uint8/int8.
    """
    name = array.dtype.newbyteorder("<").str
    if name not in _DTYPES:
        raise ValueError(f"cannot encode arrays of dtype {array.dtype}")
    data = np.ascontiguousarray(array, dtype=_DTYPES[name]).tobytes()
    return {"dtype": name, "shape": list(array.shape), "data": data}


def decode_tensor(
    obj: object, field: str, *, dtype: str, shape: tuple[int | None, ...], max_elements: int
) -> AnyArray:
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
    np_dtype = _DTYPES[dtype]
    data = obj["data"]
    if not isinstance(data, bytes) or len(data) != count * np_dtype.itemsize:
        raise DecodeError(f"{field}: data holds the wrong number of bytes for shape {list(got)}")
    # a fresh, writable, native-order array: the bytes object stays read-only
    return np.frombuffer(data, dtype=np_dtype).reshape(got).astype(np_dtype.newbyteorder("="))


def encode_tensor_map(tensors: Mapping[str, AnyArray]) -> bytes:
    """Pack a name → array map (a model state dict, a replica) into msgpack bytes."""
    packed = msgpack.packb({k: encode_tensor(v) for k, v in tensors.items()}, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def decode_tensor_map(data: bytes, *, max_elements: int = 2**34) -> dict[str, AnyArray]:
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
    out: dict[str, AnyArray] = {}
    for name, obj in doc.items():
        if not isinstance(obj, Mapping) or not isinstance(obj.get("shape"), list):
            raise DecodeError(f"tensor map: entry {name!r} is not a tensor")
        if obj.get("dtype") not in _DTYPES:
            raise DecodeError(f"tensor map: entry {name!r} has dtype {obj.get('dtype')!r}")
        out[str(name)] = decode_any_tensor(obj, name, max_elements=max_elements)
    return out


def decode_any_tensor(obj: object, field: str, *, max_elements: int) -> AnyArray:
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
