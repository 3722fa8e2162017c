"""Entropy coding of small integer symbols: static per-context models under ANS.

A frame holds one or more *streams* of symbols in ``[0, alphabet)``, each symbol with an
optional *context* (for soft labels: its class column) that both sides know before the
stream is read. Each stream is coded either with one model (*pooled*) or with one model
per context, whichever frame is smaller (the encoder codes both and keeps the shorter:
integer sizes, so the choice is the same on every machine). A model is the stream's
empirical histogram, sent first in the frame itself:

* ``k``, the number of distinct symbols, and the largest one; the others as presence bits
  under a Bernoulli model with P(present) = (k - 1) / largest, so the set costs about
  log2 binomial(largest, k - 1) bits;
* each count as its bit length (uniform over the lengths up to the context's size) and its
  top :data:`MANTISSA_BITS` bits below the leading one (counts below 8 are exact; larger
  ones are off by less than 1/16, which costs under 0.3 % above the empirical entropy);
* then the symbols as ranks among the present ones (a context with one distinct symbol
  costs nothing more).

Everything, headers included, is one ANS stack (``constriction``'s ``AnsCoder``, 32-bit
words, 24-bit probabilities) sent as little-endian 32-bit words, so a frame costs the
order-0 entropy of each context plus its header and at most a word of rounding. Why
static models rather than adaptive ones: decoding is a few vectorised calls per context
instead of one call per symbol, and the header is about what an adaptive model would
spend learning the same histogram.

Decoding is total: every word sequence decodes to symbols within the declared alphabets,
so a corrupt frame is caught by what does not add up (a presence set of the wrong size,
words left over, a frame that is not whole words, words ending in zero) and raises
:class:`~shared.errors.DecodeError`. Sizes come from the caller, never from the frame,
so nothing allocated depends on what the frame declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import constriction
import numpy as np
import numpy.typing as npt

from shared.errors import DecodeError

__all__ = ["MANTISSA_BITS", "MAX_ALPHABET", "SymbolReader", "SymbolWriter"]

MANTISSA_BITS = 3
MAX_ALPHABET = 1 << 16  # far above the 511 symbols of q8 deltas; keeps every model small
_RARE_THRESHOLDS = (1, 2, 4)  # escape candidates: symbols seen at most this often

_I32 = npt.NDArray[np.int32]
_I64 = npt.NDArray[np.int64]
_Model: TypeAlias = Any  # a constriction model (the package ships no type information)
_Op = tuple[_I32, _Model]  # symbols and the model they are coded with, in decode order


def _uniform(size: int) -> _Model:
    return constriction.stream.model.Uniform(size)


def _categorical(weights: npt.NDArray[np.float64]) -> _Model:
    # perfect=False: the fast, documented quantisation (the default changes between
    # versions; naming it keeps frames the same)
    return constriction.stream.model.Categorical(weights, perfect=False)


@dataclass(frozen=True, slots=True)
class _Stream:
    symbols: _I64
    alphabet: int
    order: _I64  # positions grouped by context, stable: the order symbols are coded in
    sizes: _I64  # symbols per context


def _check_stream(
    count: int, alphabet: int, contexts: _I64 | None, num_contexts: int
) -> tuple[_I64, _I64]:
    """(order, sizes) of a stream, after checking its description (ValueError)."""
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet must lie in 1..{MAX_ALPHABET}, got {alphabet}")
    if num_contexts < 1:
        raise ValueError(f"num_contexts must be >= 1, got {num_contexts}")
    if contexts is None:
        return np.arange(count, dtype=np.int64), np.array([count], dtype=np.int64)
    contexts = np.asarray(contexts)
    if contexts.shape != (count,) or contexts.dtype.kind not in "iu":
        raise ValueError(f"contexts: expected {count} integers, got {contexts.shape}")
    if count and (contexts.min() < 0 or contexts.max() >= num_contexts):
        raise ValueError(f"contexts must lie in [0, {num_contexts})")
    order = np.argsort(contexts, kind="stable").astype(np.int64)
    return order, np.bincount(contexts, minlength=num_contexts).astype(np.int64)


class SymbolWriter:
    """Collects streams of symbols, then codes them into one frame (:meth:`finish`)."""

    def __init__(self) -> None:
        self._ops: list[_Op] = []

    def add(
        self,
        symbols: npt.ArrayLike,
        alphabet: int,
        contexts: npt.ArrayLike | None = None,
        num_contexts: int = 1,
    ) -> None:
        """Append a stream; a reader reads it back with the same description.

        Args:
            symbols: 1-D integers in ``[0, alphabet)``.
            alphabet: 1..65,536.
            contexts: per symbol, its context in ``[0, num_contexts)``; None: one context.
            num_contexts: how many contexts there are.

        Raises:
            ValueError: for symbols or contexts out of range or of the wrong shape.
        """
        values = np.asarray(symbols)
        if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
            raise ValueError(f"symbols: expected a 1-D integer array, got {values.shape}")
        values = values.astype(np.int64)
        order, sizes = _check_stream(values.size, alphabet, _as_contexts(contexts), num_contexts)
        if values.size and (values.min() < 0 or values.max() >= alphabet):
            raise ValueError(f"symbols must lie in [0, {alphabet})")
        stream = _Stream(values, alphabet, order, sizes)
        pooled = _pooled_ops(stream)
        if sizes.size == 1:
            self._ops += pooled
            return
        split = _split_ops(stream)
        # the smaller frame wins; sizes are integers, so the choice is the same everywhere
        use_split = _bits(split) < _bits(pooled)
        self._ops += [_flag(use_split)] + (split if use_split else pooled)

    def finish(self) -> bytes:
        """The frame: all streams added so far, as little-endian 32-bit words."""
        coder = constriction.stream.stack.AnsCoder()
        for symbols, model in reversed(self._ops):  # a stack: the last pushed is read first
            coder.encode_reverse(symbols, model)
        return bytes(coder.get_compressed().astype("<u4").tobytes())


class SymbolReader:
    """Reads the streams of one frame back, in the order they were added.

    Raises:
        DecodeError: when ``data`` is not whole 32-bit words or ends in a zero word.
    """

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise DecodeError(f"data: {len(data)} bytes, not whole 32-bit words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        if words.size and words[-1] == 0:
            raise DecodeError("data: an ANS frame never ends in a zero word")
        self._coder = constriction.stream.stack.AnsCoder(words)

    def read(
        self,
        count: int,
        alphabet: int,
        contexts: npt.ArrayLike | None = None,
        num_contexts: int = 1,
    ) -> _I64:
        """The next stream: ``count`` symbols, described as when it was added.

        Raises:
            ValueError: for a description out of range (the caller's, not the frame's).
            DecodeError: for a model header that does not add up.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        order, sizes = _check_stream(count, alphabet, _as_contexts(contexts), num_contexts)
        split = sizes.size > 1 and bool(self._decode(1, _uniform(2))[0])
        symbols = np.zeros(count, dtype=np.int64)
        if split:
            start = 0
            for size in sizes.tolist():
                chunk = order[start : start + size]
                symbols[chunk] = self._read_context(size, alphabet)
                start += size
        else:
            symbols[order] = self._read_context(count, alphabet)
        return symbols

    def finish(self) -> None:
        """Check that the frame held nothing more than what was read.

        Raises:
            DecodeError: when words are left over.
        """
        if not self._coder.is_empty():
            raise DecodeError("data: the ANS frame holds more than its streams")

    def _decode(self, count: int, model: _Model) -> _I64:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._coder.decode(model, count), dtype=np.int64)

    def _read_context(self, size: int, alphabet: int) -> _I64:
        """One context's model header, then its symbols (inverse of :func:`_model_ops`)."""
        if size == 0:
            return np.zeros(0, dtype=np.int64)
        distinct = 1 + _read_uniform(self, min(alphabet, size))
        explicit = self._read_present(distinct, alphabet)
        has_escape = size > distinct and bool(self._decode(1, _uniform(2))[0])
        top = _read_uniform(self, alphabet) if has_escape else 0
        if distinct == 1 and not has_escape:
            return np.full(size, explicit[0], dtype=np.int64)
        weights = self._read_counts(distinct + has_escape, size)
        ranks = self._decode(size, _categorical(weights))
        values = np.append(explicit, 0)[ranks]
        escapes = np.flatnonzero(ranks == distinct)
        if top > 0:
            values[escapes] = self._decode(escapes.size, _uniform(top + 1))
        return values

    def _read_present(self, distinct: int, alphabet: int) -> _I64:
        if distinct == alphabet:
            return np.arange(alphabet, dtype=np.int64)
        largest = distinct - 1 + _read_uniform(self, alphabet - distinct + 1)
        others = distinct - 1
        if others in (0, largest):
            below = np.arange(others, dtype=np.int64)
        else:
            bits = self._decode(largest, _bernoulli(largest, others))
            below = np.flatnonzero(bits).astype(np.int64)
            if below.size != others:
                raise DecodeError(
                    f"data: a model lists {below.size} symbols, its header says {others}"
                )
        return np.append(below, largest)

    def _read_counts(self, distinct: int, size: int) -> npt.NDArray[np.float64]:
        lengths = self._decode(distinct, _uniform(size.bit_length())) + 1
        return _weights(lengths, self._read_mantissas(lengths))

    def _read_mantissas(self, lengths: _I64) -> _I64:
        widths = np.minimum(lengths - 1, MANTISSA_BITS)
        mantissas = np.zeros(lengths.size, dtype=np.int64)
        for width in range(1, MANTISSA_BITS + 1):
            where = np.flatnonzero(widths == width)
            mantissas[where] = self._decode(where.size, _uniform(1 << width))
        return mantissas


