import time
import tracemalloc

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.errors import DecodeError, MessageTooLarge
from shared.protocol.softlabels import (
    CodecSpec,
    decode_soft_labels,
    dequantize_simplex,
    encode_soft_labels,
    quantize_simplex,
    roundtrip,
)

ALL_SPECS = ["f32", "f16", "f32+zstd", "f16+zstd"] + [
    f"q{bits}{delta}{entropy}"
    for bits in range(2, 9)
    for delta in ("", "+delta")
    for entropy in ("", "+zstd", "+ans")
]
SPECIAL_ROWS = ("one_hot", "uniform", "tiny", "tie", "subnormal")
PROTOCOL_ERRORS = (DecodeError, MessageTooLarge)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax rows, as a model's output layer computes them."""
    x = np.asarray(logits, dtype=np.float32)
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _randn(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _special_row(kind: str, c: int, row: int) -> np.ndarray:
    values = np.zeros(c, dtype=np.float32)
    if kind == "one_hot":
        values[row % c] = 1.0
    elif kind == "uniform":
        values[:] = 1.0 / c
    elif kind == "tie":
        values[: min(2, c)] = 1.0 / min(2, c)
    else:  # a peak and many near-zero entries that quantize to 0
        values[:] = 1e-30 if kind == "tiny" else 1e-45
        values[row % c] = 1.0
    return values


@st.composite
def soft_labels(draw, max_rows: int = 24, max_classes: int = 12) -> np.ndarray:
    """Softmax rows of arbitrary logits, some replaced by adversarial rows."""
    n = draw(st.integers(0, max_rows))
    c = draw(st.integers(1, max_classes))
    logits = draw(arrays(np.float32, (n, c), elements=st.floats(-40, 40, width=32)))
    probs = _softmax(logits)
    kinds = draw(st.lists(st.sampled_from(SPECIAL_ROWS), max_size=n))
    for row, kind in enumerate(kinds):
        probs[row] = _special_row(kind, c, row)
    return probs


def _reference_for(probs: np.ndarray, spec: CodecSpec, seed: int) -> np.ndarray | None:
    """A previously decoded value of the same shape, as the synchronized cache holds it."""
    if not spec.delta:
        return None
    earlier = _softmax(_randn(probs.shape, seed) * 4)
    return roundtrip(0.5 * earlier + 0.5 * probs, spec)


def _decode(payload, n, c, reference=None):
    wire = msgpack.unpackb(msgpack.packb(payload))
    return decode_soft_labels(wire, reference=reference, max_rows=n, num_classes=c)


def _naive_quantize(row: list[float], levels: int) -> list[int]:
    """Hamilton's method, one row, plain Python: the reference implementation."""
    total = sum(row)
    scaled = [value / total * levels for value in row]
    codes = [int(np.floor(value)) for value in scaled]
    by_remainder = sorted(range(len(row)), key=lambda i: (-(scaled[i] - codes[i]), i))
    for i in by_remainder[: levels - sum(codes)]:
        codes[i] += 1
    return codes


# -- spec ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ALL_SPECS + ["q8+zstd19", "f16+zstd1", "q2+delta+zstd22"])
def test_spec_text_parses_and_prints_back_unchanged(text):
    assert str(CodecSpec.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "q",
        "q1",
        "q9",
        "q10",
        "f64",
        "f32+delta",
        "q8+zstd+delta",
        "q8+zstd0",
        "q8+zstd23",
        "q8+",
        "Q8",
        "q8+lz4",
        "f16+ans",
        "f32+ans",
        "q8+ans+zstd",
        "q8+zstd+ans",
        "q8+ans3",
        "q٣",
        "q8+zstd٣",
        " q8",
    ],
)
def test_invalid_spec_text_raises_value_error_quoting_the_grammar(text):
    with pytest.raises(ValueError, match="SPEC :="):
        CodecSpec.parse(text)


def test_spec_fields_outside_the_grammar_are_rejected():
    with pytest.raises(ValueError):
        CodecSpec("f32", bits=4)
    with pytest.raises(ValueError):
        CodecSpec("quant", bits=1)
    with pytest.raises(ValueError):
        CodecSpec("quant", level=9)


# -- quantization ----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(probs=soft_labels(), bits=st.integers(2, 8))
def test_quantized_rows_sum_exactly_to_the_level_count_and_match_the_naive_method(probs, bits):
    # Given
    levels = 2**bits - 1
    # When
    codes = quantize_simplex(probs, bits)
    # Then
    assert codes.dtype == np.int64
    assert np.all(codes.sum(axis=1) == levels)
    expected = [_naive_quantize(row, levels) for row in probs.astype(np.float64).tolist()]
    assert codes.tolist() == expected


