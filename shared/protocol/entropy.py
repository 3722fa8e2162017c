"""Entropy coding of small integer symbols: static per-context models under ANS.

A frame holds one or more *streams* of symbols in ``[0, alphabet)``, each symbol with an
optional *context* (for soft labels: its class column) that both sides know before the
stream is read. Each stream is coded either with one model (*pooled*) or with one model
per non-empty context (*split*), whichever frame is smaller: the encoder codes both and
keeps the shorter (integer sizes, so the choice is the same on every machine).

A model is its context's histogram, sent in the frame itself, before the symbols:

* ``k``, the number of *explicit* symbols, and the largest one; the others as presence
  bits under a Bernoulli model with P(present) = (k - 1) / largest, so the set costs
  about log2 binomial(largest, k - 1) bits;
* whether there is an *escape*: symbols seen at most 3 times go out as one escape symbol
  plus a value uniform on those of ``[0, top]`` without an entry, ``top`` the largest
  escaped value (unless every symbol or none is that rare): a value seen once costs
  about 7 header bits as an entry of its own, about log2(top + 1) as an escape;
* each count (the escape's too) as its bit length, uniform over the lengths up to the
  context's size, and its top :data:`MANTISSA_BITS` bits below the leading one (counts
  below 8 are exact; larger ones are off by at most 1/8, which costs well under 1 %
  above the empirical entropy);
* then the symbols as ranks among the explicit ones and the escape (a context with one
  explicit symbol and no escape costs nothing more), then the escaped values.

Every field goes out for all of a stream's models at once (all ``k``, then all largest
symbols, and so on), so decoding costs a handful of vectorised calls per stream and one
per model for its symbols. Everything is one ANS stack (``constriction``'s ``AnsCoder``,
32-bit words, 24-bit probabilities) sent as little-endian 32-bit words: a frame costs the
order-0 entropy of each model's symbols, its header and at most a word of rounding. Why
static models rather than adaptive ones: an adaptive model must be updated symbol by
symbol (a Python call each), and its learning costs about what the header does.

Decoding is total: every word sequence decodes to symbols within the declared alphabets,
and ANS decoding must end in the state encoding began with, so a corrupt frame is almost
always caught by what does not add up (words left over, a presence set of the wrong size
or an escape into no room, a frame that is not whole words or ends in a zero word) and
raises :class:`~shared.errors.DecodeError`. A few flips in the lowest bits of the last
symbols decoded yield other valid symbols instead (in a test, 1 of 5,920 single-bit
flips), as any flip does in the unchecked dense layout; no checksum is spent on them.
Sizes come from the caller, never from the frame: what decoding allocates is bounded by
the symbol count and by the number of models times the alphabet (presence bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import constriction
import numpy as np
import numpy.typing as npt

from shared.errors import DecodeError

__all__ = ["MANTISSA_BITS", "MAX_ALPHABET", "SymbolReader", "SymbolWriter"]

MANTISSA_BITS = 2
MAX_ALPHABET = 1 << 16  # far above the 511 symbols of q8 deltas; keeps every model small
# symbols seen at most this often escape: against 1, 2, 4, 6 and 8 the smallest frames on
# real soft labels, within 0.7 % of the best threshold per frame (bench.codec, DECISIONS §30)
_RARE = 3

_I32 = npt.NDArray[np.int32]
_I64 = npt.NDArray[np.int64]
_Model: TypeAlias = Any  # a constriction model (the package ships no type information)
# symbols, the model (family) they are coded with and its per-symbol parameters
_Op: TypeAlias = tuple[_I32, _Model, tuple[npt.NDArray[Any], ...]]

_UNIFORM = constriction.stream.model.Uniform()  # family: one size per symbol
# perfect=False: the fast, documented quantisation (the default differs between versions;
# naming it keeps frames the same)
_BERNOULLI = constriction.stream.model.Bernoulli(perfect=False)  # family: one P(1) per bit


def _categorical(weights: npt.NDArray[np.float64]) -> _Model:
    return constriction.stream.model.Categorical(weights, perfect=False)


@dataclass(frozen=True, slots=True)
class _Table:
    """One context's model and symbols, as both sides come to hold them."""

    size: int  # symbols in the context (both sides know it)
    explicit: _I64  # the symbols with entries of their own, ascending (at least one)
    top: int  # the largest escaped value; -1: no escape
    lengths: _I64  # bit length of each count: the explicit symbols', then the escape's
    mantissas: _I64  # the bits below the leading one each count keeps
    ranks: _I64  # per symbol, its rank among the explicit ones, or len(explicit): escaped
    escaped: _I64  # the escaped symbols' values, in order

    @property
    def distinct(self) -> int:
        return int(self.explicit.size)

    @property
    def has_escape(self) -> bool:
        return self.top >= 0


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
        grouped = values[order]
        pooled = _table_ops([_model_table(grouped)] if values.size else [], alphabet)
        if sizes.size == 1:
            self._ops += pooled
            return
        bounds = np.cumsum(sizes)[:-1]
        parts = [part for part in np.split(grouped, bounds) if part.size]
        split = _table_ops([_model_table(part) for part in parts], alphabet)
        use_split = _bits(split) < _bits(pooled)
        self._ops += [_flag(use_split)] + (split if use_split else pooled)

    def finish(self) -> bytes:
        """The frame: all streams added so far, as little-endian 32-bit words."""
        coder = constriction.stream.stack.AnsCoder()
        for symbols, model, params in reversed(self._ops):  # a stack: last pushed, first read
            coder.encode_reverse(symbols, model, *params)
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
        split = sizes.size > 1 and bool(self._uniform(np.array([2]))[0])
        table_sizes = sizes[sizes > 0] if split else np.array([count][: int(count > 0)])
        symbols = np.zeros(count, dtype=np.int64)
        symbols[order] = self._read_tables(table_sizes.astype(np.int64), alphabet)
        return symbols

    def finish(self) -> None:
        """Check that the frame held nothing more than what was read.

        Raises:
            DecodeError: when words are left over.
        """
        if not self._coder.is_empty():
            raise DecodeError("data: the ANS frame holds more than its streams")

    def _uniform(self, sizes: _I64) -> _I64:
        """One value in [0, size) per size; nothing is coded where the size is 1."""
        values = np.zeros(sizes.size, dtype=np.int64)
        coded = sizes > 1
        if coded.any():
            values[coded] = self._coder.decode(_UNIFORM, sizes[coded].astype(np.int32))
        return values

    def _read_tables(self, sizes: _I64, alphabet: int) -> _I64:
        """The symbols of consecutive models of the given sizes (inverse of _table_ops)."""
        if sizes.size == 0:
            return np.zeros(0, dtype=np.int64)
        distinct = 1 + self._uniform(np.minimum(alphabet, sizes))
        partial = distinct < alphabet
        largest = distinct - 1 + self._uniform(np.where(partial, alphabet - distinct + 1, 1))
        has_escape = self._uniform(np.where(sizes > distinct, 2, 1)).astype(np.bool_)
        tops = np.where(has_escape, self._uniform(np.where(has_escape, alphabet, 1)), -1)
        explicit = self._read_explicit(distinct, largest, partial, alphabet)
        weights = distinct + has_escape
        counted = np.where(weights > 1, weights, 0)  # one weight alone needs no count
        lengths = 1 + self._uniform(np.repeat(_bit_lengths(sizes), counted))
        mantissas = self._uniform(np.int64(1) << _mantissa_widths(lengths))
        starts = np.concatenate([[0], np.cumsum(counted)])
        parts = []
        for index, size in enumerate(sizes.tolist()):
            span = slice(starts[index], starts[index + 1])
            if weights[index] == 1:
                ranks = np.zeros(size, dtype=np.int64)
            else:
                counts = _counts(lengths[span], mantissas[span])
                ranks = np.asarray(self._coder.decode(_categorical(counts), size), np.int64)
            parts.append(np.append(explicit[index], 0)[ranks])
            parts[-1][ranks == distinct[index]] = -1 - index  # escaped: filled in below
        symbols = np.concatenate(parts)
        escaped = np.flatnonzero(symbols < 0)
        if escaped.size == 0:
            return symbols
        owners = -1 - symbols[escaped]
        free = {
            index: _free_values(explicit[index], int(tops[index])) for index in set(owners.tolist())
        }
        room = np.zeros(sizes.size, dtype=np.int64)
        for index, values in free.items():
            room[index] = values.size
        if room[owners].min() < 1:
            raise DecodeError("data: a model escapes into a range its explicit symbols fill")
        picks = self._uniform(room[owners])
        for index, values in free.items():
            mine = owners == index
            symbols[escaped[mine]] = values[picks[mine]]
        return symbols

    def _read_explicit(
        self, distinct: _I64, largest: _I64, partial: npt.NDArray[np.bool_], alphabet: int
    ) -> list[_I64]:
        others = distinct - 1
        with_bits = partial & (others > 0) & (others < largest)
        bits = np.zeros(0, dtype=np.int64)
        if with_bits.any():
            chances = np.repeat(others[with_bits] / largest[with_bits], largest[with_bits])
            bits = np.asarray(self._coder.decode(_BERNOULLI, chances), np.int64)
        sets: list[_I64] = []
        start = 0
        for index in range(distinct.size):
            if not partial[index]:
                sets.append(np.arange(alphabet, dtype=np.int64))
                continue
            top = int(largest[index])
            if with_bits[index]:
                below = np.flatnonzero(bits[start : start + top]).astype(np.int64)
                start += top
                if below.size != others[index]:
                    raise DecodeError(
                        f"data: a model lists {below.size} symbols, its header says {others[index]}"
                    )
            else:
                below = np.arange(others[index], dtype=np.int64)
            sets.append(np.append(below, top))
        return sets


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
    if contexts.shape != (count,) or contexts.dtype.kind not in "iu":
        raise ValueError(f"contexts: expected {count} integers, got {contexts.shape}")
    if count and (contexts.min() < 0 or contexts.max() >= num_contexts):
        raise ValueError(f"contexts must lie in [0, {num_contexts})")
    # a stable sort of 16-bit keys is a radix sort: linear, several times faster
    keys = contexts.astype(np.uint16) if num_contexts <= 1 << 16 else contexts
    order = np.argsort(keys, kind="stable").astype(np.int64)
    return order, np.bincount(contexts, minlength=num_contexts).astype(np.int64)