def _as_contexts(contexts: npt.ArrayLike | None) -> _I64 | None:
    return None if contexts is None else np.asarray(contexts)


def _read_uniform(reader: SymbolReader, size: int) -> int:
    """One value in [0, size): nothing is coded when size is 1."""
    return 0 if size == 1 else int(reader._decode(1, _uniform(size))[0])


def _flag(value: bool) -> _Op:
    return np.array([int(value)], dtype=np.int32), _uniform(2)


def _bernoulli(positions: int, ones: int) -> _Model:
    return _categorical(np.array([positions - ones, ones], dtype=np.float64))


def _pooled_ops(stream: _Stream) -> list[_Op]:
    return _context_ops(stream.symbols[stream.order], stream.alphabet)


def _split_ops(stream: _Stream) -> list[_Op]:
    ops: list[_Op] = []
    start = 0
    for size in stream.sizes.tolist():
        ops += _context_ops(stream.symbols[stream.order[start : start + size]], stream.alphabet)
        start += size
    return ops


def _context_ops(symbols: _I64, alphabet: int) -> list[_Op]:
    """One context: its model header (see the module docstring), then its symbols.

    Symbols seen at most ``rare`` times may go out as an escape and a uniform value
    instead of entries of their own: a value seen once costs about 7 header bits as an
    entry, about log2 of the escaped range as an escape. The encoder tries a few
    thresholds and keeps the shortest (integer sizes: the same choice everywhere).
    """
    if symbols.size == 0:
        return []
    present, ranks, counts = np.unique(symbols, return_inverse=True, return_counts=True)
    candidates = [_model_ops(symbols, alphabet, present, ranks.reshape(-1), counts, 0)]
    for rare in _RARE_THRESHOLDS:
        escaped = counts <= rare
        if escaped.any() and not escaped.all():
            candidates.append(
                _model_ops(symbols, alphabet, present, ranks.reshape(-1), counts, rare)
            )
    if len(candidates) == 1:
        return candidates[0]
    sizes = [_bits(ops) for ops in candidates]
    return candidates[sizes.index(min(sizes))]


