"""Soft-label matrix codec: float32, float16, or sum-preserving quantization of the simplex.

A payload is a msgpack-ready map that describes itself::

    {"spec": "q8+delta+zstd", "n": N, "c": C, "layout": "sparse", "nnz": K, "data": b"..."}

``layout`` is ``raw`` for f32/f16 (little-endian ``<f4``/``<f2``, row-major), ``dense``
or ``sparse`` for quant, and ``ans`` for quant with ``+ans``; ``nnz`` appears only with
``sparse``. With ``zstd`` the data are one zstd frame that must declare its content size
(empty data travel without a frame).

Quant codes each row as ints summing exactly to L = 2**bits - 1 (:func:`quantize_simplex`).
One entry per row is redundant (it is L minus the others), so it is dropped: without delta
the row's argmax, whose column is sent in ceil(log2 C) bits; with delta the argmax column
of the reference row, which both sides know, so it costs nothing. The remaining N * (C - 1)
symbols (codes, or zig-zag deltas q - q_ref of bits + 1 bits) go out in whichever layout is
smaller, measured after zstd when zstd is on:

* ``dense``: every symbol packed with its exact width;
* ``sparse``: the non-zero symbols minus 1, packed, then the set of their positions as an
  :mod:`~shared.protocol.indexsets` set encoding (Elias-Fano, bitmap or gaps);
* ``ans`` (``+ans`` only, instead of the two above): the dropped columns and the symbols
  entropy-coded under per-class models (:mod:`~shared.protocol.softlabel_ans`), within a
  few percent of their order-0 entropy where zstd spends 20-30 % more (DECISIONS §30).

Why: soft labels are peaked, so most codes (and almost all deltas) are 0. On a digits CNN's
soft labels (1,000 x 10, ``python -m bench.codec``) dropping the redundant entry saves 13%
(q8) to 38% (q2+delta+zstd), 19% for q8+zstd; sparse wins for every setting measured there;
a delta of zero costs 2 bytes (11 with zstd) for the whole matrix.

The decoder checks types, the spec, N against ``max_rows`` and C against ``num_classes``,
and every length against what N, C and the bits allow before it allocates or decompresses
anything (a zstd frame's declared size is checked against that bound, and decompression is
capped by it). It raises only :class:`~shared.errors.DecodeError` and, for N over
``max_rows``, :class:`~shared.errors.MessageTooLarge`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from shared.arrays import AnyArray, IndexArray, LabelArray
from shared.errors import DecodeError, MessageTooLarge
from shared.protocol.codec_spec import CodecSpec
from shared.protocol.indexsets import (
    decode_codes,
    decode_index_set,
    encode_codes,
    encode_index_set,
)
from shared.protocol.simplex import (
    dequantize_codes,
    dequantize_simplex,
    float_rows,
    normalize_rows,
    quantize_rows,
    quantize_simplex,
)
from shared.protocol.softlabel_ans import decode_ans_layout, encode_ans_layout
from shared.protocol.zstd_frames import compress_data, decompress_data

__all__ = [
    "CodecSpec",
    "decode_soft_labels",
    "dequantize_simplex",
    "encode_soft_labels",
    "quantize_simplex",
    "roundtrip",
]

_F32 = LabelArray
_I64 = IndexArray

_ACCEPT_TOLERANCE = 1e-3  # largest |row sum - 1| accepted from an encoder's float input
# decoded float rows whose float64 sum is this close to 1 pass unchanged, so f32 is exact
# for torch's float32 softmax rows (measured up to 7e-7 off, C = 10..1000)
_PASS_TOLERANCE = 1e-6
# f16 carries half-precision values exactly (no renormalization on decode), so that its
# round trip is a projection: re-encoding decoded rows gives the same rows bit for bit,
# and a cache of decoded values can be sent again (replicas stay exact). Rounding moves a
# row's sum by at most 2**-11 + C 2**-25 (unit roundoff, subnormal spacing). The encoder
# normalizes (float64) only rows further than _F16_PRENORMALIZE from 1, so the f16 rows of
# any normalized input (within 4.9e-4 for C < 3,000) are left alone when sent again, and
# every row it emits sums to 1 within 6e-4 + 4.9e-4 + C 2**-25 < _F16_ACCEPT_TOLERANCE.
_F16_PRENORMALIZE = 6e-4
_F16_ACCEPT_TOLERANCE = 1.5e-3


def encode_soft_labels(
    probs: AnyArray, spec: CodecSpec, reference: AnyArray | None = None
) -> dict[str, object]:
    """Encode soft labels as a self-describing msgpack-ready map (see the module docstring).

    Args:
        probs: (N, C) float rows on the simplex (sums within 1e-3 of 1), cast to float32.
        spec: the codec.
        reference: (N, C) rows both sides hold, used only with ``spec.delta``; None means
            the uniform rows 1/C. Pass the values the receiver holds bit for bit (normally
            an earlier :func:`roundtrip` result).

    Returns:
        ``{"spec", "n", "c", "layout", ["nnz"], "data"}`` with str, int and bytes values.

    Raises:
        ValueError: for rows off the simplex, or a reference of the wrong shape.
    """
    values = _simplex_rows(probs)
    n, c = values.shape
    header: dict[str, object] = {"spec": str(spec), "n": n, "c": c}
    if spec.kind == "f16":
        return header | {"layout": "raw", "data": compress_data(_half_rows(values).tobytes(), spec)}
    if spec.kind != "quant":
        raw = values.astype("<f4").tobytes()
        return header | {"layout": "raw", "data": compress_data(raw, spec)}
    codes = quantize_rows(normalize_rows(values), (1 << spec.bits) - 1)
    if spec.delta:
        base = _reference_codes(reference, n, c, spec.bits, ValueError)
        dropped = base.argmax(axis=1)
        prefix, symbols = b"", _zigzag(_drop(codes - base, dropped))
    else:
        dropped = codes.argmax(axis=1)
        prefix, symbols = _encode(dropped, _argmax_bits(c)), _drop(codes, dropped)
    if spec.entropy == "ans":
        frame = encode_ans_layout(symbols, dropped, c, spec.bits, delta=spec.delta)
        return header | {"layout": "ans", "data": frame}
    return header | _smaller_layout(prefix, symbols, spec)


def decode_soft_labels(
    payload: Mapping[str, object],
    *,
    reference: AnyArray | None = None,
    max_rows: int,
    num_classes: int,
) -> LabelArray:
    """Decode and validate a payload of :func:`encode_soft_labels`.

    Args:
        payload: the map as unpacked from msgpack.
        reference: the (N, C) rows the encoder used with delta (None: uniform).
        max_rows: the largest accepted N.
        num_classes: the required C.

    Returns:
        (N, C) float32, rows non-negative. f32 and quant rows sum to 1 within 1e-6 (f32
        rows whose float64 sum is off by more than 1e-6, but at most 1e-3, are
        renormalized); f16 rows are the half-precision values exactly, summing to 1 within
        1.5e-3 (within 2**-11 + C 2**-25 + 1e-6 for normalized input to the encoder).

    Raises:
        ValueError: when max_rows < 0 or num_classes < 1 (arguments, not the payload).
        DecodeError: naming the field, for a wrong type, unknown or missing key, bad spec,
            C != num_classes, a length inconsistent with N, C and the bits, a bad zstd
            frame, codes out of range, non-finite or negative values, row sums off by more
            than 1e-3, or a reference whose shape is not (N, C).
        MessageTooLarge: when N > max_rows.
    """
    if max_rows < 0 or num_classes < 1:
        raise ValueError(f"need max_rows >= 0 and num_classes >= 1, got {max_rows}, {num_classes}")
    spec, n, c, layout = _read_header(payload, max_rows, num_classes)
    data = payload["data"]
    if not isinstance(data, bytes):
        raise DecodeError(f"data: expected bytes, got {type(data).__name__}")
    if spec.kind != "quant":
        itemsize = 4 if spec.kind == "f32" else 2
        raw = decompress_data(data, spec, n * c * itemsize, exact=True)
        values = np.frombuffer(raw, "<f4" if itemsize == 4 else "<f2").astype(np.float32)
        if spec.kind == "f16":
            return _checked_float_rows(values.reshape(n, c), _F16_ACCEPT_TOLERANCE)
        return _finish_rows(_checked_float_rows(values.reshape(n, c)))
    return _decode_quant(payload, data, spec, n, c, layout, reference)


def roundtrip(probs: AnyArray, spec: CodecSpec, reference: AnyArray | None = None) -> LabelArray:
    """What the receiver decodes, bit for bit, computed without the bytes.

    Args:
        probs: as for :func:`encode_soft_labels`.
        spec: the codec.
        reference: as for :func:`encode_soft_labels` (quantization does not depend on it,
            but its shape is checked the same way).

    Returns:
        (N, C) float32 equal to ``decode_soft_labels(encode_soft_labels(...))``.

    Raises:
        ValueError: as :func:`encode_soft_labels`.
    """
    values = _simplex_rows(probs)
    if spec.kind == "f32":
        return _finish_rows(values.copy())
    if spec.kind == "f16":
        return _half_rows(values).astype(np.float32)
    if spec.delta:
        _reference_codes(reference, len(values), values.shape[1], spec.bits, ValueError)
    levels = (1 << spec.bits) - 1
    return dequantize_codes(quantize_rows(normalize_rows(values), levels), levels)


def _smaller_layout(prefix: bytes, symbols: _I64, spec: CodecSpec) -> dict[str, object]:
    """The payload fields of the dense or the sparse layout, whichever is smaller."""
    width = spec.bits + spec.delta  # zig-zag deltas lie in [0, 2 L]: one bit more
    nonzero = np.flatnonzero(symbols)
    sparse = _encode(symbols[nonzero] - 1, width)
    sparse += encode_index_set(nonzero, symbols.size)
    dense = compress_data(prefix + _encode(symbols, width), spec)
    sparse = compress_data(prefix + sparse, spec)
    if len(dense) <= len(sparse):
        return {"layout": "dense", "data": dense}
    return {"layout": "sparse", "nnz": int(nonzero.size), "data": sparse}


def _read_header(
    payload: Mapping[str, object], max_rows: int, num_classes: int
) -> tuple[CodecSpec, int, int, str]:
    if not isinstance(payload, Mapping):
        raise DecodeError(f"soft labels: expected a map, got {type(payload).__name__}")
    text = payload.get("spec")
    if not isinstance(text, str) or len(text) > 32:
        raise DecodeError("spec: expected a codec spec string")
    try:
        spec = CodecSpec.parse(text)
    except ValueError as error:
        raise DecodeError(f"spec: {error}") from None
    layout = payload.get("layout")
    quant_layouts = ("ans",) if spec.entropy == "ans" else ("dense", "sparse")
    allowed = ("raw",) if spec.kind != "quant" else quant_layouts
    if layout not in allowed:
        raise DecodeError(f"layout: expected one of {allowed} for {text}, got {layout!r}")
    keys = {"spec", "n", "c", "layout", "data"} | ({"nnz"} if layout == "sparse" else set())
    if set(payload) != keys:
        raise DecodeError(
            f"soft labels: fields {sorted(map(str, payload))}, expected {sorted(keys)}"
        )
    n, c = _int_field(payload, "n"), _int_field(payload, "c")
    if n > max_rows:
        raise MessageTooLarge(f"n: {n} rows, more than {max_rows}")
    if c != num_classes:
        raise DecodeError(f"c: {c} classes, expected {num_classes}")
    return spec, n, c, str(layout)


def _decode_quant(
    payload: Mapping[str, object],
    data: bytes,
    spec: CodecSpec,
    n: int,
    c: int,
    layout: str,
    reference: AnyArray | None,
) -> _F32:
    levels, width, count = (1 << spec.bits) - 1, spec.bits + spec.delta, n * (c - 1)
    prefix = 0 if spec.delta else (n * _argmax_bits(c) + 7) // 8
    base = _reference_codes(reference, n, c, spec.bits, DecodeError) if spec.delta else None
    argmax: _I64 | None = None
    if layout == "ans":
        known = None if base is None else base.argmax(axis=1)
        argmax, symbols = decode_ans_layout(data, n, c, spec.bits, known)
    elif layout == "dense":
        raw = decompress_data(data, spec, prefix + (count * width + 7) // 8, exact=True)
        symbols = _decode(raw[prefix:], width, count)
    else:
        nnz = _int_field(payload, "nnz")
        if nnz > count:
            raise DecodeError(f"nnz: {nnz} non-zero symbols, more than the {count} coded")
        packed = (nnz * width + 7) // 8
        # the encoder's position set is never larger than its bitmap: 1 + ceil(count / 8)
        raw = decompress_data(data, spec, prefix + packed + 1 + (count + 7) // 8, exact=False)
        symbols = np.zeros(count, dtype=np.int64)
        try:
            positions = decode_index_set(raw[prefix + packed :], count, max_items=nnz)
        except (DecodeError, MessageTooLarge) as error:
            raise DecodeError(f"data: non-zero positions: {error}") from None
        if positions.size != nnz:
            raise DecodeError(f"data: {positions.size} non-zero positions, nnz says {nnz}")
        symbols[positions] = _decode(raw[prefix : prefix + packed], width, nnz) + 1
    if base is not None:
        codes = base + _undrop((symbols >> 1) ^ -(symbols & 1), base.argmax(axis=1), c, 0)
    else:
        if argmax is None:  # dense and sparse carry the argmax columns first, packed
            argmax = _decode(raw[:prefix], _argmax_bits(c), n)
        if argmax.size and argmax.max() >= c:
            raise DecodeError(f"data: argmax column out of range [0, {c})")
        codes = _undrop(symbols, argmax, c, levels)
    if codes.size and (codes.min() < 0 or codes.max() > levels):
        raise DecodeError(f"data: codes out of range [0, {levels}]")
    return dequantize_codes(codes, levels)


def _drop(matrix: _I64, columns: _I64) -> _I64:
    """(N, C) -> N * (C - 1) symbols, row-major, without each row's given column."""
    keep = np.ones(matrix.shape, dtype=np.bool_)
    keep[np.arange(matrix.shape[0]), columns] = False
    return matrix[keep]