@settings(max_examples=40, deadline=None)
@given(probs=soft_labels(), bits=st.integers(2, 8))
def test_every_code_is_within_one_level_of_the_scaled_probability(probs, bits):
    levels = 2**bits - 1
    exact = probs.astype(np.float64) / probs.astype(np.float64).sum(axis=1, keepdims=True)
    error = np.abs(quantize_simplex(probs, bits) / levels - exact)
    assert np.all(error < 1 / levels)


@settings(max_examples=40, deadline=None)
@given(probs=soft_labels(), bits=st.integers(2, 8))
def test_quantizing_dequantized_codes_gives_the_same_codes(probs, bits):
    codes = quantize_simplex(probs, bits)
    assert np.array_equal(quantize_simplex(dequantize_simplex(codes, bits), bits), codes)


def test_ties_go_to_the_lower_class_index():
    uniform = np.full((1, 4), 0.25, dtype=np.float32)
    assert quantize_simplex(uniform, 2).tolist() == [[1, 1, 1, 0]]


@pytest.mark.parametrize("bits", range(2, 9))
def test_adversarial_rows_quantize_onto_the_simplex(bits):
    levels = 2**bits - 1
    rows = np.stack([_special_row(kind, 7, 3) for kind in SPECIAL_ROWS])
    codes = quantize_simplex(rows, bits)
    assert np.all(codes.sum(axis=1) == levels)
    assert codes[0].tolist() == [0, 0, 0, levels, 0, 0, 0]  # one-hot stays one-hot
    assert codes[2].tolist() == [0, 0, 0, levels, 0, 0, 0]  # 1e-30 entries become 0


@pytest.mark.parametrize(
    "probs",
    [
        np.zeros((2, 3), dtype=np.float32),
        np.array([[0.5, np.nan]], dtype=np.float32),
        np.array([[1.5, -0.5]], dtype=np.float32),
        np.ones(3, dtype=np.float32),
    ],
)
def test_quantizing_rows_that_are_not_distributions_raises_value_error(probs):
    with pytest.raises(ValueError):
        quantize_simplex(probs, 8)


def test_dequantizing_codes_off_the_grid_raises_value_error():
    with pytest.raises(ValueError):
        dequantize_simplex(np.array([[3, 1]]), 2)  # sums to 4, not 3
    with pytest.raises(ValueError):
        dequantize_simplex(np.array([[4, -1]]), 2)


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ALL_SPECS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(probs=soft_labels(), seed=st.integers(0, 2**16))
def test_every_codec_round_trips_within_its_documented_bound(text, probs, seed):
    # Given
    spec = CodecSpec.parse(text)
    n, c = probs.shape
    reference = _reference_for(probs, spec, seed)
    # When
    decoded = _decode(encode_soft_labels(probs, spec, reference), n, c, reference)
    # Then
    assert decoded.dtype == np.float32 and decoded.shape == (n, c)
    assert np.all(decoded >= 0)
    if spec.kind == "f16":  # exact half-precision values, not renormalized
        offset = np.abs(probs.sum(axis=1, dtype=np.float64) - 1)
        sum_error = offset * (offset <= 6e-4) + 2**-11 + c * 2**-25 + 1e-7
    else:
        sum_error = np.full(n, 1e-6)
    assert np.all(np.abs(decoded.sum(axis=1, dtype=np.float64) - 1) <= sum_error)
    assert np.all(np.abs(decoded - probs) <= spec.max_abs_error(c))
    assert np.array_equal(decoded, roundtrip(probs, spec, reference))
    if spec.kind == "f32":  # exact for every row whose float64 sum is within 1e-6 of 1
        on_simplex = np.abs(probs.sum(axis=1, dtype=np.float64) - 1) <= 1e-6
        assert np.array_equal(decoded[on_simplex], probs[on_simplex])


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("entropy", ["", "+zstd", "+ans"])
def test_a_delta_against_the_same_rows_decodes_exactly_and_costs_a_few_bytes(bits, entropy):
    # Given: the receiver already holds exactly what it would decode
    spec = CodecSpec.parse(f"q{bits}+delta{entropy}")
    probs = _softmax(_randn((1000, 10), 1))
    reference = roundtrip(probs, spec)
    # When
    payload = encode_soft_labels(probs, spec, reference)
    decoded = _decode(payload, 1000, 10, reference)
    # Then: 1,000 rows in at most 16 data bytes, 80 bytes for the whole map
    assert np.array_equal(decoded, reference)
    assert len(payload["data"]) <= 16
    assert len(msgpack.packb(payload)) <= 80


