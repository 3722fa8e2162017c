import hashlib
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import DecodeError
from shared.protocol.entropy import SymbolReader, SymbolWriter


def _frame(*streams):
    writer = SymbolWriter()
    for symbols, alphabet, contexts, num_contexts in streams:
        writer.add(symbols, alphabet, contexts, num_contexts)
    return writer.finish()


def _read(data, *descriptions):
    reader = SymbolReader(data)
    out = [reader.read(*description) for description in descriptions]
    reader.finish()
    return out


def _entropy_bits(symbols):
    _, counts = np.unique(symbols, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


@st.composite
def streams(draw):
    """A stream with its description: skewed, uniform or constant symbols, with contexts."""
    alphabet = draw(st.sampled_from([1, 2, 3, 16, 256, 511]))
    count = draw(st.integers(0, 300))
    num_contexts = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    generator = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["geometric", "uniform", "constant", "extremes"]))
    if kind == "geometric":
        symbols = np.minimum(
            generator.geometric(draw(st.floats(0.05, 0.95)), count) - 1, alphabet - 1
        )
    elif kind == "uniform":
        symbols = generator.integers(0, alphabet, count)
    elif kind == "constant":
        symbols = np.full(count, draw(st.integers(0, alphabet - 1)))
    else:
        symbols = generator.choice([0, alphabet - 1], count)
    contexts = generator.integers(0, num_contexts, count) if draw(st.booleans()) else None
    return symbols.astype(np.int64), alphabet, contexts, num_contexts


@settings(max_examples=150, deadline=None)
@given(st.lists(streams(), max_size=4))
def test_every_frame_decodes_to_exactly_the_symbols_written(described):
    # Given / When
    data = _frame(*described)
    decoded = _read(data, *[(s.size, a, c, k) for s, a, c, k in described])
    # Then
    assert len(data) % 4 == 0
    for (symbols, *_), result in zip(described, decoded, strict=True):
        assert result.dtype == np.int64
        assert np.array_equal(result, symbols)


def test_nothing_written_is_an_empty_frame_and_reads_back_empty_streams():
    assert _frame() == b""
    assert _frame((np.zeros(0, np.int64), 256, None, 1)) == b""
    (result,) = _read(b"", (0, 256))
    assert result.size == 0
    _read(b"")


def test_one_row_and_one_symbol_round_trip():
    data = _frame((np.array([7]), 256, None, 1), (np.array([3, 0, 1]), 10, np.array([0, 2, 1]), 3))
    first, second = _read(data, (1, 256), (3, 10, np.array([0, 2, 1]), 3))
    assert first.tolist() == [7] and second.tolist() == [3, 0, 1]


def test_a_single_repeated_value_costs_a_word():
    data = _frame((np.full(10_000, 200), 256, None, 1))
    assert len(data) == 4
    assert np.array_equal(_read(data, (10_000, 256))[0], np.full(10_000, 200))


@pytest.mark.parametrize("alphabet", [2, 256, 511])
def test_the_full_symbol_range_round_trips(alphabet):
    symbols = np.random.default_rng(0).permutation(np.repeat(np.arange(alphabet), 3))
    data = _frame((symbols, alphabet, None, 1))
    assert np.array_equal(_read(data, (symbols.size, alphabet))[0], symbols)
    # a uniform source costs its entropy, log2(alphabet) bits a symbol, plus the header
    assert len(data) * 8 <= symbols.size * np.log2(alphabet) * 1.01 + 8 * alphabet + 64


@pytest.mark.parametrize("count", [300, 3_000, 30_000])
@pytest.mark.parametrize("alphabet", [256, 511])
def test_a_skewed_source_costs_within_1_1_of_its_entropy_plus_the_header(count, alphabet):
    # Given: soft-label-like symbols: mostly 0, a geometric body and a long thin tail
    generator = np.random.default_rng(count)
    symbols = np.minimum(generator.geometric(0.4, count) - 1, alphabet - 1)
    tail = generator.random(count) < 0.05
    symbols[tail] = generator.integers(0, alphabet, tail.sum())
    # When
    bits = len(_frame((symbols, alphabet, None, 1))) * 8
    # Then: a header bounded by about 12 bits per distinct symbol, and the data within
    # 1.1x of the empirical entropy (the count quantisation costs under 1 %)
    distinct = np.unique(symbols).size
    assert bits <= 1.1 * _entropy_bits(symbols) + 12 * distinct + 64


def test_the_header_is_bounded_by_the_distinct_symbols_not_the_alphabet():
    symbols = np.random.default_rng(1).choice([0, 1, 5000], 2_000, p=[0.7, 0.2, 0.1])
    bits = len(_frame((symbols, 1 << 16, None, 1))) * 8
    assert bits <= _entropy_bits(symbols) + 3 * 30 + 64


def test_per_context_models_are_chosen_when_the_contexts_differ():
    # Given: two columns that each hold one value, different per column
    contexts = np.tile([0, 1], 1_000)
    symbols = np.where(contexts == 0, 3, 40)
    # When
    data = _frame((symbols, 256, contexts, 2))
    # Then: pooled would cost a bit a symbol (250 bytes); split costs only the headers
    assert len(data) <= 8
    assert np.array_equal(_read(data, (2_000, 256, contexts, 2))[0], symbols)


def test_pooled_models_are_chosen_when_contexts_carry_nothing():
    generator = np.random.default_rng(2)
    symbols = np.minimum(generator.geometric(0.3, 3_000) - 1, 255)
    contexts = generator.integers(0, 100, 3_000)
    split_alone = sum(len(_frame((symbols[contexts == k], 256, None, 1))) for k in range(100))
    assert len(_frame((symbols, 256, contexts, 100))) < split_alone


