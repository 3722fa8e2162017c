import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import DecodeError, MessageTooLarge
from shared.protocol.indexsets import (
    decode_codes,
    decode_index_list,
    decode_index_set,
    encode_codes,
    encode_index_list,
    encode_index_set,
)

PROTOCOL_ERRORS = (DecodeError, MessageTooLarge)
BITMAP, GAPS, ELIAS_FANO = 0, 1, 2  # set layout tags, from the module docstring
FIXED, DELTAS, ASCENDING = 0, 1, 2  # list layout tags


def _random_subset(universe: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(universe)[:count]


@st.composite
def subsets(draw, max_universe: int = 3000):
    """(indices in random order, universe): empty, full, single, sparse and dense sets."""
    universe = draw(st.integers(0, max_universe))
    fraction = draw(st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 1.0]))
    count = draw(st.integers(0, universe)) if fraction == 0.5 else round(fraction * universe)
    return _random_subset(universe, count, draw(st.integers(0, 2**16))), universe


# -- round trips -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(case=subsets())
def test_a_set_decodes_to_its_values_in_ascending_order(case):
    indices, universe = case
    data = encode_index_set(indices, universe)
    decoded = decode_index_set(data, universe, max_items=len(indices))
    assert decoded.dtype == np.int64
    assert np.array_equal(decoded, np.sort(indices))
    assert len(data) <= 1 + (universe + 7) // 8  # never above the bitmap


@settings(max_examples=150, deadline=None)
@given(case=subsets(), order=st.sampled_from(["random", "ascending", "descending"]))
def test_a_list_decodes_to_its_values_in_the_same_order(case, order):
    indices, universe = case
    if order != "random":
        indices = np.sort(indices)
        indices = indices[::-1] if order == "descending" else indices
    decoded = decode_index_list(encode_index_list(indices, universe), universe, max_items=10**6)
    assert np.array_equal(decoded, indices)


@pytest.mark.parametrize(
    ("indices", "universe"),
    [
        ([], 0),
        ([], 10_000),
        ([0], 1),
        ([9_999], 10_000),
        (list(range(10_000)), 10_000),
        ([5, 3], 2**40),
    ],
)
def test_edge_sets_and_lists_round_trip(indices, universe):
    values = np.array(indices, dtype=np.int64)
    assert np.array_equal(
        decode_index_set(encode_index_set(values, universe), universe, max_items=len(indices)),
        np.sort(values),
    )
    assert np.array_equal(
        decode_index_list(encode_index_list(values, universe), universe, max_items=len(indices)),
        values,
    )


@settings(max_examples=100, deadline=None)
@given(bits=st.integers(1, 63), count=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_codes_round_trip_with_exactly_their_bit_width(bits, count, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**bits, size=count, dtype=np.uint64).astype(np.int64)
    data = encode_codes(codes, bits)
    assert len(data) == (count * bits + 7) // 8
    assert np.array_equal(decode_codes(data, bits, count), codes)


# -- sizes -----------------------------------------------------------------------------


def test_a_thousand_of_ten_thousand_indices_take_under_six_bits_each():
    # Given the round's typical request: 1,000 random public indices out of 10,000
    indices = _random_subset(10_000, 1_000, seed=0)
    # When
    as_set = encode_index_set(indices, 10_000)
    as_list = encode_index_list(indices, 10_000)
    # Then: Elias-Fano, about 660 bytes (5.3 bits per index; the entropy bound is 4.7);
    # the bitmap would take 1,251 and int64 8,000. Random order costs 14 bits per index.
    assert as_set[0] == ELIAS_FANO and len(as_set) <= 6 * 1_000 / 8
    assert as_list[0] == FIXED and len(as_list) <= 3 + 14 * 1_000 / 8


def test_dense_sets_use_the_bitmap_and_sparse_sets_stay_small():
    assert encode_index_set(np.arange(9_000), 10_000)[0] == BITMAP
    assert len(encode_index_set(np.array([17, 4_000, 9_998]), 10_000)) <= 8


def test_an_ascending_list_costs_as_much_as_the_set_plus_one_byte():
    indices = np.sort(_random_subset(10_000, 1_000, seed=1))
    as_list = encode_index_list(indices, 10_000)
    assert as_list[0] == ASCENDING
    assert len(as_list) == 1 + len(encode_index_set(indices, 10_000))


def test_cache_signals_pack_four_to_a_byte():
    signals = np.random.default_rng(0).integers(0, 3, 1_000)
    assert len(encode_codes(signals, 2)) == 250


# -- encoder arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "universe"),
    [
        ([3], 3),
        ([-1], 10),
        ([1, 1], 10),
        ([0.5], 10),
        ([[1]], 10),
        ([True], 10),
        ([0], -1),
        ([0], 2**41),
    ],
)
def test_encoding_invalid_indices_raises_value_error(indices, universe):
    values = np.array(indices)
    with pytest.raises(ValueError):
        encode_index_set(values, universe)
    with pytest.raises(ValueError):
        encode_index_list(values, universe)


