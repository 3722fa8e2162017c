"""The sparse client mirrors answer exactly as the dense (K, |P|) table of the cache rules.

Driven by the real cache: rounds are planned and committed on a :class:`ServerCache`, a
random sample of clients receives each commit, and both records must give every client
the same catch-up diff at every round, and survive a round trip through bytes.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.cache_policy import ClientMirrors, ServerCache
from shared.errors import StateError
from shared.rounds.mirrors import SparseClientMirrors

K, P, C = 40, 120, 5


def _drive(rounds: int, duration: int, seed: int):
    """Yield (round, sampled clients, commit, cache) of a random partial federation."""
    rng = np.random.default_rng(seed)
    cache = ServerCache(P, C)
    commit = None
    for t in range(rounds):
        sampled = np.sort(rng.choice(K, size=4, replace=False))
        yield t, sampled, commit, cache
        drawn = rng.choice(P, size=30, replace=False).astype(np.int64)
        plan = cache.plan_requests(drawn, t, duration)
        fresh = rng.dirichlet(np.ones(C), size=len(plan.requested)).astype(np.float32)
        commit = cache.commit(plan, fresh, t, duration)


@pytest.mark.parametrize(("duration", "seed"), [(0, 1), (2, 2), (5, 3), (50, 4)])
def test_sparse_mirrors_give_the_dense_table_s_diffs_round_after_round(duration, seed):
    # Given both records fed the same deliveries
    dense, sparse = ClientMirrors(K, P), SparseClientMirrors(K, P)
    diffs = 0
    for _, sampled, commit, cache in _drive(25, duration, seed):
        if commit is None:
            continue
        for k in sampled.tolist():
            # When
            want, got = dense.diff(k, commit), sparse.diff(k, commit)
            dense.record_delivery(k, commit, cache)
            sparse.record_delivery(k, commit, cache)
            # Then
            for field in ("update_indices", "update_labels", "update_written", "clear_indices"):
                assert np.array_equal(getattr(got, field), getattr(want, field)), field
                assert getattr(got, field).dtype == getattr(want, field).dtype, field
            diffs += not want.is_empty
        assert np.array_equal(sparse.dense(), dense.written)
    assert diffs > 10  # the scenario does exercise catch-ups
    assert sparse.entries == int((dense.written != -1).sum())


def test_sparse_mirrors_survive_a_round_trip_through_bytes():
    # Given
    sparse = SparseClientMirrors(K, P)
    for _, sampled, commit, cache in _drive(12, 3, 7):
        if commit is not None:
            for k in sampled.tolist():
                sparse.record_delivery(k, commit, cache)
    # When
    again = SparseClientMirrors.from_bytes(sparse.to_bytes(), K, P)
    # Then
    assert np.array_equal(again.dense(), sparse.dense())
    assert again.entries == sparse.entries > 0
    empty = SparseClientMirrors.from_bytes(SparseClientMirrors(K, P).to_bytes(), K, P)
    assert empty.entries == 0 and empty.clients_holding == 0


def test_memory_grows_with_deliveries_not_with_the_number_of_clients():
    # Given the same deliveries to clients 0..3 of federations of 10 and of 10,000 clients
    small, large = SparseClientMirrors(10, P), SparseClientMirrors(10_000, P)
    for _, _, commit, cache in _drive(10, 3, 5):
        if commit is not None:
            for k in range(4):
                small.record_delivery(k, commit, cache)
                large.record_delivery(k, commit, cache)
    # Then both hold the same entries, and their bytes are the same size
    assert small.entries == large.entries > 0
    assert large.clients_holding == 4
    assert len(large.to_bytes()) == len(small.to_bytes())


@pytest.mark.parametrize(
    "mangle",
    [
        lambda blob: blob[:-3],
        lambda blob: b"not zstd",
    ],
)
def test_a_corrupt_mirrors_blob_is_a_state_error(mangle):
    sparse = SparseClientMirrors(K, P)
    for _, sampled, commit, cache in _drive(6, 3, 9):
        if commit is not None:
            sparse.record_delivery(int(sampled[0]), commit, cache)
    with pytest.raises(StateError):
        SparseClientMirrors.from_bytes(mangle(sparse.to_bytes()), K, P)


def test_mirrors_of_a_larger_federation_do_not_load_into_a_smaller_one():
    sparse = SparseClientMirrors(K, P)
    for _, _, commit, cache in _drive(4, 3, 10):
        if commit is not None:
            sparse.record_delivery(K - 1, commit, cache)
    with pytest.raises(StateError, match="client id outside"):
        SparseClientMirrors.from_bytes(sparse.to_bytes(), K - 1, P)


def test_a_client_outside_the_federation_is_refused():
    with pytest.raises(ValueError, match="outside"):
        SparseClientMirrors(K, P).held(K, np.arange(3))


def test_an_aggregator_of_ten_thousand_clients_keeps_and_checkpoints_only_what_it_sent():
    from shared.rounds.aggregator import AggregatorCore
    from shared.rounds.aggregator_state import dump_aggregator, restore_aggregator
    from tests.unit.test_aggregator_core import C as CLASSES
    from tests.unit.test_aggregator_core import _config, _run_round

    # Given K = 10,000 and |P| = 10,000 with 1 % sampled: the dense table would be 800 MB
    cfg = _config(
        clients=10_000,
        sample_ratio=0.01,
        public_size=10_000,
        public_per_round=500,
        samples_per_client=5,
    )
    core = AggregatorCore(cfg, CLASSES)
    # When three rounds run
    for _ in range(3):
        _run_round(core)
    # Then the record holds the deliveries of rounds 1 and 2 only (round 0 has no commit)
    assert isinstance(core.mirrors, SparseClientMirrors)
    assert core.mirrors.clients_holding <= 200
    assert 0 < core.mirrors.entries <= 200 * 500
    blob = dump_aggregator(core)
    assert len(blob) < 2_000_000
    # and a restored aggregator holds the same record
    assert core.cache is not None
    restored = AggregatorCore(cfg, CLASSES)
    restore_aggregator(restored, blob, core.cache.labels, core.cache.written, core.cache.version)
    assert isinstance(restored.mirrors, SparseClientMirrors)
    for k in range(0, 10_000, 7):
        indices = np.arange(10_000)
        assert np.array_equal(restored.mirrors.held(k, indices), core.mirrors.held(k, indices))