def _as_contexts(contexts: npt.ArrayLike | None) -> _I64 | None:
    return None if contexts is None else np.asarray(contexts)


def _model_table(symbols: _I64) -> _Table:
    """The model of one context: rare symbols escape, unless all or none are rare."""
    present, ranks, counts = np.unique(symbols, return_inverse=True, return_counts=True)
    rare = counts <= _RARE
    threshold = _RARE if rare.any() and not rare.all() else 0
    return _table(symbols, present, ranks.reshape(-1), counts, threshold)


def _table(symbols: _I64, present: _I64, ranks: _I64, counts: _I64, rare: int) -> _Table:
    escaped = counts <= rare
    explicit = present[~escaped]
    has_escape = bool(escaped.any())
    weights = counts[~escaped].astype(np.int64)
    if has_escape:
        weights = np.append(weights, counts[escaped].sum())
    lengths = _bit_lengths(weights)
    shifts = lengths - 1 - _mantissa_widths(lengths)
    mantissas = (weights >> shifts) - (np.int64(1) << _mantissa_widths(lengths))
    rank_of = np.full(present.size, explicit.size, dtype=np.int64)
    rank_of[~escaped] = np.arange(explicit.size)
    return _Table(
        size=int(symbols.size),
        explicit=explicit.astype(np.int64),
        top=int(present[escaped][-1]) if has_escape else -1,
        lengths=lengths,
        mantissas=mantissas,
        ranks=rank_of[ranks],
        escaped=symbols[escaped[ranks]].astype(np.int64),
    )