def test_encoding_codes_out_of_range_raises_value_error():
    with pytest.raises(ValueError):
        encode_codes(np.array([4]), 2)
    with pytest.raises(ValueError):
        encode_codes(np.array([0]), 0)


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"\x07", "unknown layout tag"),
        (bytes([BITMAP, 0x00]), "bitmap of 1 bytes"),  # universe 10 needs 2 bytes
        (bytes([BITMAP, 0x00, 0x01]), "padding"),  # bit 15 is outside [0, 10)
        (bytes([GAPS, 2, 3, 0xFF]), "complete varints"),  # truncated varint
        (bytes([GAPS, 1, 3, 0]), "complete varints"),  # trailing byte
        (bytes([GAPS, 2, 3, 9]), "out of range"),  # 3, then 3 + 9 + 1 = 13 >= 10
        (bytes([GAPS, 1, 0x83, 0x00]), "non-canonical"),  # 3 with a redundant zero byte
        (bytes([GAPS, 0x81, 0x00]), "non-canonical"),  # the count, too
        (bytes([GAPS, 11]), "cannot fit"),  # 11 distinct items in a universe of 10
        (bytes([ELIAS_FANO, 2, 0b11_11_0000, 0b11_000000]), "duplicate"),  # l = 2: 3, 3
        (bytes([ELIAS_FANO, 1, 0b110_00000]), "Elias-Fano body"),  # l = 3, high part missing
        (bytes([ELIAS_FANO, 1, 0b110_00000, 0b01_000000]), "out of range"),  # (1 << 3) | 6
    ],
)
def test_malformed_sets_are_rejected_with_the_problem_named(data, problem):
    with pytest.raises(DecodeError, match=problem):
        decode_index_set(data, 10, max_items=100)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (bytes([FIXED, 2, 0b0011_0011]), "duplicate"),  # 4-bit codes 3, 3
        (bytes([FIXED, 1, 0b1100_0000]), "out of range"),  # 12 >= 10
        (bytes([FIXED, 1, 0b0011_0001]), "padding"),
        (bytes([DELTAS, 2, 6, 7]), "out of range"),  # +3, then -4: -1
        (bytes([DELTAS, 2, 6, 0]), "duplicate"),  # +3, then +0
        (bytes([DELTAS, 1, 6, 6]), "complete varints"),
        (bytes([ASCENDING, GAPS, 1]), "complete varints"),
    ],
)
def test_malformed_lists_are_rejected_with_the_problem_named(data, problem):
    with pytest.raises(DecodeError, match=problem):
        decode_index_list(data, 10, max_items=10)


def test_more_items_than_allowed_raise_message_too_large_before_decoding():
    forged_count = bytes([GAPS]) + bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F])  # 2**32 - 1 items
    with pytest.raises(MessageTooLarge):
        decode_index_set(forged_count, 2**40, max_items=1_000)
    with pytest.raises(MessageTooLarge):
        decode_index_list(bytes([FIXED]) + forged_count[1:], 2**40, max_items=1_000)
    full = encode_index_set(np.arange(100), 100)
    with pytest.raises(MessageTooLarge):
        decode_index_set(full, 100, max_items=99)


@settings(max_examples=100, deadline=None)
@given(case=subsets(max_universe=500))
def test_every_truncation_and_extension_of_a_valid_set_is_rejected(case):
    indices, universe = case
    data = encode_index_set(indices, universe)
    for end in range(len(data)):
        with pytest.raises(PROTOCOL_ERRORS):
            decode_index_set(data[:end], universe, max_items=universe)
    with pytest.raises(DecodeError):
        decode_index_set(data + b"\x00", universe, max_items=universe)


def test_codes_of_the_wrong_length_are_rejected():
    with pytest.raises(DecodeError, match="expected 1"):
        decode_codes(b"\x00\x00", 2, 4)
    with pytest.raises(DecodeError, match="padding"):
        decode_codes(b"\x01", 2, 3)
    with pytest.raises(DecodeError, match="bytes"):
        decode_codes("not bytes", 2, 3)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=64),
    universe=st.integers(0, 2**40),
    max_items=st.integers(0, 2**20),
)
def test_random_bytes_raise_only_protocol_errors(data, universe, max_items):
    for decode in (decode_index_set, decode_index_list):
        try:
            values = decode(data, universe, max_items=max_items)
        except PROTOCOL_ERRORS:
            continue
        assert len(values) <= max_items
        assert np.unique(values).size == len(values)
        assert len(values) == 0 or (values.min() >= 0 and values.max() < universe)


@settings(max_examples=300, deadline=None)
@given(case=subsets(max_universe=300), data=st.data(), kind=st.sampled_from(["set", "list"]))
def test_mutated_valid_encodings_raise_only_protocol_errors(case, data, kind):
    # Given
    indices, universe = case
    encode, decode = (
        (encode_index_set, decode_index_set)
        if kind == "set"
        else (encode_index_list, decode_index_list)
    )
    raw = bytearray(encode(indices, universe))
    # When a byte changes
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    # Then
    try:
        values = decode(bytes(raw), universe, max_items=universe)
    except PROTOCOL_ERRORS:
        return
    assert np.unique(values).size == len(values)
    assert len(values) == 0 or (values.min() >= 0 and values.max() < universe)
