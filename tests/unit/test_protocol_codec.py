import math

import msgpack
import pytest
import torch

from shared.errors import DecodeError, MessageTooLarge, ProtocolError, UnsupportedVersion
from shared.protocol.codec import (
    DecodeLimits,
    decode_task,
    decode_upload,
    encode_task,
    encode_upload,
)
from shared.protocol.messages import CatchUp, DistillTargets, SoftLabelUpload, TrainTask

LIMITS = DecodeLimits(public_size=100, num_classes=4)


def _probs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)), -1)


def _task() -> TrainTask:
    return TrainTask(
        run_id="r1",
        round=3,
        client_id=2,
        request_indices=torch.tensor([1, 5, 9]),
        targets=DistillTargets(2, torch.tensor([4, 7, 3]), torch.tensor([1, 2, 0]), _probs(2)),
        catch_up=CatchUp(torch.tensor([3]), _probs(1, 1), torch.tensor([1]), torch.tensor([8])),
        cache_version=2,
    )


def _upload() -> SoftLabelUpload:
    return SoftLabelUpload("r1", 3, 2, torch.tensor([1, 5, 9]), _probs(3), 0.25, math.nan)


def _assert_tasks_equal(a: TrainTask, b: TrainTask) -> None:
    assert (a.run_id, a.round, a.client_id, a.cache_version) == (
        b.run_id,
        b.round,
        b.client_id,
        b.cache_version,
    )
    assert torch.equal(a.request_indices, b.request_indices)
    assert a.targets is not None and b.targets is not None
    assert torch.equal(a.targets.indices, b.targets.indices)
    assert a.targets.signals is not None and b.targets.signals is not None
    assert torch.equal(a.targets.signals, b.targets.signals)
    assert torch.allclose(a.targets.fresh_labels, b.targets.fresh_labels, atol=1e-7)


def test_a_task_survives_encoding_and_decoding():
    task = _task()
    decoded = decode_task(encode_task(task), LIMITS)
    _assert_tasks_equal(task, decoded)
    assert decoded.catch_up is not None
    assert torch.equal(decoded.catch_up.clear_indices, torch.tensor([8]))


def test_an_upload_survives_encoding_and_decoding_with_exact_float32_labels():
    up = _upload()
    got = decode_upload(encode_upload(up), LIMITS)
    assert torch.equal(got.soft_labels, up.soft_labels)
    assert got.train_loss == 0.25 and math.isnan(got.client_accuracy)


def _mutate(body: bytes, **changes: object) -> bytes:
    msg = msgpack.unpackb(body)
    for key, value in changes.items():
        msg[key] = value
    return msgpack.packb(msg)


def test_an_unknown_schema_version_is_refused_by_name():
    with pytest.raises(UnsupportedVersion, match="schema version 99"):
        decode_upload(_mutate(encode_upload(_upload()), v=99), LIMITS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "train_task"}, "kind"),
        ({"round": -1}, "round"),
        ({"run": ""}, "run"),
        ({"train_loss": float("inf")}, "train_loss"),
        ({"indices": {"dtype": "<i8", "shape": [3], "data": b"\x00" * 23}}, "wrong number"),
    ],
)
def test_malformed_uploads_raise_a_decode_error_naming_the_field(change, message):
    with pytest.raises(DecodeError, match=message):
        decode_upload(_mutate(encode_upload(_upload()), **change), LIMITS)


def test_out_of_range_duplicate_or_unsorted_indices_are_refused():
    for idx, msg in [([1, 5, 100], "outside"), ([1, 5, 5], "unique"), ([5, 1, 9], "ascending")]:
        up = SoftLabelUpload("r1", 3, 2, torch.tensor(idx), _probs(3), 0.1, 0.5)
        with pytest.raises(DecodeError, match=msg):
            decode_upload(encode_upload(up), LIMITS)


def test_labels_off_the_simplex_are_refused():
    bad = [_probs(3) * 2, -_probs(3), torch.full((3, 4), float("nan"))]
    for labels in bad:
        up = SoftLabelUpload("r1", 3, 2, torch.tensor([1, 5, 9]), labels, 0.1, 0.5)
        with pytest.raises(DecodeError, match="labels"):
            decode_upload(encode_upload(up), LIMITS)


def test_a_body_over_the_limit_is_refused_before_decoding():
    with pytest.raises(MessageTooLarge):
        decode_upload(encode_upload(_upload()), DecodeLimits(100, 4, max_body_bytes=64))


def test_a_forged_shape_cannot_make_the_decoder_allocate():
    body = _mutate(
        encode_upload(_upload()), labels={"dtype": "<f4", "shape": [3, 4_000_000_000], "data": b""}
    )
    with pytest.raises(DecodeError):
        decode_upload(body, LIMITS)


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x93\x01\x02\x03", b"garbage" * 10])
def test_garbage_raises_only_protocol_errors(body):
    with pytest.raises(ProtocolError):
        decode_upload(body, LIMITS)
    with pytest.raises(ProtocolError):
        decode_task(body, LIMITS)


def test_signal_codes_and_fresh_row_counts_are_checked():
    task = _task()
    assert task.targets is not None
    bad = TrainTask(
        task.run_id,
        3,
        2,
        task.request_indices,
        DistillTargets(2, task.targets.indices, torch.tensor([1, 7, 0]), task.targets.fresh_labels),
        None,
        2,
    )
    with pytest.raises(DecodeError, match="signals"):
        decode_task(encode_task(bad), LIMITS)
    wrong_rows = TrainTask(
        task.run_id,
        3,
        2,
        task.request_indices,
        DistillTargets(2, task.targets.indices, torch.tensor([1, 1, 1]), task.targets.fresh_labels),
        None,
        2,
    )
    with pytest.raises(DecodeError, match="shape"):
        decode_task(encode_task(wrong_rows), LIMITS)