def _table_ops(tables: list[_Table], alphabet: int) -> list[_Op]:
    """The fields of consecutive models, each field for all of them at once."""
    if not tables:
        return []
    sizes = np.array([table.size for table in tables], dtype=np.int64)
    distinct = np.array([table.distinct for table in tables], dtype=np.int64)
    partial = distinct < alphabet
    largest = np.array([table.explicit[-1] for table in tables], dtype=np.int64)
    has_escape = np.array([table.has_escape for table in tables], dtype=np.int64)
    tops = np.array([table.top for table in tables], dtype=np.int64)
    ops = [
        _uniform_op(distinct - 1, np.minimum(alphabet, sizes)),
        _uniform_op(largest - (distinct - 1), np.where(partial, alphabet - distinct + 1, 1)),
        _uniform_op(has_escape, np.where(sizes > distinct, 2, 1)),
        _uniform_op(np.maximum(tops, 0), np.where(has_escape > 0, alphabet, 1)),
    ]
    others = distinct - 1
    with_bits = partial & (others > 0) & (others < largest)
    if with_bits.any():
        bits = []
        for table, needed in zip(tables, with_bits.tolist(), strict=True):
            if needed:
                row = np.zeros(int(table.explicit[-1]), dtype=np.int32)
                row[table.explicit[:-1]] = 1
                bits.append(row)
        chances = np.repeat(others[with_bits] / largest[with_bits], largest[with_bits])
        ops.append((np.concatenate(bits), _BERNOULLI, (chances,)))
    weights = distinct + has_escape
    counted = weights > 1  # one weight alone needs no count
    lengths = np.concatenate(
        [np.zeros(0, np.int64)] + [t.lengths for t in tables if t.lengths.size > 1]
    )
    mantissas = np.concatenate(
        [np.zeros(0, np.int64)] + [t.mantissas for t in tables if t.lengths.size > 1]
    )
    ops.append(_uniform_op(lengths - 1, np.repeat(_bit_lengths(sizes), weights * counted)))
    ops.append(_uniform_op(mantissas, np.int64(1) << _mantissa_widths(lengths)))
    for table in tables:
        if table.lengths.size > 1:
            counts = _counts(table.lengths, table.mantissas)
            ops.append((table.ranks.astype(np.int32), _categorical(counts), ()))
    # an escaped value is coded as its index among the values in [0, top] not explicit
    picks = [t.escaped - np.searchsorted(t.explicit, t.escaped) for t in tables]
    room = [np.full(t.escaped.size, t.top + 1 - np.searchsorted(t.explicit, t.top)) for t in tables]
    ops.append(_uniform_op(np.concatenate(picks), np.concatenate(room).astype(np.int64)))
    return [op for op in ops if op[0].size]


