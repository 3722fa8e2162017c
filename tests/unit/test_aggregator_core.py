import numpy as np
import pytest
import torch

from shared.cache_policy import CacheSignal
from shared.config import FederationConfig
from shared.distill.era import enhanced_era, era
from shared.errors import RoundStateConflict
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.protocol.softlabels import CodecSpec, roundtrip
from shared.rounds.aggregator import AggregatorCore, UploadOutcome

C = 3


def _config(**kw) -> FederationConfig:
    base = dict(clients=3, public_size=40, public_per_round=10, cache_duration=2, rounds=5)
    base.update(kw)
    return FederationConfig(**base)


def _upload(task: TrainTask, seed: int) -> SoftLabelUpload:
    g = torch.Generator().manual_seed(seed * 1000 + task.round * 10 + task.client_id)
    probs = torch.softmax(torch.randn(task.request_indices.size, C, generator=g), -1).numpy()
    return SoftLabelUpload(
        task.run_id, task.round, task.client_id, task.request_indices, probs, 0.5, 0.5
    )


def _mean(uploads: list[SoftLabelUpload]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(u.soft_labels) for u in uploads]).mean(0)


def _run_round(core: AggregatorCore, seed: int = 0, order=None):
    tasks = core.open_round()
    uploads = [_upload(t, seed) for t in tasks]
    for u in uploads if order is None else [uploads[i] for i in order]:
        assert core.accept(u) is UploadOutcome.ACCEPTED
    return tasks, uploads, core.close_round()


def test_scarlet_aggregates_the_mean_with_enhanced_era_and_dsfl_with_era():
    for algorithm, sharpen in [
        ("scarlet", lambda p: enhanced_era(p, 2.0)),
        ("dsfl", lambda p: era(p, 0.1)),
    ]:
        core = AggregatorCore(_config(algorithm=algorithm, downlink_codec="f32"), C)
        _, uploads, result = _run_round(core)
        mean = _mean(uploads)
        assert np.allclose(result.targets, sharpen(mean).numpy(), atol=1e-6)


def test_the_global_labels_are_exactly_what_the_downlink_codec_delivers():
    core = AggregatorCore(_config(downlink_codec="q6+zstd"), C)
    _, uploads, result = _run_round(core)
    expected = roundtrip(enhanced_era(_mean(uploads), 2.0).numpy(), CodecSpec.parse("q6+zstd"))
    assert np.array_equal(result.targets, expected)
    assert core.cache is not None
    assert np.array_equal(core.cache.labels[result.indices], expected)


def test_the_aggregate_does_not_depend_on_arrival_order():
    a = _run_round(AggregatorCore(_config(), C), order=[0, 1, 2])[2]
    b = _run_round(AggregatorCore(_config(), C), order=[2, 0, 1])[2]
    assert np.array_equal(a.targets, b.targets)


def test_duplicates_late_and_foreign_uploads_are_classified_and_ignored():
    core = AggregatorCore(_config(), C)
    tasks = core.open_round()
    first = _upload(tasks[0], 0)
    assert core.accept(first) is UploadOutcome.ACCEPTED
    assert core.accept(first) is UploadOutcome.DUPLICATE
    wrong = SoftLabelUpload(
        "run",
        0,
        tasks[1].client_id,
        tasks[1].request_indices[:-1],
        first.soft_labels[:-1],
        0.1,
        0.1,
    )
    assert core.accept(wrong) is UploadOutcome.REJECTED
    other_run = SoftLabelUpload("other", 0, 1, first.indices, first.soft_labels, 0.1, 0.1)
    assert core.accept(other_run) is UploadOutcome.REJECTED
    for t in tasks[1:]:
        core.accept(_upload(t, 0))
    core.close_round()
    assert core.accept(_upload(tasks[1], 0)) is UploadOutcome.LATE
    future = SoftLabelUpload("run", 5, 0, first.indices, first.soft_labels, 0.1, 0.1)
    assert core.accept(future) is UploadOutcome.REJECTED


def test_a_round_closes_with_the_uploads_it_has_and_refuses_to_close_without_any():
    core = AggregatorCore(_config(), C)
    tasks = core.open_round()
    with pytest.raises(RoundStateConflict, match="no accepted upload"):
        core.close_round()
    core.accept(_upload(tasks[1], 0))
    assert core.missing() == [tasks[0].client_id, tasks[2].client_id]
    result = core.close_round()
    assert result.contributors == (tasks[1].client_id,)
    with pytest.raises(RoundStateConflict):
        core.close_round()


def test_scarlet_requests_fewer_labels_than_dsfl_and_sends_only_non_cached_rows():
    scarlet, dsfl = AggregatorCore(_config(), C), AggregatorCore(_config(algorithm="dsfl"), C)
    requested = {"s": 0, "d": 0}
    for _ in range(4):
        s_tasks, _, s_res = _run_round(scarlet)
        d_tasks, _, _ = _run_round(dsfl)
        requested["s"] += s_res.requested
        requested["d"] += d_tasks[0].request_indices.size
        for t in s_tasks:
            if t.targets is not None:
                assert t.targets.signals is not None
                fresh = int((t.targets.signals != int(CacheSignal.CACHED)).sum())
                assert t.targets.fresh_labels.shape == (fresh, C)
        for t in d_tasks:
            if t.targets is not None:
                assert t.targets.signals is None
                assert t.targets.fresh_labels.shape == (10, C)
    assert requested["s"] < requested["d"] == 40


