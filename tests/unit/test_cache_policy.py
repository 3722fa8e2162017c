"""The synchronized cache rules, against a hand-worked trace and as properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.cache_policy import (
    NEVER,
    CacheSignal,
    ClientCache,
    ClientMirrors,
    ServerCache,
    adaptive_reuse,
    is_fresh,
)
from shared.errors import CacheDesync, RoundStateConflict
from tests.arrays import softmax_rows

N, C_, E = CacheSignal.NEWLY_CACHED, CacheSignal.CACHED, CacheSignal.EXPIRED


def _label(round_no: int, index: int, classes: int = 2) -> np.ndarray:
    # a distinct, recognisable label per (round, index)
    p = np.full(classes, 1.0, dtype=np.float32)
    p[0] += 10 * round_no + index
    return p / p.sum()


def _labels_for(round_no: int, indices, classes: int = 2) -> np.ndarray:
    return (
        np.stack([_label(round_no, int(i), classes) for i in indices])
        if len(indices)
        else np.empty((0, classes), dtype=np.float32)
    )


@pytest.mark.parametrize(
    ("age", "duration", "fresh"),
    [
        (0, 2, False),
        (1, 2, True),
        (2, 2, True),
        (3, 2, False),
        (1, 0, False),
        (49, 50, True),
        (50, 50, True),
        (51, 50, False),
    ],
)
def test_is_fresh_reuses_a_label_cached_in_round_c_in_rounds_c_plus_1_to_c_plus_d(
    age, duration, fresh
):
    assert bool(is_fresh(10, 10 + age, duration)) is fresh


def test_an_empty_entry_is_never_fresh():
    assert not bool(is_fresh(NEVER, 0, 5))
    assert not bool(is_fresh(NEVER, 3, 50))


# Hand-worked trace, |P| = 6, D = 2 (see the comment of each round).
TRACE = [
    # (drawn, requested, reused, signals in distillation order)
    ([0, 1, 2], [0, 1, 2], [], [N, N, N]),  # r0: all empty
    ([1, 2, 3], [3], [1, 2], [N, C_, C_]),  # r1: 1,2 age 1 -> reuse; 3 empty
    ([0, 3, 4], [4], [0, 3], [N, C_, C_]),  # r2: 0 age 2 (=D) reuse; 3 age 1; 4 empty
    ([0, 1, 5], [0, 1, 5], [], [E, E, N]),  # r3: 0,1 age 3 > D -> expire; 5 empty
    ([0, 2, 3], [0, 2, 3], [], [N, E, E]),  # r4: 0 was cleared -> newly; 2 age 4, 3 age 3
    ([0, 4, 5], [4], [0, 5], [E, C_, C_]),  # r5: 0 age 1, 5 age 2 reuse; 4 age 3 expires
]


def test_server_and_client_follow_the_hand_worked_trace():
    server, client = ServerCache(6, 2), ClientCache(6, 2)
    held_by_client: dict[int, np.ndarray] = {}
    for r, (drawn, requested, reused, signals) in enumerate(TRACE):
        # Given the round's draw
        plan = server.plan_requests(np.array(drawn), r, 2)
        # Then the split is as worked out by hand
        assert plan.requested.tolist() == requested, f"round {r}"
        assert plan.reused.tolist() == reused, f"round {r}"
        # When the round is committed
        commit = server.commit(plan, _labels_for(r, plan.requested), r, 2)
        # Then the signals are as worked out by hand
        assert commit.signals.tolist() == [int(s) for s in signals], f"round {r}"
        # and the client restores exactly the server's targets
        targets = client.restore(r, commit.indices, commit.signals, commit.fresh_labels)
        assert np.array_equal(targets, commit.targets)
        # and reused rows are the labels the client stored when they were NEWLY_CACHED
        for i, s, row in zip(
            commit.indices.tolist(), commit.signals.tolist(), targets, strict=True
        ):
            if s == C_:
                assert np.array_equal(row, held_by_client[i])
            elif s == N:
                held_by_client[i] = row.copy()
            else:
                held_by_client.pop(i, None)
        assert client.digest() == server.digest()
    # after r5: 0 (written r4) and 5 (r3) cached; 4 expired; 1,2,3 cleared earlier
    assert server.written.tolist() == [4, NEVER, NEVER, NEVER, NEVER, 3]


def test_after_expiry_an_index_needs_two_requests_before_it_is_cached_again():
    server = ServerCache(1, 2)
    signals = []
    for r in [0, 2, 3, 4, 5]:  # D = 1: cached at 0, stale at 2
        plan = server.plan_requests(np.array([0]), r, 1)
        signals.append(int(server.commit(plan, _labels_for(r, plan.requested), r, 1).signals[0]))
    assert signals == [N, E, N, C_, E]


def test_a_commit_against_a_cache_that_changed_since_planning_is_refused():
    server = ServerCache(4, 2)
    plan = server.plan_requests(np.array([0, 1]), 0, 5)
    server.commit(plan, _labels_for(0, plan.requested), 0, 5)
    with pytest.raises(RoundStateConflict):
        server.commit(plan, _labels_for(0, plan.requested), 1, 5)  # 0,1 now fresh


def test_restore_refuses_cached_signals_for_entries_the_replica_lacks():
    client = ClientCache(4, 2)
    with pytest.raises(CacheDesync, match="not in the replica"):
        client.restore(1, np.array([2]), np.array([int(C_)]), np.empty((0, 2), dtype=np.float32))
    with pytest.raises(CacheDesync, match="fresh"):
        client.restore(1, np.array([2]), np.array([int(N)]), np.empty((0, 2), dtype=np.float32))
    assert (client.written == NEVER).all()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    duration=st.integers(0, 6),
    num_clients=st.integers(1, 5),
    rounds=st.integers(1, 25),
    participation=st.floats(0.2, 1.0),
    keep_share=st.sampled_from([None, 0.5, 0.0]),
)
def test_server_and_clients_never_disagree_under_partial_participation(
    seed, duration, num_clients, rounds, participation, keep_share
):
    # keep_share: cache_ratio's draw (None caches every absent entry, as the paper)
    # Given a random sequence of draws and random client samples each round
    g = np.random.default_rng(seed)
    public, classes = 12, 3
    server = ServerCache(public, classes)
    mirrors = ClientMirrors(num_clients, public)
    clients = [ClientCache(public, classes) for _ in range(num_clients)]
    last = None
    for r in range(rounds):
        sampled = [k for k in range(num_clients) if g.random() < participation]
        # Downlink of round r carries round r-1's commit (with catch-up) to the sampled clients
        if last is not None:
            for k in sampled:
                diff = mirrors.diff(k, last)
                mirrors.record_delivery(k, last, server)
                clients[k].apply_catch_up(diff)
                targets = clients[k].restore(
                    last.round, last.indices, last.signals, last.fresh_labels
                )
                # Then the client distils on exactly the server's targets
                assert np.array_equal(targets, last.targets)
                # and its replica equals the global cache on the distillation set
                assert np.array_equal(
                    clients[k].written[last.indices], server.written[last.indices]
                )
                assert np.array_equal(clients[k].labels[last.indices], server.labels[last.indices])
                # and the mirror knows exactly what the client holds
                assert np.array_equal(mirrors.written[k], clients[k].written)
        drawn = g.permutation(public)[: int(g.integers(1, public))]
        plan = server.plan_requests(drawn, r, duration)
        fresh = softmax_rows(g, plan.requested.size, classes)
        keep = None if keep_share is None else g.random(plan.requested.size) < keep_share
        absent = server.written[plan.requested] == NEVER
        last = server.commit(plan, fresh, r, duration, keep=keep)
        # only the kept absent entries were cached
        newly = last.signals[: plan.requested.size] == int(N)
        assert np.array_equal(newly, absent if keep is None else absent & keep)
        # the request rule and the signals use the same predicate
        assert (last.signals[plan.requested.size :] == int(C_)).all()
        assert (last.signals[: plan.requested.size] != int(C_)).all()


def test_full_participation_needs_no_catch_up_and_digests_match():
    g = np.random.default_rng(0)
    server, client, mirrors = ServerCache(50, 4), ClientCache(50, 4), ClientMirrors(1, 50)
    for r in range(30):
        plan = server.plan_requests(g.permutation(50)[:10], r, 3)
        commit = server.commit(plan, softmax_rows(g, plan.requested.size, 4), r, 3)
        assert mirrors.diff(0, commit).is_empty
        mirrors.record_delivery(0, commit, server)
        client.restore(r, commit.indices, commit.signals, commit.fresh_labels)
        assert client.digest() == server.digest()


def test_a_client_that_missed_rounds_is_sent_the_labels_it_lacks_before_the_signals():
    # Given client 1 missed round 0's signals; both entries were cached in round 0
    server, mirrors = ServerCache(4, 2), ClientMirrors(2, 4)
    c0 = server.commit(server.plan_requests(np.array([0, 1]), 0, 5), _labels_for(0, [0, 1]), 0, 5)
    mirrors.record_delivery(0, c0, server)
    # When round 1 reuses 0 and 1 (both CACHED)
    c1 = server.commit(
        server.plan_requests(np.array([0, 1]), 1, 5), np.empty((0, 2), dtype=np.float32), 1, 5
    )
    diff = mirrors.diff(1, c1)
    # Then client 1 is sent both labels before the signals; client 0 nothing
    assert diff.update_indices.tolist() == [0, 1]
    assert np.array_equal(diff.update_labels, c0.targets)
    assert mirrors.diff(0, c1).is_empty


@pytest.mark.parametrize(
    ("age", "drift", "reused"),
    [
        (1, 0.05, True),  # inside D, stable
        (2, 0.30, False),  # inside D but drifted: refreshed early
        (3, 0.05, True),  # past D, within max, very stable: kept longer
        (3, 0.15, False),  # past D, only moderately stable
        (5, 0.00, False),  # past max duration
    ],
)
def test_adaptive_reuse_refreshes_drifted_entries_early_and_keeps_stable_ones_longer(
    age, drift, reused
):
    # D = 2, max duration = 4, threshold = 0.2
    got = adaptive_reuse(np.array([10]), 10 + age, 2, 4, np.array([drift]), 0.2)
    assert bool(got[0]) is reused


def test_an_adaptive_commit_refreshes_present_entries_in_place_and_clients_follow():
    server, client = ServerCache(4, 2), ClientCache(4, 2)
    c0 = server.commit(
        server.plan_requests(np.array([0, 1]), 0, 3), _labels_for(0, [0, 1]), 0, 3, max_age=6
    )
    client.restore(0, c0.indices, c0.signals, c0.fresh_labels)
    # round 1: entry 0 drifted (refresh), entry 1 reused
    plan = server.plan_requests(np.array([0, 1]), 1, 3, reuse=np.array([False, True]))
    c1 = server.commit(plan, _labels_for(1, [0]), 1, 3, max_age=6)
    assert c1.signals.tolist() == [int(N), int(C_)]
    assert server.written.tolist()[:2] == [1, 0]
    assert np.array_equal(client.restore(1, c1.indices, c1.signals, c1.fresh_labels), c1.targets)
    assert client.digest() == server.digest()
    # an entry kept past D (age 5 <= max 6) is accepted by the commit
    plan = server.plan_requests(np.array([1]), 5, 3, reuse=np.array([True]))
    assert server.commit(
        plan, np.empty((0, 2), dtype=np.float32), 5, 3, max_age=6
    ).signals.tolist() == [int(C_)]


def test_a_keep_mask_is_refused_with_refresh_in_place_or_the_wrong_shape():
    server = ServerCache(4, 2)
    plan = server.plan_requests(np.array([0, 1, 2]), 0, 2)
    labels = _labels_for(0, plan.requested)
    with pytest.raises(RoundStateConflict, match="keep mask"):
        server.commit(plan, labels, 0, 2, keep=np.ones(2, dtype=bool))
    with pytest.raises(RoundStateConflict, match="keep mask"):
        server.commit(plan, labels, 0, 2, max_age=2, keep=np.ones(3, dtype=bool))
    # and nothing was written by the refused commits
    assert (server.written == NEVER).all()
