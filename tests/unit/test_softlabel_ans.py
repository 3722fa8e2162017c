import msgpack
import numpy as np
import pytest

from shared.errors import DecodeError
from shared.protocol.softlabels import (
    CodecSpec,
    decode_soft_labels,
    encode_soft_labels,
    quantize_simplex,
    roundtrip,
)


def _peaked(n: int, c: int, seed: int, peak: float = 8.0) -> np.ndarray:
    """Confident softmax rows: a random class lifted by ``peak``, like a trained model's."""
    generator = np.random.default_rng(seed)
    logits = generator.normal(size=(n, c)) * 2
    logits[np.arange(n), generator.integers(0, c, n)] += peak
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def _near_uniform(n: int, c: int, seed: int) -> np.ndarray:
    """A weak model's rows: each class near its own share, little per-row signal."""
    generator = np.random.default_rng(seed)
    logits = generator.normal(size=(n, c)) * 0.3 + np.linspace(0, 2, c)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def _wire(payload) -> int:
    return len(msgpack.packb(payload))


def _order0_bits(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def _symbol_entropy_bytes(probs: np.ndarray, bits: int) -> float:
    """Order-0 entropy of what the quant codec codes: argmax columns and the other codes."""
    codes = quantize_simplex(probs, bits)
    argmax = codes.argmax(axis=1)
    keep = np.ones(codes.shape, dtype=bool)
    keep[np.arange(len(codes)), argmax] = False
    return (_order0_bits(argmax) + _order0_bits(codes[keep])) / 8


@pytest.mark.parametrize(("n", "c"), [(1_000, 10), (2_000, 100)])
@pytest.mark.parametrize("rows", [_peaked, _near_uniform])
def test_ans_is_smaller_than_zstd_and_within_1_1_of_the_symbols_entropy(n, c, rows):
    # Given
    probs = rows(n, c, seed=n + c)
    # When
    ans = encode_soft_labels(probs, CodecSpec.parse("q8+ans"))
    zstd = encode_soft_labels(probs, CodecSpec.parse("q8+zstd"))
    # Then: the whole msgpack map, header included
    assert _wire(ans) < _wire(zstd)
    assert _wire(ans) <= 1.1 * _symbol_entropy_bytes(probs, 8)


@pytest.mark.parametrize("text", ["q8+ans", "q4+ans", "q8+delta+ans", "q2+delta+ans"])
def test_ans_decodes_to_what_roundtrip_promises(text):
    spec = CodecSpec.parse(text)
    probs = _peaked(300, 10, seed=1)
    reference = roundtrip(_peaked(300, 10, seed=2), spec) if spec.delta else None
    payload = msgpack.unpackb(msgpack.packb(encode_soft_labels(probs, spec, reference)))
    decoded = decode_soft_labels(payload, reference=reference, max_rows=300, num_classes=10)
    assert payload["layout"] == "ans"
    assert np.array_equal(decoded, roundtrip(probs, spec, reference))


def test_one_class_and_zero_rows_code_to_nothing():
    for probs in (np.ones((5, 1), dtype=np.float32), np.zeros((0, 10), dtype=np.float32)):
        payload = encode_soft_labels(probs, CodecSpec.parse("q8+ans"))
        assert payload["data"] == b""
        n, c = probs.shape
        decoded = decode_soft_labels(payload, max_rows=n, num_classes=c)
        assert np.array_equal(decoded, probs)


def test_the_same_labels_give_the_same_bytes():
    probs = _near_uniform(500, 10, seed=3)
    first = encode_soft_labels(probs, CodecSpec.parse("q8+ans"))
    assert first == encode_soft_labels(probs.copy(), CodecSpec.parse("q8+ans"))


@pytest.mark.parametrize("layout", ["dense", "sparse", "raw"])
def test_an_ans_spec_with_another_layout_is_rejected(layout):
    payload = encode_soft_labels(_peaked(10, 10, seed=4), CodecSpec.parse("q8+ans"))
    with pytest.raises(DecodeError, match="layout"):
        decode_soft_labels(payload | {"layout": layout}, max_rows=10, num_classes=10)


def test_an_ans_layout_under_a_zstd_spec_is_rejected():
    payload = encode_soft_labels(_peaked(10, 10, seed=4), CodecSpec.parse("q8+ans"))
    with pytest.raises(DecodeError, match="layout"):
        decode_soft_labels(payload | {"spec": "q8+zstd"}, max_rows=10, num_classes=10)


def test_truncated_or_extended_ans_data_is_rejected():
    payload = encode_soft_labels(_peaked(200, 10, seed=5), CodecSpec.parse("q8+ans"))
    data = payload["data"]
    for broken in (data[:-4], data[:-1], data + b"\x07\x00\x00\x00", data[4:]):
        with pytest.raises(DecodeError, match="data:"):
            decode_soft_labels(payload | {"data": broken}, max_rows=200, num_classes=10)


def test_ans_data_decoded_with_the_wrong_row_count_is_rejected():
    payload = encode_soft_labels(_peaked(200, 10, seed=6), CodecSpec.parse("q8+ans"))
    for n in (199, 201):
        with pytest.raises(DecodeError):
            decode_soft_labels(payload | {"n": n}, max_rows=300, num_classes=10)
