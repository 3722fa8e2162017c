import contextlib
import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import DecodeError, MessageTooLarge, ProtocolError, UnsupportedVersion
from shared.protocol.codec import (
    F32,
    DecodeLimits,
    decode_task,
    decode_upload,
    encode_task,
    encode_upload,
)
from shared.protocol.messages import CatchUp, DistillTargets, SoftLabelUpload, TrainTask
from shared.protocol.softlabels import CodecSpec, roundtrip

P = 100
LIMITS = DecodeLimits(public_size=P, num_classes=4)
SPECS = ["f32", "f16", "q8", "q8+zstd", "q4+zstd", "q2"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _probs(n: int, seed: int = 0) -> np.ndarray:
    return _softmax(np.random.default_rng(seed).standard_normal((n, 4)) * 3)


def _task(signals=(1, 2, 0), indices=(4, 7, 3)) -> TrainTask:
    fresh = sum(1 for s in signals if s != 0)
    return TrainTask(
        run_id="r1",
        round=3,
        client_id=2,
        request_indices=np.array([1, 5, 9]),
        targets=DistillTargets(2, np.array(indices), np.array(signals), _probs(fresh)),
        catch_up=CatchUp(np.array([30, 3]), _probs(2, 1), np.array([1, 0]), np.array([8])),
        cache_version=2,
        targets_digest="ab" * 32,
    )


def _upload() -> SoftLabelUpload:
    return SoftLabelUpload("r1", 3, 2, np.array([1, 5, 9]), _probs(3), 0.25, math.nan)


@pytest.mark.parametrize("spec", SPECS)
def test_a_task_survives_encoding_within_the_codec_bound(spec):
    codec = CodecSpec.parse(spec)
    task = _task()
    got = decode_task(encode_task(task, codec, public_size=P), LIMITS)
    assert (got.run_id, got.round, got.client_id, got.cache_version, got.targets_digest) == (
        "r1",
        3,
        2,
        2,
        "ab" * 32,
    )
    assert np.array_equal(got.request_indices, task.request_indices)
    assert got.targets is not None and task.targets is not None
    assert np.array_equal(got.targets.indices, task.targets.indices)
    assert got.targets.signals is not None
    assert np.array_equal(got.targets.signals, task.targets.signals)
    # decoded labels are exactly the codec's round trip (what the server cached)
    assert np.array_equal(got.targets.fresh_labels, roundtrip(task.targets.fresh_labels, codec))
    assert got.catch_up is not None
    assert np.array_equal(got.catch_up.update_indices, np.array([30, 3]))
    assert np.array_equal(got.catch_up.clear_indices, np.array([8]))
    assert np.array_equal(got.catch_up.update_written, np.array([1, 0]))


def test_targets_in_an_unusual_order_still_round_trip_through_the_list_layout():
    task = _task(signals=(0, 1, 2), indices=(9, 2, 5))
    got = decode_task(encode_task(task, F32, public_size=P), LIMITS)
    assert got.targets is not None and task.targets is not None
    assert np.array_equal(got.targets.indices, task.targets.indices)
    assert np.array_equal(got.targets.signals, task.targets.signals)


def test_dsfl_targets_without_signals_round_trip():
    task = TrainTask(
        "r1",
        1,
        0,
        np.array([2, 3]),
        DistillTargets(0, np.array([5, 1]), None, _probs(2)),
        None,
        0,
    )
    got = decode_task(encode_task(task, F32, public_size=P), LIMITS)
    assert got.targets is not None and got.targets.signals is None
    assert np.array_equal(got.targets.indices, np.array([5, 1]))
    assert np.array_equal(got.targets.fresh_labels, _probs(2))


@pytest.mark.parametrize("spec", SPECS)
def test_an_upload_survives_encoding_and_f32_is_exact(spec):
    up = _upload()
    codec = CodecSpec.parse(spec)
    got = decode_upload(encode_upload(up, codec, public_size=P), LIMITS)
    assert np.array_equal(got.indices, up.indices)
    assert got.train_loss == 0.25 and math.isnan(got.client_accuracy)
    assert np.array_equal(got.soft_labels, roundtrip(up.soft_labels, codec))
    assert np.abs(got.soft_labels - up.soft_labels).max() <= codec.max_abs_error(4)
    if spec == "f32":
        assert np.array_equal(got.soft_labels, up.soft_labels)


def test_the_compact_encoding_is_far_smaller_than_float32():
    g = np.random.default_rng(0)
    idx = np.sort(g.permutation(10_000)[:1000])
    labels = _softmax(g.standard_normal((1000, 10)) * 4)
    up = SoftLabelUpload("r1", 0, 0, idx, labels, 0.1, 0.5)
    f32 = len(encode_upload(up, F32, public_size=10_000))
    q8 = len(encode_upload(up, CodecSpec.parse("q8+zstd"), public_size=10_000))
    assert f32 > 1000 * 4 * 10
    assert q8 < 0.2 * 1000 * (4 * 10 + 8)  # paper accounting of the same upload


def _mutate(body: bytes, **changes: object) -> bytes:
    msg = msgpack.unpackb(body)
    for key, value in changes.items():
        msg[key] = value
    return msgpack.packb(msg)


def _upload_body() -> bytes:
    return encode_upload(_upload(), F32, public_size=P)


def test_an_unknown_schema_version_is_refused_by_name():
    with pytest.raises(UnsupportedVersion, match="schema version 99"):
        decode_upload(_mutate(_upload_body(), v=99), LIMITS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "train_task"}, "kind"),
        ({"round": -1}, "round"),
        ({"run": ""}, "run"),
        ({"train_loss": float("inf")}, "train_loss"),
        ({"indices": b"\x07garbage"}, "indices"),
        ({"indices": [1, 2, 3]}, "indices"),
        ({"labels": {"spec": "q9"}}, "labels"),
    ],
)
def test_malformed_uploads_raise_a_decode_error_naming_the_field(change, message):
    with pytest.raises(DecodeError, match=message):
        decode_upload(_mutate(_upload_body(), **change), LIMITS)