def _model_ops(
    symbols: _I64, alphabet: int, present: _I64, ranks: _I64, counts: _I64, rare: int
) -> list[_Op]:
    escaped = counts <= rare
    explicit = present[~escaped]
    distinct, size = int(explicit.size), int(symbols.size)
    ops: list[_Op] = []
    _push_uniform(ops, distinct - 1, min(alphabet, size))
    if distinct < alphabet:
        largest = int(explicit[-1])
        _push_uniform(ops, largest - (distinct - 1), alphabet - distinct + 1)
        if distinct - 1 not in (0, largest):
            bits = np.zeros(largest, dtype=np.int32)
            bits[explicit[:-1]] = 1
            ops.append((bits, _bernoulli(largest, distinct - 1)))
    has_escape = bool(escaped.any())
    if size > distinct:  # an escape is possible only when some symbol repeats or is rare
        ops.append(_flag(has_escape))
    weights_of = counts[~escaped].astype(np.int64)
    if has_escape:
        escape_values = present[escaped]
        top = int(escape_values[-1])
        _push_uniform(ops, top, alphabet)
        weights_of = np.append(weights_of, int(counts[escaped].sum()))
    if weights_of.size == 1:
        return ops + _escape_value_ops(symbols, present, ranks, escaped, has_escape)
    lengths = np.array([int(count).bit_length() for count in weights_of.tolist()], dtype=np.int64)
    ops.append(((lengths - 1).astype(np.int32), _uniform(size.bit_length())))
    shifts = np.maximum(lengths - 1 - MANTISSA_BITS, 0)
    mantissas = (weights_of >> shifts) - (np.int64(1) << (lengths - 1 - shifts))
    widths = lengths - 1 - shifts
    for width in range(1, MANTISSA_BITS + 1):
        where = np.flatnonzero(widths == width)
        if where.size:
            ops.append((mantissas[where].astype(np.int32), _uniform(1 << width)))
    # explicit symbols keep their rank among the explicit ones; escapes take rank `distinct`
    rank_of = np.full(present.size, distinct, dtype=np.int64)
    rank_of[~escaped] = np.arange(distinct)
    ops.append((rank_of[ranks].astype(np.int32), _categorical(_weights(lengths, mantissas))))
    return ops + _escape_value_ops(symbols, present, ranks, escaped, has_escape)


