"""A client's saved state as bytes, its cache replica kept compact.

:meth:`ClientRuntime.state_dict` holds the replica densely: (|P|, C) float32 labels and
(|P|,) int64 written rounds, 480 KB at |P| = 10,000 and C = 10, whatever the client
holds. Under partial participation a client holds entries only from the rounds it took
part in, so the blob stores just the rows that are written or non-zero (their indices,
labels and rounds) and the replica's shape; :func:`unpack_client_state` rebuilds the
dense arrays bit for bit, so the restored runtime is exactly the one that was saved.

Blobs written before this format (dense ``cache.labels`` / ``cache.written``) load as
they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared.arrays import AnyArray
from shared.cache_policy import NEVER
from shared.errors import DecodeError
from shared.protocol.tensors import decode_tensor_map, encode_tensor_map

__all__ = ["pack_client_state", "unpack_client_state"]

_LABELS, _WRITTEN = "cache.labels", "cache.written"
_SHAPE, _ROWS = "cache.shape", "cache.rows"
_ROW_LABELS, _ROW_WRITTEN = "cache.row_labels", "cache.row_written"


def pack_client_state(state: Mapping[str, AnyArray]) -> bytes:
    """Encode a runtime's ``state_dict()``, the replica as its non-empty rows only."""
    if _LABELS not in state or _WRITTEN not in state:
        return encode_tensor_map(state)  # no cache (DS-FL, CFD): nothing to compact
    labels, written = state[_LABELS], state[_WRITTEN]
    # a row is kept when written or non-zero: empty rows are zeros by the cache rules,
    # but the blob must restore what was saved even where that did not hold
    rows = np.flatnonzero((written != NEVER) | labels.any(axis=1))
    compact = {k: v for k, v in state.items() if k not in (_LABELS, _WRITTEN)}
    compact[_SHAPE] = np.array(labels.shape, dtype=np.int64)
    compact[_ROWS] = rows.astype(np.int64)
    compact[_ROW_LABELS] = labels[rows]
    compact[_ROW_WRITTEN] = written[rows]
    return encode_tensor_map(compact)


def unpack_client_state(blob: bytes) -> dict[str, AnyArray]:
    """Decode what :func:`pack_client_state` wrote (or an older dense blob).

    Raises:
        DecodeError: a blob that is not a tensor map, or a compact replica that does not fit
            its shape.
    """
    state = decode_tensor_map(blob)
    if _SHAPE not in state:
        return state
    shape, rows = state.pop(_SHAPE), state.pop(_ROWS)
    row_labels, row_written = state.pop(_ROW_LABELS), state.pop(_ROW_WRITTEN)
    if shape.shape != (2,) or (shape < 0).any():
        raise DecodeError(f"client state: replica shape {shape.tolist()} is not (|P|, C)")
    size, classes = (int(v) for v in shape)
    if (
        rows.ndim != 1
        or row_labels.shape != (len(rows), classes)
        or row_written.shape != (len(rows),)
        or (len(rows) and (rows.min() < 0 or rows.max() >= size))
    ):
        raise DecodeError(f"client state: replica rows do not fit a ({size}, {classes}) cache")
    labels = np.zeros((size, classes), dtype=row_labels.dtype)
    written = np.full(size, NEVER, dtype=row_written.dtype)
    labels[rows], written[rows] = row_labels, row_written
    state[_LABELS], state[_WRITTEN] = labels, written
    return state
