"""Sum-preserving quantization of probability rows onto the grid 1/L, L = 2**bits - 1.

Each row is normalized in float64, scaled by L and rounded by largest remainders
(Hamilton's method), so its codes sum exactly to L; dequantization is codes / L in
float32. :func:`quantize_simplex` and :func:`dequantize_simplex` are the checked
forms; the soft-label codec (:mod:`shared.protocol.softlabels`) uses the numpy kernels
:func:`quantize_rows`, :func:`dequantize_codes`, :func:`normalize_rows` and
:func:`float_rows` directly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shared.arrays import AnyArray, IndexArray, LabelArray

__all__ = [
    "dequantize_codes",
    "dequantize_simplex",
    "float_rows",
    "normalize_rows",
    "quantize_rows",
    "quantize_simplex",
]

_F32 = LabelArray
_I64 = IndexArray


def quantize_simplex(probs: AnyArray, bits: int) -> IndexArray:
    """Sum-preserving quantization of probability rows to ``bits``-bit integer codes.

    Each row is normalized (float64), scaled by L = 2**bits - 1 and floored; the missing
    units go to the largest remainders, ties to the lower class index (Hamilton's method).
    Every code is therefore the floor or the ceiling of L p, so |code / L - p| < 1 / L.

    Args:
        probs: (N, C) finite, non-negative rows with a positive sum.
        bits: 2..8.

    Returns:
        (N, C) int64 codes in [0, L], each row summing exactly to L.

    Raises:
        ValueError: on a bad shape, bits, negative or non-finite values, or an all-zero row.
    """
    _check_bits(bits)
    return quantize_rows(normalize_rows(float_rows(probs, "probs")), (1 << bits) - 1)


def dequantize_simplex(codes: AnyArray, bits: int) -> LabelArray:
    """Codes / L as float32: the exact inverse map of :func:`quantize_simplex`'s grid.

    Args:
        codes: (N, C) integer codes in [0, L], rows summing to L = 2**bits - 1.
        bits: 2..8.

    Returns:
        (N, C) float32 rows on the simplex (sums within 2**-24 of 1).

    Raises:
        ValueError: on a bad shape, codes out of range, or rows not summing to L.
    """
    _check_bits(bits)
    levels = (1 << bits) - 1
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise ValueError(f"codes: expected an (N, C) integer array, got {codes.dtype}")
    values = codes.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > levels):
        raise ValueError(f"codes: values must lie in [0, {levels}]")
    if np.any(values.sum(axis=1) != levels):
        raise ValueError(f"codes: rows must sum to {levels}")
    return dequantize_codes(values, levels)


def quantize_rows(values: npt.NDArray[np.float64], levels: int) -> _I64:
    """Largest-remainder rounding of (N, C) rows that sum to 1 onto the grid 1/L.

    Returns:
        (N, C) int64 codes in [0, L = ``levels``], each row summing exactly to L.
    """
    scaled = values * levels
    floors = np.floor(scaled)
    missing = levels - floors.sum(axis=1).astype(np.int64)  # in [0, C] for rows summing to 1
    order = np.argsort(floors - scaled, axis=1, kind="stable")  # largest remainder first
    bonus = np.zeros_like(order)
    ranks = np.broadcast_to(np.arange(values.shape[1]), order.shape)
    np.put_along_axis(bonus, order, ranks < missing[:, None], axis=1)
    return floors.astype(np.int64) + bonus


def dequantize_codes(codes: _I64, levels: int) -> _F32:
    """(N, C) codes / L as float32, unchecked (:func:`dequantize_simplex` checks)."""
    return (codes / levels).astype(np.float32)


def float_rows(array: AnyArray, field: str) -> _F32:
    """``array`` as (N, C) float32 rows, C >= 1 (the array itself when it is float32).

    Raises:
        ValueError: naming ``field``, for a bad shape or dtype, or negative or non-finite
            values.
    """
    if array.ndim != 2 or array.dtype.kind != "f":
        raise ValueError(f"{field}: expected an (N, C) float array, got {array.dtype}")
    if array.shape[1] < 1:
        raise ValueError(f"{field}: need at least one class")
    values: _F32 = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"{field}: values must be finite and non-negative")
    return values


def normalize_rows(values: _F32) -> npt.NDArray[np.float64]:
    """Rows divided by their float64 sums: quantize_rows needs sums of 1 to within float64.

    Raises:
        ValueError: when a row sums to 0.
    """
    sums = values.sum(axis=1, keepdims=True, dtype=np.float64)
    if np.any(sums <= 0):
        raise ValueError("every row needs a positive sum")
    normalized: npt.NDArray[np.float64] = values / sums
    return normalized


def _check_bits(bits: int) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must lie in 2..8, got {bits}")