def _escape_value_ops(
    symbols: _I64, present: _I64, ranks: _I64, escaped: npt.NDArray[np.bool_], has_escape: bool
) -> list[_Op]:
    if not has_escape:
        return []
    top = int(present[escaped][-1])
    values = symbols[escaped[ranks]]
    return [(values.astype(np.int32), _uniform(top + 1))] if top > 0 else []


def _push_uniform(ops: list[_Op], value: int, size: int) -> None:
    if size > 1:
        ops.append((np.array([value], dtype=np.int32), _uniform(size)))


def _weights(lengths: _I64, mantissas: _I64) -> npt.NDArray[np.float64]:
    """The counts as the decoder knows them.

    Exact below 2**(MANTISSA_BITS + 1), else the middle of the interval the kept bits
    leave; every value is exact in float64.
    """
    shifts = np.maximum(lengths - 1 - MANTISSA_BITS, 0)
    top = (np.int64(1) << (lengths - 1 - shifts)) + mantissas
    counts = (top << shifts) + np.where(shifts > 0, np.int64(1) << np.maximum(shifts - 1, 0), 0)
    return counts.astype(np.float64)


def _bits(ops: list[_Op]) -> int:
    coder = constriction.stream.stack.AnsCoder()
    for symbols, model in reversed(ops):
        coder.encode_reverse(symbols, model)
    return int(coder.num_valid_bits())