def test_delta_without_a_reference_codes_against_uniform_rows():
    spec = CodecSpec.parse("q8+delta")
    uniform = np.full((5, 4), 0.25, dtype=np.float32)
    payload = encode_soft_labels(uniform, spec)
    assert payload["layout"] == "sparse" and payload["nnz"] == 0
    assert np.array_equal(_decode(payload, 5, 4), roundtrip(uniform, spec))


def test_payload_describes_itself_with_msgpack_ready_values():
    probs = _softmax(_randn((3, 5), 0))
    payload = encode_soft_labels(probs, CodecSpec.parse("q6+zstd"))
    assert payload["spec"] == "q6+zstd" and payload["n"] == 3 and payload["c"] == 5
    assert all(type(value) in (int, str, bytes) for value in payload.values())


def test_peaked_soft_labels_compress_far_below_float32():
    # Given: 1,000 confident predictions over 10 classes
    generator = np.random.default_rng(2)
    logits = generator.standard_normal((1000, 10))
    logits[np.arange(1000), generator.integers(0, 10, 1000)] += 8
    probs = _softmax(logits)
    # When
    size = len(msgpack.packb(encode_soft_labels(probs, CodecSpec.parse("q8+zstd"))))
    # Then: under 6 bytes per row against 40 for float32
    assert size < 6 * 1000


@pytest.mark.parametrize(
    "probs",
    [
        np.array([[0.5, 0.4]], dtype=np.float32),
        np.array([[0.5, np.inf]], dtype=np.float32),
        np.ones(3, dtype=np.float32),
        np.array([[1, 0]]),
    ],
)
def test_encoding_rows_off_the_simplex_raises_value_error(probs):
    with pytest.raises(ValueError):
        encode_soft_labels(probs, CodecSpec.parse("q8"))


def test_a_reference_of_the_wrong_shape_raises_value_error_when_encoding():
    with pytest.raises(ValueError, match="reference"):
        encode_soft_labels(
            np.full((2, 2), 0.5, dtype=np.float32),
            CodecSpec.parse("q8+delta"),
            np.ones((3, 2), dtype=np.float32),
        )


# -- hostile payloads ------------------------------------------------------------------


def _valid_payload(text: str = "q8+zstd", n: int = 10, c: int = 10) -> dict[str, object]:
    probs = _softmax(_randn((n, c), 4) * 3)
    return encode_soft_labels(probs, CodecSpec.parse(text))


def _check_decodes_or_rejects(payload, n, c, reference=None):
    try:
        decoded = decode_soft_labels(payload, reference=reference, max_rows=n, num_classes=c)
    except PROTOCOL_ERRORS:
        return
    assert decoded.shape[1] == c and decoded.shape[0] <= n
    assert np.all(decoded >= 0)
    sum_error = 1.5e-3 if str(payload.get("spec", "")).startswith("f16") else 1e-6
    assert np.all(np.abs(decoded.sum(axis=1, dtype=np.float64) - 1) <= sum_error)


field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=64),
    st.lists(st.integers(), max_size=3),
    st.sampled_from(ALL_SPECS + ["raw", "dense", "sparse"]),
)


@settings(max_examples=250, deadline=None)
@given(
    payload=st.one_of(
        st.dictionaries(
            st.sampled_from(["spec", "n", "c", "layout", "nnz", "data", "extra"]), field_values
        ),
        field_values,
    )
)
def test_random_maps_raise_only_protocol_errors(payload):
    _check_decodes_or_rejects(payload, 10, 10)


@settings(max_examples=250, deadline=None)
@given(data=st.data(), text=st.sampled_from(ALL_SPECS), seed=st.integers(0, 2**16))
def test_mutated_valid_payloads_raise_only_protocol_errors(data, text, seed):
    # Given a valid payload for 8 x 5 soft labels
    spec = CodecSpec.parse(text)
    probs = _softmax(_randn((8, 5), seed) * 3)
    reference = _reference_for(probs, spec, seed)
    payload = dict(encode_soft_labels(probs, spec, reference))
    raw = bytearray(payload["data"])
    # When one thing about it changes: its data bytes, a field's value, or a field's presence
    mutation = data.draw(st.sampled_from(["flip", "truncate", "extend", "field", "drop"]))
    if mutation == "flip" and raw:
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        del raw[data.draw(st.integers(0, len(raw))) :]
    elif mutation == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=8))
    elif mutation == "field":
        key = data.draw(st.sampled_from(["spec", "n", "c", "layout", "nnz"]))
        payload[key] = data.draw(st.one_of(st.integers(-2, 50), field_values))
    if mutation in ("flip", "truncate", "extend"):
        payload["data"] = bytes(raw)
    elif mutation == "drop":
        del payload[data.draw(st.sampled_from(sorted(payload)))]
    # Then it decodes to valid soft labels or raises a protocol error
    _check_decodes_or_rejects(payload, 8, 5, reference)