def _free_values(explicit: _I64, top: int) -> _I64:
    """The values an escape may stand for: those in [0, top] without an entry."""
    return np.setdiff1d(np.arange(top + 1, dtype=np.int64), explicit)


def _uniform_op(values: _I64, sizes: _I64) -> _Op:
    coded = sizes > 1
    return values[coded].astype(np.int32), _UNIFORM, (sizes[coded].astype(np.int32),)


def _flag(value: bool) -> _Op:
    return _uniform_op(np.array([int(value)]), np.array([2]))


def _bit_lengths(counts: _I64) -> _I64:
    """Bit lengths of positive counts (frexp's exponent: exact for integers below 2**53)."""
    return np.frexp(counts.astype(np.float64))[1].astype(np.int64)


def _mantissa_widths(lengths: _I64) -> _I64:
    return np.minimum(lengths - 1, MANTISSA_BITS)


def _counts(lengths: _I64, mantissas: _I64) -> npt.NDArray[np.float64]:
    """The counts as the decoder knows them.

    Exact below 2**(MANTISSA_BITS + 1), else the middle of the interval the kept bits
    leave; every value is exact in float64.
    """
    widths = _mantissa_widths(lengths)
    shifts = lengths - 1 - widths
    top = (np.int64(1) << widths) + mantissas
    half = np.where(shifts > 0, np.int64(1) << np.maximum(shifts - 1, 0), 0)
    return ((top << shifts) + half).astype(np.float64)


def _bits(ops: list[_Op]) -> int:
    coder = constriction.stream.stack.AnsCoder()
    for symbols, model, params in reversed(ops):
        coder.encode_reverse(symbols, model, *params)
    return int(coder.num_valid_bits())
