"""COMET: the k-means centroids, the nearest-centroid choice, their wire block, their cost.

Hand-worked first (four clients in two obvious groups), then the properties the round
relies on (determinism, no NaN with fewer distinct labels than clusters), the codec's
round trip and its refusal of malformed centroid blocks, the paper accounting, and the
aggregator and client halves of a COMET round.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.worker.admission import Fit, judge_task
from shared.accounting import dsfl_task_bytes, paper_task_bytes
from shared.config import FederationConfig
from shared.distill.clusters import kmeans_centroids, nearest_centroids
from shared.distill.training import distill, predict
from shared.errors import DecodeError, ProtocolError
from shared.models import build_model
from shared.protocol.codec import F32, DecodeLimits, decode_task, encode_task
from shared.protocol.messages import DistillTargets, SoftLabelUpload, TrainTask
from shared.protocol.softlabels import CodecSpec
from shared.rounds.aggregator import AggregatorCore, UploadOutcome
from shared.rounds.aggregator_state import dump_aggregator, restore_aggregator
from shared.rounds.setup import build_runtime, prepare_data
from tests.conftest import tiny_config

# one sample, four clients: two agree on class 0, two on class 1
GROUPED = np.array(
    [
        [
            [0.90, 0.05, 0.05],
            [0.80, 0.10, 0.10],
            [0.10, 0.80, 0.10],
            [0.00, 0.90, 0.10],
        ]
    ],
    dtype=np.float32,
)
CENTRE_A = np.array([0.85, 0.075, 0.075], dtype=np.float32)
CENTRE_B = np.array([0.05, 0.85, 0.10], dtype=np.float32)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _by_first_class(centroids: np.ndarray) -> np.ndarray:
    """The centroids of one sample in descending order of their class-0 mass."""
    return centroids[np.argsort(-centroids[:, 0])]


# -- the math ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_two_obvious_groups_give_their_means_as_centroids_whatever_the_seed(seed):
    centroids = kmeans_centroids(GROUPED, 2, _rng(seed))
    assert centroids.shape == (1, 2, 3) and centroids.dtype == np.float32
    assert np.allclose(_by_first_class(centroids[0]), [CENTRE_A, CENTRE_B], atol=1e-6)


def test_every_sample_is_clustered_at_once_and_on_its_own():
    # sample 1 groups clients (0, 3) and (1, 2); sample 2 has all four agreeing but one
    second = GROUPED[0][[0, 2, 3, 1]]
    third = np.array([[0.2, 0.2, 0.6]] * 3 + [[0.6, 0.2, 0.2]], dtype=np.float32)
    points = np.stack([GROUPED[0], second, third])
    centroids = kmeans_centroids(points, 2, _rng(3))
    assert np.allclose(_by_first_class(centroids[0]), [CENTRE_A, CENTRE_B], atol=1e-6)
    assert np.allclose(_by_first_class(centroids[1]), [CENTRE_A, CENTRE_B], atol=1e-6)
    assert np.allclose(_by_first_class(centroids[2]), [[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]])
    # centroids of probability rows are probability rows
    assert np.allclose(centroids.sum(axis=2), 1.0, atol=1e-6)


def test_the_same_seed_gives_the_same_centroids_and_the_seed_matters_for_seeding():
    points = torch.softmax(torch.randn(200, 6, 5, generator=torch.manual_seed(1)), -1).numpy()
    a = kmeans_centroids(points, 3, _rng(7))
    b = kmeans_centroids(points, 3, _rng(7))
    assert np.array_equal(a, b)
    c = kmeans_centroids(points, 3, _rng(8))
    assert not np.array_equal(a, c)  # other seeds: another (equally valid) local optimum order


@pytest.mark.parametrize(
    "points",
    [
        GROUPED[:, :1],  # one contributing client, two clusters
        np.repeat(GROUPED[:, :1], 4, axis=1),  # four clients that agree exactly
        np.concatenate([GROUPED[:, :1], GROUPED[:, :1], GROUPED[:, 2:3]], axis=1),
    ],
    ids=["one-client", "all-equal", "two-distinct-of-three"],
)
def test_fewer_distinct_labels_than_clusters_repeat_a_label_and_never_give_nan(points):
    centroids = kmeans_centroids(points, 3, _rng(0))
    assert np.isfinite(centroids).all()
    distinct = np.unique(points[0], axis=0)
    # every centroid is one of the distinct labels: nothing averages them wrongly
    for centroid in centroids[0]:
        assert np.isclose(distinct, centroid, atol=1e-7).all(axis=1).any()
    assert {tuple(np.round(c, 6)) for c in centroids[0]} == {
        tuple(np.round(d, 6)) for d in distinct
    }


def test_each_client_picks_the_centroid_nearest_its_own_prediction():
    centroids = np.stack([np.stack([CENTRE_A, CENTRE_B])] * 3)
    own = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.45, 0.45, 0.1]], dtype=np.float32)
    chosen = nearest_centroids(own, centroids)
    # the third is nearer A: |(.4,.375,.025)|^2 = 0.301 < |(.4,.4,0)|^2 = 0.32
    assert np.array_equal(chosen, np.stack([CENTRE_A, CENTRE_B, CENTRE_A]))
    tie = nearest_centroids(own[:1], np.stack([np.stack([CENTRE_B, CENTRE_B])]))
    assert np.array_equal(tie, CENTRE_B[None])
    with pytest.raises(ValueError):
        nearest_centroids(own[:2], centroids)


def test_the_distillation_weight_scales_the_sgd_step():
    # plain SGD: weight w at rate lr is the step of weight 1 at rate w * lr
    images = torch.rand(20, 1, 8, 8, generator=torch.manual_seed(0))
    targets = torch.softmax(torch.randn(20, 10, generator=torch.manual_seed(1)), -1)
    models = [build_model("mlp", (1, 8, 8), 10, seed=5) for _ in range(3)]
    kw = dict(epochs=2, batch_size=10)
    distill(models[0], images, targets, lr=0.1, weight=0.25, **kw)
    distill(models[1], images, targets, lr=0.025, **kw)
    distill(models[2], images, targets, lr=0.1, **kw)
    weighted, scaled, plain = (list(m.parameters()) for m in models)
    for a, b in zip(weighted, scaled, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(not torch.allclose(a, c, atol=1e-4) for a, c in zip(weighted, plain, strict=True))


# -- the wire ---------------------------------------------------------------------------

P, C = 100, 3
LIMITS = DecodeLimits(public_size=P, num_classes=C)


def _rows(n: int) -> np.ndarray:
    return torch.softmax(torch.randn(n, C, generator=torch.manual_seed(2)), -1).numpy()


def _centroid_task(clusters: int = 2, n: int = 4) -> TrainTask:
    targets = DistillTargets(2, np.array([3, 8, 20, 41][:n]), None, _rows(n * clusters), clusters)
    return TrainTask("r1", 3, 1, np.array([1, 5, 9]), targets, None, 0)


@pytest.mark.parametrize("spec", ["f32", "q8+ans", "q4+zstd"])
def test_a_centroid_block_round_trips_through_the_soft_label_codec(spec):
    task = _centroid_task()
    got = decode_task(encode_task(task, CodecSpec.parse(spec), public_size=P), LIMITS)
    assert got.targets is not None and task.targets is not None
    assert got.targets.clusters == 2 and got.targets.signals is None
    assert np.array_equal(got.targets.indices, task.targets.indices)
    assert got.targets.fresh_labels.shape == (8, C)
    tolerance = 0 if spec == "f32" else 1 / 15
    assert np.allclose(got.targets.fresh_labels, task.targets.fresh_labels, atol=tolerance)


def test_other_algorithms_bodies_carry_no_clusters_key_and_decode_as_one_row_per_index():
    body = encode_task(_centroid_task(clusters=1), F32, public_size=P)
    assert "clusters" not in msgpack.unpackb(body)["targets"]
    got = decode_task(body, LIMITS)
    assert got.targets is not None and got.targets.clusters == 1


def _with_targets(**edits: object) -> bytes:
    msg = msgpack.unpackb(encode_task(_centroid_task(), F32, public_size=P))
    msg["targets"].update(edits)
    return msgpack.packb(msg)


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"clusters": 0}, "targets.clusters"),
        ({"clusters": -2}, "targets.clusters"),
        ({"clusters": 65}, "targets.clusters"),
        ({"clusters": "2"}, "targets.clusters"),
        ({"clusters": True}, "targets.clusters"),
        ({"clusters": 2.0}, "targets.clusters"),
        ({"clusters": 3}, "targets.labels"),  # 8 rows are not 4 indices x 3 centroids
        ({"clusters": 1}, "targets.labels"),  # nor 4 x 1
        ({"labels": b"\x00"}, "targets.labels"),
    ],
)
def test_a_malformed_centroid_block_raises_a_decode_error_naming_the_field(edits, message):
    with pytest.raises(DecodeError, match=message):
        decode_task(_with_targets(**edits), LIMITS)


def test_centroids_with_cache_signals_are_refused():
    signalled = DistillTargets(2, np.array([3, 8]), np.array([1, 1]), _rows(4), 2)
    body = encode_task(replace(_centroid_task(), targets=signalled), F32, public_size=P)
    with pytest.raises(DecodeError, match="without cache signals"):
        decode_task(body, LIMITS)


COMET_BODIES = [
    encode_task(_centroid_task(), CodecSpec.parse(s), public_size=P) for s in ("f32", "q8+ans")
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(COMET_BODIES) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
)
def test_mutated_centroid_tasks_raise_only_protocol_errors(which, edits):
    body = bytearray(COMET_BODIES[which])
    for pos, value in edits:
        body[pos % len(body)] = value
    with contextlib.suppress(ProtocolError):
        decode_task(bytes(body), LIMITS)


# -- the paper accounting ---------------------------------------------------------------


def test_centroids_cost_one_row_per_index_under_full_participation_and_all_rows_otherwise():
    task = _centroid_task(clusters=2, n=4)  # 4 indices x 2 centroids, 3 requested
    # full participation: as DS-FL, 4 B x C per index + 8 B per index + 8 B per request
    full = paper_task_bytes(task, C, full_participation=True)
    assert full == dsfl_task_bytes(4, 3, C) == 4 * C * 4 + 8 * 4 + 8 * 3
    assert paper_task_bytes(task, C) == 4 * C * 8 + 8 * 4 + 8 * 3
    # one row per index (every other algorithm): the flag changes nothing
    one = _centroid_task(clusters=1, n=4)
    assert paper_task_bytes(one, C) == paper_task_bytes(one, C, full_participation=True)


# -- the aggregator and the client ------------------------------------------------------


def _config(**kw: object) -> FederationConfig:
    base = dict(clients=4, public_size=40, public_per_round=10, rounds=5, algorithm="comet")
    return FederationConfig(**{**base, **kw})  # type: ignore[arg-type]


def _upload(task: TrainTask) -> SoftLabelUpload:
    g = torch.manual_seed(task.round * 10 + task.client_id)
    probs = torch.softmax(3 * torch.randn(task.request_indices.size, C, generator=g), -1)
    return SoftLabelUpload(
        task.run_id, task.round, task.client_id, task.request_indices, probs.numpy(), 0.5, 0.5
    )


def _closed_round(core: AggregatorCore) -> list[SoftLabelUpload]:
    uploads = [_upload(t) for t in core.open_round()]
    for u in reversed(uploads):  # arrival order must not matter
        assert core.accept(u) is UploadOutcome.ACCEPTED
    core.close_round()
    return uploads


def test_the_server_distils_on_the_plain_mean_and_clients_get_the_centroids():
    core = AggregatorCore(_config(downlink_codec="f32"), C)
    uploads = _closed_round(core)
    stacked = np.stack([u.soft_labels for u in sorted(uploads, key=lambda u: u.client_id)])
    indices, targets = core.server_distill_set()
    assert np.array_equal(indices, uploads[0].indices)
    assert np.allclose(targets, stacked.mean(axis=0), atol=1e-6)  # no ERA
    sent = core.downlink_targets
    assert sent is not None and sent.clusters == 2 and sent.signals is None
    again = kmeans_centroids(stacked.transpose(1, 0, 2), 2, np.random.default_rng((42, 0, 4)))
    assert np.allclose(sent.fresh_labels, again.reshape(-1, C), atol=1e-6)
    # each sample's centroids lie between its clients' labels
    per_index = sent.fresh_labels.reshape(-1, 2, C)
    assert (per_index >= stacked.min(axis=0)[:, None] - 1e-6).all()
    assert (per_index <= stacked.max(axis=0)[:, None] + 1e-6).all()
    task = core.open_round()[0]
    assert task.targets is sent


def test_the_centroids_are_what_the_downlink_codec_delivers_and_survive_a_restart():
    core = AggregatorCore(_config(downlink_codec="q8+ans", comet_clusters=3), C)
    _closed_round(core)
    sent = core.downlink_targets
    assert sent is not None and sent.fresh_labels.shape == (30, C)
    body = encode_task(core.open_round()[0], CodecSpec.parse("q8+ans"), public_size=40)
    decoded = decode_task(body, DecodeLimits(40, C)).targets
    assert decoded is not None and np.array_equal(decoded.fresh_labels, sent.fresh_labels)
    restored = AggregatorCore(core.config, C)
    restore_aggregator(restored, dump_aggregator(core), None, None, 0)
    assert restored.server_targets is not None and core.server_targets is not None
    assert np.array_equal(restored.server_targets, core.server_targets)
    again = restored.downlink_targets
    assert again is not None and again.clusters == 3
    assert np.array_equal(again.fresh_labels, sent.fresh_labels)


def test_a_task_whose_rows_per_index_are_not_the_algorithms_is_a_misfit():
    config = tiny_config(algorithm="comet", clients=2, public_size=30, public_per_round=12)
    task = _centroid_task(clusters=2, n=4)
    task = replace(
        task,
        run_id=config.run_id,
        round=1,
        client_id=0,
        request_indices=np.empty(0, dtype=np.int64),
    )
    task = replace(task, targets=replace(task.targets, round=0))  # type: ignore[arg-type]
    assert judge_task(task, config, -1).fit is Fit.NEW
    three = replace(task, targets=replace(task.targets, clusters=3))  # type: ignore[arg-type]
    assert judge_task(three, config, -1).fit is Fit.MISFIT
    dsfl = config.model_copy(update={"algorithm": "dsfl"})
    verdict = judge_task(task, dsfl, -1)
    assert verdict.fit is Fit.MISFIT and "rows per index" in verdict.reason


def test_a_comet_client_distils_exactly_as_on_its_nearest_centroid_alone():
    comet = tiny_config(
        algorithm="comet", clients=2, public_size=30, public_per_round=12, comet_weight=1.0
    )
    dsfl = comet.model_copy(update={"algorithm": "dsfl"})
    data = prepare_data(comet)
    a, b = build_runtime(comet, data, 0), build_runtime(dsfl, data, 0)
    indices = np.arange(6, dtype=np.int64)
    # both runtimes start from the same weights (the model seed is the config seed's)
    mine = predict(a.model, data.public[torch.from_numpy(indices)]).numpy()
    other = np.roll(mine, 1, axis=1)  # far from the client's own prediction
    centroids = np.stack([other, mine], axis=1)  # the nearest is the second
    request = np.array([7, 9], dtype=np.int64)
    comet_task = TrainTask(
        comet.run_id,
        1,
        0,
        request,
        DistillTargets(0, indices, None, centroids.reshape(-1, 10), 2),
        None,
        0,
    )
    dsfl_task = TrainTask(
        dsfl.run_id, 1, 0, request, DistillTargets(0, indices, None, mine), None, 0
    )
    up_a = a.handle(comet_task)
    up_b = b.handle(dsfl_task)
    assert np.array_equal(up_a.soft_labels, up_b.soft_labels)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