def _undrop(symbols: _I64, columns: _I64, c: int, total: int) -> _I64:
    """Inverse of :func:`_drop`: the dropped entry makes each row sum to ``total``."""
    n = columns.size
    matrix = np.zeros((n, c), dtype=np.int64)
    keep = np.ones(matrix.shape, dtype=np.bool_)
    keep[np.arange(n), columns] = False
    matrix[keep] = symbols
    matrix[np.arange(n), columns] = total - matrix.sum(axis=1)
    return matrix


def _zigzag(values: _I64) -> _I64:
    return np.where(values >= 0, 2 * values, -2 * values - 1)


def _reference_codes(
    reference: AnyArray | None, n: int, c: int, bits: int, error: type[Exception]
) -> _I64:
    """Quantized reference rows; an earlier decoded value re-quantizes to its own codes."""
    if reference is None:
        return quantize_rows(np.full((n, c), 1.0 / c), (1 << bits) - 1)
    if tuple(reference.shape) != (n, c):
        raise error(f"reference: shape {tuple(reference.shape)}, expected ({n}, {c})")
    return quantize_rows(normalize_rows(float_rows(reference, "reference")), (1 << bits) - 1)


def _checked_float_rows(values: _F32, tolerance: float = _ACCEPT_TOLERANCE) -> _F32:
    if not np.all(np.isfinite(values)):
        raise DecodeError("data: non-finite probabilities")
    if np.any(values < 0):
        raise DecodeError("data: negative probabilities")
    if np.any(np.abs(values.sum(axis=1, dtype=np.float64) - 1) > tolerance):
        raise DecodeError(f"data: a row does not sum to 1 within {tolerance}")
    return values