def test_out_of_range_indices_and_label_row_mismatches_are_refused():
    body = encode_upload(_upload(), F32, public_size=1000)  # index universe larger than P
    bad = _mutate(
        body,
        indices=msgpack.unpackb(
            encode_upload(
                SoftLabelUpload("r1", 3, 2, np.array([1, 5, 500]), _probs(3), 0.1, 0.5),
                F32,
                public_size=1000,
            )
        )["indices"],
    )
    with pytest.raises(DecodeError, match="indices"):
        decode_upload(bad, LIMITS)
    two_rows = msgpack.unpackb(
        encode_upload(
            SoftLabelUpload("r1", 3, 2, np.array([1, 5]), _probs(2), 0.1, 0.5),
            F32,
            public_size=P,
        )
    )["labels"]
    with pytest.raises(DecodeError, match="rows"):
        decode_upload(_mutate(_upload_body(), labels=two_rows), LIMITS)


def test_labels_off_the_simplex_are_refused():
    labels = msgpack.unpackb(_upload_body())["labels"]
    labels["data"] = (_probs(3) * 2).astype("<f4").tobytes()
    with pytest.raises(DecodeError, match="labels"):
        decode_upload(_mutate(_upload_body(), labels=labels), LIMITS)


def test_a_body_over_the_limit_is_refused_before_decoding():
    with pytest.raises(MessageTooLarge):
        decode_upload(_upload_body(), DecodeLimits(P, 4, max_body_bytes=64))


def test_a_forged_row_count_cannot_make_the_decoder_allocate():
    labels = msgpack.unpackb(_upload_body())["labels"]
    labels["n"] = 4_000_000_000
    with pytest.raises(ProtocolError):
        decode_upload(_mutate(_upload_body(), labels=labels), LIMITS)


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x93\x01\x02\x03", b"garbage" * 10])
def test_garbage_raises_only_protocol_errors(body):
    with pytest.raises(ProtocolError):
        decode_upload(body, LIMITS)
    with pytest.raises(ProtocolError):
        decode_task(body, LIMITS)


def test_inconsistent_targets_are_refused():
    body = encode_task(_task(), F32, public_size=P)
    msg = msgpack.unpackb(body)
    msg["targets"]["cached"] = msg["targets"]["fresh"]  # an index both fresh and cached
    with pytest.raises(DecodeError, match="both fresh and cached"):
        decode_task(msgpack.packb(msg), LIMITS)
    msg = msgpack.unpackb(body)
    msg["targets"]["layout"] = "zigzag"
    with pytest.raises(DecodeError, match="layout"):
        decode_task(msgpack.packb(msg), LIMITS)


VALID = [encode_task(_task(), CodecSpec.parse(s), public_size=P) for s in SPECS] + [
    encode_upload(_upload(), CodecSpec.parse(s), public_size=P) for s in SPECS
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(VALID) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10_000),
)
def test_mutated_messages_raise_only_protocol_errors(which, edits, cut):
    body = bytearray(VALID[which])
    for pos, value in edits:
        body[pos % len(body)] = value
    body = body[: max(1, cut % (len(body) + 1))] if cut % 3 == 0 else body
    for decode in (decode_task, decode_upload):
        with contextlib.suppress(ProtocolError):
            decode(bytes(body), LIMITS)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data):
    for decode in (decode_task, decode_upload):
        with contextlib.suppress(ProtocolError):
            decode(data, LIMITS)