def test_a_forged_huge_row_count_is_rejected_before_anything_is_allocated():
    payload = _valid_payload() | {"n": 10**12}
    with pytest.raises(MessageTooLarge, match="n:"):
        decode_soft_labels(payload, max_rows=10_000, num_classes=10)


def test_a_wrong_class_count_is_rejected():
    with pytest.raises(DecodeError, match="c:"):
        decode_soft_labels(_valid_payload(), max_rows=10, num_classes=11)


def test_a_reference_of_the_wrong_shape_is_rejected_when_decoding():
    payload = _valid_payload("q8+delta")
    with pytest.raises(DecodeError, match="reference"):
        decode_soft_labels(
            payload, reference=np.full((3, 10), 0.1, dtype=np.float32), max_rows=10, num_classes=10
        )


def _fails_fast_and_small(payload, message):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match=message):
            decode_soft_labels(payload, max_rows=10, num_classes=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 1 << 20


def test_a_zstd_bomb_declaring_its_size_is_rejected_without_decompressing():
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(64 << 20))  # 64 MiB in ~2 KB
    _fails_fast_and_small(_valid_payload() | {"data": bomb}, "declares")


def test_a_zstd_frame_hiding_its_size_is_rejected():
    hidden = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 20))
    _fails_fast_and_small(_valid_payload() | {"data": hidden}, "does not declare")


def test_a_zstd_frame_declaring_zero_bytes_is_rejected_even_for_zero_rows():
    # python-zstandard returns b"" for such a frame without reading what follows
    frame = bytearray(zstandard.ZstdCompressor().compress(bytes(1 << 20)))
    frame[5:9] = bytes(4)
    payload = {"spec": "f32+zstd", "n": 0, "c": 10, "layout": "raw", "data": bytes(frame)}
    with pytest.raises(DecodeError, match="does not declare"):
        decode_soft_labels(payload, max_rows=10, num_classes=10)


def test_a_zstd_frame_lying_about_its_size_is_cut_off_at_the_declared_size():
    # Given a frame of 1 MiB whose header claims exactly what a dense 10 x 10 q8 layout
    # holds: 5 bytes of argmax columns and 90 codes
    frame = bytearray(zstandard.ZstdCompressor().compress(bytes(1 << 20)))
    descriptor = frame[4]
    assert descriptor >> 6 == 2 and descriptor & 0x23 == 0x20  # 4-byte size, single segment
    frame[5:9] = (95).to_bytes(4, "little")
    # When / Then
    payload = _valid_payload() | {"layout": "dense", "data": bytes(frame)}
    payload.pop("nnz", None)
    _fails_fast_and_small(payload, "bad zstd frame")


def test_trailing_bytes_after_a_zstd_frame_are_rejected():
    payload = _valid_payload()
    payload["data"] += b"\x00"
    with pytest.raises(DecodeError, match="zstd"):
        decode_soft_labels(payload, max_rows=10, num_classes=10)


@pytest.mark.parametrize("text", ["f32", "f16"])
@pytest.mark.parametrize(
    ("row", "problem"),
    [([0.5, float("nan")], "non-finite"), ([1.5, -0.5], "negative"), ([0.5, 0.4], "sum")],
)
def test_float_rows_that_are_not_distributions_are_rejected(text, row, problem):
    dtype = "<f4" if text == "f32" else "<f2"
    payload = {
        "spec": text,
        "n": 1,
        "c": 2,
        "layout": "raw",
        "data": np.array(row, dtype=dtype).tobytes(),
    }
    with pytest.raises(DecodeError, match=problem):
        decode_soft_labels(payload, max_rows=1, num_classes=2)


def test_a_float32_softmax_row_1e_minus_6_off_passes_unchanged():
    # torch's float32 softmax of [12, 0, ..., 0] (11 classes): its float64 sum is 1 - 5.5e-7
    probs = np.array([[0.9999380111694336] + [6.14383134234231e-06] * 10], dtype=np.float32)
    assert abs(probs.sum(dtype=np.float64) - 1 + 5.5e-7) < 1e-9
    payload = encode_soft_labels(probs, CodecSpec.parse("f32"))
    assert np.array_equal(decode_soft_labels(payload, max_rows=1, num_classes=11), probs)


def test_float_rows_slightly_off_are_renormalized():
    payload = {
        "spec": "f32",
        "n": 1,
        "c": 2,
        "layout": "raw",
        "data": np.array([0.5, 0.5004], dtype="<f4").tobytes(),
    }
    decoded = decode_soft_labels(payload, max_rows=1, num_classes=2)
    assert abs(decoded.sum(dtype=np.float64) - 1) <= 1e-6