def test_the_same_input_gives_the_same_bytes():
    # a frame fixed forever (inputs from integer arithmetic, not a random generator): a
    # change here breaks the wire format (e.g. a constriction version whose model
    # quantisation differs), so it must come with a new codec tag
    positions = np.arange(1_000)
    symbols = np.where(positions % 3 == 0, (positions * positions) % 251, positions % 4)
    contexts = (positions * 7) % 10
    streams = ((positions[:100] % 10, 10, None, 1), (symbols, 256, contexts, 10))
    data = _frame(*streams)
    assert data == _frame(*streams)
    assert hashlib.sha256(data).hexdigest()[:16] == GOLDEN_DIGEST


GOLDEN_DIGEST = "d38f2c79e67b2074"


# -- descriptions are the caller's: ValueError ------------------------------------------


@pytest.mark.parametrize(
    ("symbols", "alphabet", "contexts", "num_contexts"),
    [
        (np.array([3]), 3, None, 1),
        (np.array([-1]), 3, None, 1),
        (np.array([[1]]), 3, None, 1),
        (np.array([0.5]), 3, None, 1),
        (np.array([1]), 0, None, 1),
        (np.array([1]), 1 << 17, None, 1),
        (np.array([1, 2]), 3, np.array([0]), 1),
        (np.array([1, 2]), 3, np.array([0, 2]), 2),
        (np.array([1]), 3, np.array([0]), 0),
    ],
)
def test_symbols_or_contexts_out_of_their_description_raise_value_error(
    symbols, alphabet, contexts, num_contexts
):
    with pytest.raises(ValueError):
        SymbolWriter().add(symbols, alphabet, contexts, num_contexts)


def test_a_negative_count_raises_value_error():
    with pytest.raises(ValueError):
        SymbolReader(b"").read(-1, 10)


# -- hostile frames: DecodeError ---------------------------------------------------------


def _valid():
    generator = np.random.default_rng(5)
    symbols = np.minimum(generator.geometric(0.3, 2_000) - 1, 255)
    contexts = generator.integers(0, 10, 2_000)
    return _frame((symbols, 256, contexts, 10)), symbols, (2_000, 256, contexts, 10)


def test_frames_cut_short_extended_or_not_whole_words_raise_decode_error():
    data, _, description = _valid()
    for broken in (data[:-4], data[4:], data + b"\x01\x00\x00\x00", data[:-1], data + b"\0" * 4):
        with pytest.raises(DecodeError, match="data:"):
            _read(broken, description)


def test_single_bit_flips_are_caught_or_decode_to_valid_symbols():
    # ANS decoding must end in the state encoding began with: a changed word almost always
    # leaves another state, so words are left over or a model header does not add up. A
    # flip in the lowest bits of the last symbols decoded can slip through as other valid
    # symbols (as any flip does in the dense layout); no checksum is spent on it, since the
    # transport already checks the bytes
    data, symbols, description = _valid()
    caught = slipped = 0
    for position in range(len(data)):
        for bit in range(8):
            broken = bytearray(data)
            broken[position] ^= 1 << bit
            try:
                (result,) = _read(bytes(broken), description)
            except DecodeError:
                caught += 1
                continue
            slipped += 1
            assert result.shape == symbols.shape and 0 <= result.min() <= result.max() < 256
    assert slipped <= 0.001 * (caught + slipped)


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=256), count=st.integers(0, 500))
def test_arbitrary_bytes_decode_within_the_description_or_raise_decode_error(junk, count):
    contexts = np.arange(count) % 7
    try:
        (result,) = _read(junk, (count, 300, contexts, 7))
    except DecodeError:
        return
    assert result.shape == (count,) and (
        result.size == 0 or 0 <= result.min() <= result.max() < 300
    )


def test_a_large_junk_frame_fails_fast_in_little_memory():
    junk = np.random.default_rng(6).integers(1, 2**32, 1 << 18, dtype=np.uint32).tobytes()  # 1 MiB
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DecodeError):
            _read(junk, (1_000, 256, np.arange(1_000) % 10, 10))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 4 << 20  # the frame's copy as words, nothing sized by what it declares


@pytest.mark.parametrize(
    "symbols",
    [
        [5] * 10 + [0],  # the one escaped value is 0: nothing to code for it
        [5] * 10 + [0, 9, 200],  # escapes spread over [0, 200]
        [3, 1, 4, 0, 2],  # every symbol seen once: no escape
        [7, 7, 2, 2, 250],  # one escape, the rest explicit
    ],
)
def test_rare_symbols_round_trip_through_the_escape(symbols):
    values = np.array(symbols)
    data = _frame((values, 256, None, 1))
    assert np.array_equal(_read(data, (values.size, 256))[0], values)


def test_escaping_values_seen_once_is_cheaper_than_listing_them():
    # Given: mostly zeros and ones, and 40 different values seen once each
    generator = np.random.default_rng(7)
    symbols = np.concatenate([generator.integers(0, 2, 2_000), np.arange(50, 90)])
    # When / Then: each escaped value costs about log2(90) + log2(2040 / 40) = 12 bits
    # where the entropy's -log2(1 / 2040) = 11 bits leaves no room for a header entry
    assert len(_frame((symbols, 256, None, 1))) * 8 <= _entropy_bits(symbols) + 40 * 2 + 64