def _finish_rows(values: _F32) -> _F32:
    """Renormalize, in place, the rows whose sum is off by more than _PASS_TOLERANCE.

    The float64 residual of a renormalized row goes into its largest entry, so its sum
    ends within 2**-25 + C 2**-53 of 1: a finished row passes unchanged when finished
    again, which keeps the f32 round trip a projection (replicas of decoded values stay
    exact when they are sent again) for any C.
    """
    sums = values.sum(axis=1, dtype=np.float64)
    off = np.flatnonzero(np.abs(sums - 1) > _PASS_TOLERANCE)
    if off.size:
        rows = (values[off] / sums[off, None]).astype(np.float32)
        top = rows.argmax(axis=1)
        residual = 1 - rows.sum(axis=1, dtype=np.float64)
        rows[np.arange(off.size), top] = (rows[np.arange(off.size), top] + residual).astype(
            np.float32
        )
        values[off] = rows
    return values


def _half_rows(values: _F32) -> npt.NDArray[np.float16]:
    """Rows rounded to little-endian float16, normalized first only when far off 1."""
    sums = values.sum(axis=1, keepdims=True, dtype=np.float64)
    far = np.abs(sums - 1) > _F16_PRENORMALIZE
    scaled = np.where(far, values / np.where(far, sums, 1.0), values)
    return scaled.astype("<f2")


def _simplex_rows(probs: AnyArray) -> _F32:
    values = float_rows(probs, "probs")
    if np.any(np.abs(values.sum(axis=1, dtype=np.float64) - 1) > _ACCEPT_TOLERANCE):
        raise ValueError(f"probs: rows must sum to 1 within {_ACCEPT_TOLERANCE}")
    return values


def _int_field(payload: Mapping[str, object], field: str) -> int:
    value = payload[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DecodeError(f"{field}: expected a non-negative int, got {value!r:.40}")
    return value


def _argmax_bits(c: int) -> int:
    return max(1, (c - 1).bit_length())


def _encode(values: _I64, width: int) -> bytes:
    return encode_codes(values, width)


def _decode(raw: bytes, width: int, count: int) -> _I64:
    try:
        return decode_codes(raw, width, count)
    except DecodeError as error:
        raise DecodeError(f"data: {error}") from None
