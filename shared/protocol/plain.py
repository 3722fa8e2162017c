"""Dataclasses as plain msgpack-ready values, derived from their type hints.

Durable state (the aggregator's round progress, the round state machine, the records it
keeps between a cache commit and the server's distillation) is made of dataclasses.
Instead of a hand-written ``to_dict``/``from_dict`` pair per class, which drifts from the
class as fields are added, :func:`to_plain` and :func:`from_plain` walk the fields and
their annotations::

    blob = msgpack.packb(to_plain(progress), use_bin_type=True)
    progress = from_plain(RoundProgress, msgpack.unpackb(blob, raw=False))

Supported annotations: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
numpy arrays annotated with an ``NDArray`` alias of :mod:`shared.arrays` (raw
little-endian bytes with dtype and shape, see :mod:`shared.protocol.tensors`; the dtype
travels with the bytes), :class:`enum.Enum` subclasses, nested dataclasses,
``X | None``, ``Any`` (passed through as decoded), ``list[X]``, ``tuple[X, ...]``,
fixed ``tuple[X, Y]`` and ``dict[K, V]`` with ``str`` or ``int`` keys. Int keys travel
as decimal strings: msgpack maps decoded with ``strict_map_key`` accept only string
keys. A field with a default may be missing from the data (state written before the
field existed) and then takes its default. Decoding checks every value against its
annotation; a mismatch raises :class:`~shared.errors.DecodeError` naming the path
(``progress.ledger.up.wire``).
Nothing here executes code on load.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from shared.errors import DecodeError
from shared.protocol.tensors import decode_any_tensor, encode_tensor

__all__ = ["from_plain", "to_plain"]

T = TypeVar("T")

_MAX_ELEMENTS = 2**40  # local state the process wrote itself: the bound only guards corruption


def to_plain(value: object) -> object:
    """``value`` (a dataclass instance or any supported value) as msgpack-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return encode_tensor(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k) if isinstance(k, int) else k: to_plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    raise TypeError(f"to_plain: unsupported value of type {type(value).__name__}")


def from_plain(cls: type[T], data: object, path: str | None = None) -> T:
    """Rebuild a ``cls`` instance from what :func:`to_plain` produced.

    Raises:
        DecodeError: ``data`` does not fit ``cls``'s annotations (the message names the path).
    """
    value = _decode(cls, data, path or cls.__name__)
    return typing.cast(T, value)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(hint: Any, data: object, path: str) -> object:
    if hint is Any or hint is object:
        return data  # the caller decodes it further (an opaque ``extra`` map)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return _decode_optional(hint, data, path)
    if origin is list:
        return [_decode(typing.get_args(hint)[0], v, f"{path}[{i}]") for i, v in _items(data, path)]
    if origin is tuple:
        return _decode_tuple(typing.get_args(hint), data, path)
    if origin is dict:
        return _decode_dict(typing.get_args(hint), data, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, data, path)
    if origin is np.ndarray:
        return _decode_array(hint, data, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError:
            raise DecodeError(f"{path}: {data!r} is not a {hint.__name__}") from None
    return _decode_scalar(hint, data, path)


def _decode_array(hint: Any, data: object, path: str) -> object:
    array = decode_any_tensor(data, path, max_elements=_MAX_ELEMENTS)
    scalar = typing.get_args(typing.get_args(hint)[1])[0]  # NDArray[X] is ndarray[Any, dtype[X]]
    if scalar is not Any and array.dtype != np.dtype(scalar):
        raise DecodeError(f"{path}: dtype {array.dtype}, expected {np.dtype(scalar)}")
    return array


def _decode_optional(hint: Any, data: object, path: str) -> object:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"from_plain: only `X | None` unions are supported ({hint})")
    return None if data is None else _decode(args[0], data, path)


def _decode_dataclass(cls: type, data: object, path: str) -> object:
    fields = {f.name for f in dataclasses.fields(cls)}
    # a field with a default may be absent: state written before the field was added
    required = {f.name for f in dataclasses.fields(cls) if _no_default(f)}
    if not isinstance(data, Mapping) or not required <= set(data) <= fields:
        got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise DecodeError(f"{path}: expected the fields {sorted(fields)}, got {got}")
    hints = _hints(cls)
    return cls(**{name: _decode(hints[name], data[name], f"{path}.{name}") for name in data})


def _no_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _decode_tuple(args: tuple[Any, ...], data: object, path: str) -> tuple[object, ...]:
    items = _items(data, path)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(args[0], v, f"{path}[{i}]") for i, v in items)
    if len(items) != len(args):
        raise DecodeError(f"{path}: expected {len(args)} items, got {len(items)}")
    return tuple(_decode(a, v, f"{path}[{i}]") for a, (i, v) in zip(args, items, strict=True))


def _decode_dict(args: tuple[Any, ...], data: object, path: str) -> dict[object, object]:
    key_type, value_type = args
    if not isinstance(data, Mapping):
        raise DecodeError(f"{path}: expected a map, got {type(data).__name__}")
    out: dict[object, object] = {}
    for k, v in data.items():
        key = _decode_key(key_type, k, path)
        out[key] = _decode(value_type, v, f"{path}[{k!r}]")
    return out


def _decode_key(key_type: Any, key: object, path: str) -> object:
    if not isinstance(key, str):
        raise DecodeError(f"{path}: map key {key!r} is not a string")
    if key_type is str:
        return key
    if key_type is int:
        try:
            return int(key)
        except ValueError:
            raise DecodeError(f"{path}: map key {key!r} is not an integer") from None
    raise TypeError(f"from_plain: unsupported map key type {key_type}")


def _decode_scalar(hint: Any, data: object, path: str) -> object:
    if hint is type(None) or hint is None:
        ok = data is None
    elif hint is bool:
        ok = isinstance(data, bool)
    elif hint is int:
        ok = isinstance(data, int) and not isinstance(data, bool)
    elif hint is float:
        # msgpack keeps a float that holds an integral value as a float; ints are widened
        ok = isinstance(data, int | float) and not isinstance(data, bool)
        if ok:
            return float(typing.cast(float, data))
    elif hint in (str, bytes):
        ok = isinstance(data, hint)
    else:
        raise TypeError(f"from_plain: unsupported annotation {hint!r} at {path}")
    if not ok:
        name = getattr(hint, "__name__", repr(hint))
        raise DecodeError(f"{path}: expected {name}, got {type(data).__name__}")
    return data


def _items(data: object, path: str) -> list[tuple[int, object]]:
    if not isinstance(data, list | tuple):
        raise DecodeError(f"{path}: expected a list, got {type(data).__name__}")
    return list(enumerate(data))
