"""Selective-FD in the round core: subset uploads, their means, the filters and the mask."""

from __future__ import annotations

import numpy as np
import pytest

from services.worker.client_state import pack_client_state, unpack_client_state
from shared.config import FederationConfig
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.rounds.aggregator import AggregatorCore, UploadOutcome
from shared.rounds.setup import build_runtime, prepare_data
from tests.conftest import tiny_config

C = 3
A = np.array([0.5, 0.25, 0.25], dtype=np.float32)
B = np.array([0.25, 0.5, 0.25], dtype=np.float32)
U = np.array([1 / 3, 1 / 3, 1 / 3], dtype=np.float32)


def _config(**kw: object) -> FederationConfig:
    base: dict[str, object] = dict(
        algorithm="selective_fd",
        clients=3,
        public_size=40,
        public_per_round=10,
        rounds=5,
        downlink_codec="f32",
    )
    return FederationConfig(**{**base, **kw})


def _upload(task: TrainTask, rows: list[int], labels: list[np.ndarray]) -> SoftLabelUpload:
    indices = task.request_indices[rows]
    soft = np.array(labels, dtype=np.float32).reshape(len(rows), C)
    return SoftLabelUpload(task.run_id, task.round, task.client_id, indices, soft, 0.5, 0.5)


def test_each_sample_averages_the_clients_that_sent_it_and_unsent_ones_are_dropped():
    core = AggregatorCore(_config(), C)
    tasks = core.open_round()
    request = tasks[0].request_indices
    # client 0 sends rows 0, 1, 2; client 1 rows 1, 2, 3; client 2 nothing at all
    assert core.accept(_upload(tasks[0], [0, 1, 2], [A, A, B])) is UploadOutcome.ACCEPTED
    assert core.accept(_upload(tasks[1], [1, 2, 3], [B, B, U])) is UploadOutcome.ACCEPTED
    assert core.accept(_upload(tasks[2], [], [])) is UploadOutcome.ACCEPTED
    result = core.close_round()
    # plain means (no ERA): (A + B) / 2 = [0.375, 0.375, 0.25], (B + B) / 2 = B
    assert np.array_equal(result.indices, request[:4])
    expected = np.array([A, [0.375, 0.375, 0.25], B, U], dtype=np.float32)
    assert np.allclose(result.targets, expected, atol=1e-7)
    assert result.requested == 10 and result.contributors == (0, 1, 2)
    # the next round's tasks carry exactly those four rows down
    targets = core.open_round()[0].targets
    assert targets is not None and targets.signals is None
    assert np.array_equal(targets.indices, request[:4])
    assert np.allclose(targets.fresh_labels, expected, atol=1e-7)


def test_the_server_selector_drops_unconfident_means_below_its_l1_threshold():
    # L1 to the one-hot argmax: A, B 1.0; U 4/3; (A + B) / 2 1.25
    core = AggregatorCore(_config(sfd_l1_threshold=1.2), C)
    tasks = core.open_round()
    request = tasks[0].request_indices
    core.accept(_upload(tasks[0], [0, 1, 2], [A, A, U]))
    core.accept(_upload(tasks[1], [1], [B]))
    core.accept(_upload(tasks[2], [], []))
    result = core.close_round()
    assert np.array_equal(result.indices, request[[0]])  # only A passes 1.2
    assert np.allclose(result.targets, [A], atol=1e-7)
    default = AggregatorCore(_config(), C)  # 2.0: every row passes
    tasks = default.open_round()
    for task in tasks:
        default.accept(_upload(task, [0, 1, 2], [A, A, U]))
    assert default.close_round().indices.size == 3


def test_a_round_where_nobody_sent_anything_sends_nothing_down():
    core = AggregatorCore(_config(), C)
    for task in core.open_round():
        core.accept(_upload(task, [], []))
    result = core.close_round()
    assert result.indices.size == 0 and result.targets.shape == (0, C)
    targets = core.open_round()[0].targets
    assert targets is not None and targets.fresh_labels.shape == (0, C)


def test_admission_takes_a_sorted_unique_subset_of_the_request_and_refuses_the_rest():
    core = AggregatorCore(_config(), C)
    tasks = core.open_round()
    task = tasks[0]
    request = task.request_indices
    outside = int(np.setdiff1d(np.arange(40), request)[0])

    def upload(indices: list[int]) -> SoftLabelUpload:
        soft = np.tile(A, (len(indices), 1))
        return SoftLabelUpload("run", 0, 0, np.array(indices, dtype=np.int64), soft, 0.5, 0.5)

    refused = [
        sorted([int(request[0]), outside]),  # an index outside the request
        [int(request[2]), int(request[1])],  # not ascending
        [int(request[1]), int(request[1])],  # a duplicate
    ]
    for indices in refused:
        assert core.classify(upload(indices)) is UploadOutcome.REJECTED, indices
    assert core.accept(upload([int(request[1]), int(request[4])])) is UploadOutcome.ACCEPTED
    # every other algorithm still wants exactly the request
    dsfl = AggregatorCore(_config(algorithm="dsfl"), C)
    first = dsfl.open_round()[0]
    assert dsfl.classify(_upload(first, [0, 1], [A, A])) is UploadOutcome.REJECTED
    assert dsfl.classify(_upload(first, list(range(10)), [A] * 10)) is UploadOutcome.ACCEPTED


def test_selective_fd_needs_enough_private_images_for_its_selector():
    with pytest.raises(ValueError, match="samples_per_client >= 4"):
        _config(samples_per_client=3)
    assert _config(samples_per_client=4).sharpening == "none"


CLIENT = tiny_config(
    run_id="sfd", algorithm="selective_fd", clients=2, public_size=60, public_per_round=30
)


def _task(round_no: int) -> TrainTask:
    return TrainTask(
        run_id=CLIENT.run_id,
        round=round_no,
        client_id=1,
        request_indices=np.arange(0, 60, 2, dtype=np.int64),
        targets=None,
        catch_up=None,
        cache_version=0,
    )


def test_a_client_uploads_only_its_inliers_and_keeps_the_mask_through_its_state():
    data = prepare_data(CLIENT)
    runtime = build_runtime(CLIENT, data, 1)
    assert runtime.inliers is None  # fitted at the first task, not at start-up
    upload = runtime.handle(_task(0))
    mask = runtime.inliers
    assert mask is not None and mask.shape == (60,) and mask.dtype == np.bool_
    request = _task(0).request_indices
    assert np.array_equal(upload.indices, request[mask[request]])
    assert 0 < upload.indices.size < request.size  # this client drops some, keeps most
    assert upload.soft_labels.shape == (upload.indices.size, data.num_classes)
    # the same client in another process fits the same mask (seed and client id only)
    assert np.array_equal(build_runtime(CLIENT, data, 1).selector_inliers(), mask)
    # a mask restored from the state is used as it is, never refitted
    runtime.inliers = np.arange(60) % 3 == 0
    restored = build_runtime(CLIENT, data, 1)
    restored.load_state_dict(unpack_client_state(pack_client_state(runtime.state_dict())))
    assert restored.inliers is not None
    assert np.array_equal(restored.inliers, np.arange(60) % 3 == 0)
    assert np.array_equal(restored.handle(_task(1)).indices, np.arange(0, 60, 6))
    # and a client saved before its first task restores with no mask
    unfitted = build_runtime(CLIENT, data, 0)
    again = build_runtime(CLIENT, data, 0)
    again.load_state_dict(unpack_client_state(pack_client_state(unfitted.state_dict())))
    assert again.inliers is None
