"""The ``ans`` layout of quant soft labels: every symbol entropy-coded under its class's model.

The symbols are those of the other layouts (:mod:`shared.protocol.softlabels`): per row,
the C - 1 codes (or zig-zag deltas) left after dropping the redundant entry, and, without
delta, the column that was dropped (the row's argmax). They go into one
:mod:`shared.protocol.entropy` frame as two streams: the dropped columns (alphabet C, one
model; absent with delta, where both sides know them from the reference), then the codes
with their class column as context, so each class may get a model of its own. Why
per-class: a class's codes follow its own distribution (a weak model's near-uniform rows
put each class near its own value), which one pooled histogram cannot see; the encoder
keeps pooled models where splitting does not pay for its headers.
"""

from __future__ import annotations

import numpy as np

from shared.arrays import IndexArray
from shared.protocol.entropy import SymbolReader, SymbolWriter

__all__ = ["decode_ans_layout", "encode_ans_layout"]


def encode_ans_layout(
    symbols: IndexArray, dropped: IndexArray, c: int, bits: int, *, delta: bool
) -> bytes:
    """One frame of the N * (C - 1) ``symbols`` (row-major, each row without ``dropped``).

    Args:
        symbols: the kept codes in [0, L], or with ``delta`` zig-zag deltas in [0, 2 L].
        dropped: (N,) the column dropped from each row, coded too unless ``delta`` (where
            the receiver knows it from the reference).
        c: C, the row length.
        bits: the code width; L = 2**bits - 1.
        delta: whether the symbols are deltas.
    """
    writer = SymbolWriter()
    if not delta:
        writer.add(dropped, c)
    writer.add(symbols, _alphabet(bits, delta), _kept_columns(dropped, c), c)
    return writer.finish()


def decode_ans_layout(
    data: bytes, n: int, c: int, bits: int, dropped: IndexArray | None
) -> tuple[IndexArray, IndexArray]:
    """(dropped, symbols) from a frame of :func:`encode_ans_layout`.

    Args:
        data: the frame.
        n: N, checked by the caller against its bound.
        c: C.
        bits: as for :func:`encode_ans_layout`.
        dropped: the dropped columns when the receiver knows them (delta), else None:
            read from the frame (and the symbols are codes, not deltas).

    Raises:
        DecodeError: for a frame that is not one of :func:`encode_ans_layout`'s.
    """
    reader = SymbolReader(data)
    columns = reader.read(n, c) if dropped is None else dropped
    alphabet = _alphabet(bits, delta=dropped is not None)
    symbols = reader.read(n * (c - 1), alphabet, _kept_columns(columns, c), c)
    reader.finish()
    return columns, symbols


def _alphabet(bits: int, delta: bool) -> int:
    levels = (1 << bits) - 1
    return 2 * levels + 1 if delta else levels + 1  # zig-zag deltas lie in [0, 2 L]


def _kept_columns(dropped: IndexArray, c: int) -> IndexArray:
    """The class column of each kept symbol, row-major (C - 1 a row)."""
    keep = np.ones((dropped.size, c), dtype=np.bool_)
    keep[np.arange(dropped.size), dropped] = False
    return np.nonzero(keep)[1].astype(np.int64)