def test_partial_participation_sends_catch_up_only_to_clients_that_missed_rounds():
    core = AggregatorCore(
        _config(clients=6, sample_ratio=0.5, public_size=12, public_per_round=8, cache_duration=5),
        C,
    )
    assert core.mirrors is not None
    attended: dict[int, set[int]] = {k: set() for k in range(6)}
    got_catch_up = False
    for r in range(8):
        tasks, _, _ = _run_round(core)
        for t in tasks:
            perfect_attendance = attended[t.client_id] == set(range(r))
            if t.round <= 1 or perfect_attendance:
                # nothing cached before round 0 committed; a client that saw every signal
                # holds exactly the global cache
                assert t.catch_up is None, (t.round, t.client_id)
            elif t.catch_up is not None:
                got_catch_up = True
            attended[t.client_id].add(r)
    assert got_catch_up


def test_rounds_and_samples_are_reproducible_from_the_seed():
    a, b = AggregatorCore(_config(seed=3), C), AggregatorCore(_config(seed=3), C)
    for _ in range(3):
        ta, _, ra = _run_round(a)
        tb, _, rb = _run_round(b)
        assert [t.client_id for t in ta] == [t.client_id for t in tb]
        assert np.array_equal(ra.indices, rb.indices) and np.array_equal(ra.targets, rb.targets)


def test_a_restored_aggregator_continues_exactly_like_the_original():
    from shared.rounds.aggregator_state import dump_aggregator, restore_aggregator

    cfg = _config(clients=4, sample_ratio=0.5, public_size=30, public_per_round=10)
    original = AggregatorCore(cfg, C)
    for _ in range(3):
        _run_round(original)
    tasks = original.open_round()
    first = _upload(tasks[0], 0)
    original.accept(first)
    # When the state is dumped mid-round and loaded into a new core (uploads come back
    # from the store separately)
    assert original.cache is not None
    blob = dump_aggregator(original, extra={"stage": "collecting"})
    restored = AggregatorCore(cfg, C)
    extra = restore_aggregator(
        restored, blob, original.cache.labels, original.cache.written, original.cache.version
    )
    assert extra == {"stage": "collecting"}
    assert restored.accept(first) is UploadOutcome.ACCEPTED
    # Then both finish this round and the next identically
    for t in tasks[1:]:
        assert original.accept(_upload(t, 0)) is restored.accept(_upload(t, 0))
    a, b = original.close_round(), restored.close_round()
    assert np.array_equal(a.targets, b.targets) and np.array_equal(a.indices, b.indices)
    ta, _, ra = _run_round(original)
    tb, _, rb = _run_round(restored)
    assert [t.client_id for t in ta] == [t.client_id for t in tb]
    assert [t.catch_up is None for t in ta] == [t.catch_up is None for t in tb]
    assert np.array_equal(ra.targets, rb.targets)
    assert original.cache.digest() == restored.cache.digest()  # type: ignore[union-attr]


def test_a_blob_of_another_run_or_cache_version_is_refused():
    from shared.errors import StateError
    from shared.rounds.aggregator_state import dump_aggregator, restore_aggregator

    core = AggregatorCore(_config(), C)
    _run_round(core)
    blob = dump_aggregator(core)
    assert core.cache is not None
    with pytest.raises(StateError, match="run"):
        restore_aggregator(
            AggregatorCore(_config(run_id="other"), C),
            blob,
            core.cache.labels,
            core.cache.written,
            core.cache.version,
        )
    with pytest.raises(StateError, match="cache version"):
        restore_aggregator(
            AggregatorCore(_config(), C),
            blob,
            core.cache.labels,
            core.cache.written,
            core.cache.version + 1,
        )


def test_cfd_aggregates_votes_without_sharpening_and_can_send_server_labels_instead():
    core = AggregatorCore(_config(algorithm="cfd", downlink_codec="f32"), C)
    _, uploads, result = _run_round(core)
    assert np.allclose(result.targets, _mean(uploads).numpy(), atol=1e-6)
    server_labels = torch.softmax(torch.randn(result.indices.size, C), -1).numpy()
    core.replace_downlink_labels(server_labels)
    tasks = core.open_round()
    assert tasks[0].targets is not None
    assert np.allclose(tasks[0].targets.fresh_labels, server_labels, atol=1e-6)
    scarlet = AggregatorCore(_config(), C)
    _run_round(scarlet)
    with pytest.raises(RoundStateConflict):
        scarlet.replace_downlink_labels(server_labels)


def test_the_adaptive_policy_refreshes_entries_the_server_now_sees_differently():
    cfg = _config(cache_policy="adaptive", cache_duration=5, public_size=10, public_per_round=10)

    def view_of(core, disagree):
        def view(idx):
            assert core.cache is not None
            labels = core.cache.labels[idx]
            if disagree:  # certain of a class the cached label does not favour
                wrong = (labels.argmax(1) + 1) % C
                labels = np.eye(C, dtype=np.float32)[wrong] * 0.98 + 0.02 / C
            # Enhanced ERA (beta=2) of this view gives back exactly the labels
            root = np.sqrt(labels)
            return root / root.sum(1, keepdims=True)

        return view

    for disagree, expected_requests in ((True, 10), (False, 0)):
        core = AggregatorCore(cfg, C)
        _run_round(core)
        tasks = core.open_round(server_view=view_of(core, disagree))
        assert tasks[0].request_indices.size == expected_requests
