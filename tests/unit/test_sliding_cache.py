"""The sliding cache policy: a window draw that keeps the paper's freshness predicate.

The draw is a pure function of the config and the round (a worker checks requests
against it); what is reused is still decided by ``is_fresh`` alone, so the server/client
lockstep is the paper's and is property-tested the same way.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.worker.admission import Fit, judge_task
from shared.cache_policy import CacheSignal, ClientCache, ClientMirrors, ServerCache
from shared.config import FederationConfig
from shared.distill.sampling import sliding_window_positions
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.rounds.aggregator import (
    AggregatorCore,
    UploadOutcome,
    drawn_public_indices,
    sliding_stride,
)
from tests.arrays import softmax_rows

C = 3


def _config(**kw: object) -> FederationConfig:
    base: dict[str, object] = dict(
        clients=3,
        public_size=40,
        public_per_round=10,
        cache_duration=5,
        rounds=12,
        cache_policy="sliding",
        refresh_share=0.3,
    )
    base.update(kw)
    return FederationConfig(**base)  # type: ignore[arg-type]


def test_the_window_advances_by_the_stride_and_wraps_around() -> None:
    assert sliding_window_positions(20, 10, 3, 0).tolist() == list(range(10))
    assert sliding_window_positions(20, 10, 3, 4).tolist() == [*range(12, 20), 0, 1]
    for t in range(1, 12):
        before = set(sliding_window_positions(20, 10, 3, t - 1).tolist())
        now = set(sliding_window_positions(20, 10, 3, t).tolist())
        # only the stride is new each round, and it wraps around the public set
        assert len(now - before) == 3
        assert len(now) == len(sliding_window_positions(20, 10, 3, t))


@pytest.mark.parametrize(("size", "per_round", "stride"), [(10, 11, 1), (10, 5, 0), (10, 5, 6)])
def test_impossible_window_sizes_are_refused(size: int, per_round: int, stride: int) -> None:
    with pytest.raises(ValueError, match="stride"):
        sliding_window_positions(size, per_round, stride, 0)


def test_the_draw_is_a_function_of_the_config_and_covers_the_public_set() -> None:
    cfg = _config()
    stride = sliding_stride(cfg)
    assert stride == 3
    seen: set[int] = set()
    for t in range(math.ceil(cfg.public_size / stride)):
        drawn = drawn_public_indices(cfg, t)
        assert np.array_equal(drawn, drawn_public_indices(cfg.model_copy(), t))
        assert np.unique(drawn).size == drawn.size
        assert ((drawn >= 0) & (drawn < cfg.public_size)).all()
        seen.update(drawn.tolist())
    assert seen == set(range(cfg.public_size))
    # another seed permutes the public set differently
    other = drawn_public_indices(cfg.model_copy(update={"seed": 7}), 5)
    assert not np.array_equal(np.sort(other), np.sort(drawn_public_indices(cfg, 5)))


def test_other_policies_keep_the_papers_uniform_draw() -> None:
    fixed = _config(cache_policy="fixed")
    assert drawn_public_indices(fixed, 0).size == fixed.public_per_round
    dsfl = _config(algorithm="dsfl", cache_policy="fixed")
    assert np.array_equal(drawn_public_indices(fixed, 3), drawn_public_indices(dsfl, 3))


def _upload(task: TrainTask) -> SoftLabelUpload:
    g = np.random.default_rng(task.round * 100 + task.client_id)
    probs = softmax_rows(g, task.request_indices.size, C)
    return SoftLabelUpload(
        task.run_id, task.round, task.client_id, task.request_indices, probs, 0.5, 0.5
    )


def test_from_the_first_round_only_the_new_part_of_the_window_is_requested() -> None:
    cfg = _config()
    core = AggregatorCore(cfg, C)
    clients = [ClientCache(cfg.public_size, C) for _ in range(cfg.clients)]
    requested = []
    for t in range(cfg.rounds):
        tasks = core.open_round()
        for task in tasks:
            # a worker admits the task: its requests lie inside the round's window
            assert judge_task(task, cfg, completed_round=t - 1).fit is Fit.NEW
            if task.targets is not None:
                assert task.targets.signals is not None
                clients[task.client_id].restore(
                    task.targets.round,
                    task.targets.indices,
                    task.targets.signals,
                    task.targets.fresh_labels,
                )
            assert core.accept(_upload(task)) is UploadOutcome.ACCEPTED
        result = core.close_round()
        requested.append(result.requested)
        assert result.requested + result.reused == drawn_public_indices(cfg, t).size
    # round 0 requests the whole window; then D = 5 >= ceil(10 / 3) - 1 keeps every
    # entry fresh while it is in the window, so only the new stride is requested
    assert requested == [10] + [3] * (cfg.rounds - 1)
    # every replica followed the same signals (the last commit is not delivered yet)
    assert len({client.digest() for client in clients}) == 1
    assert clients[0].written.max() == cfg.rounds - 2


def test_a_window_longer_than_the_cache_duration_re_requests_what_aged_out() -> None:
    cfg = _config(cache_duration=1)
    core = AggregatorCore(cfg, C)
    for _ in range(6):
        tasks = core.open_round()
        for task in tasks:
            core.accept(_upload(task))
        result = core.close_round()
    # an entry is fresh one round only, so the window's two older strides are requested
    # every other round: more than the stride, fewer than the window
    assert 3 < result.requested < cfg.public_per_round


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    duration=st.integers(0, 6),
    num_clients=st.integers(1, 4),
    rounds=st.integers(1, 20),
    participation=st.floats(0.2, 1.0),
    per_round=st.integers(1, 12),
    share=st.floats(0.05, 1.0),
)
def test_sliding_draws_keep_server_and_clients_in_lockstep(
    seed, duration, num_clients, rounds, participation, per_round, share
):
    # Given the sliding window's draws and random client samples each round
    g = np.random.default_rng(seed)
    public, classes = 12, 3
    cfg = FederationConfig(
        clients=num_clients,
        public_size=public,
        public_per_round=per_round,
        cache_duration=duration,
        cache_policy="sliding",
        refresh_share=share,
        seed=seed,
    )
    server = ServerCache(public, classes)
    mirrors = ClientMirrors(num_clients, public)
    clients = [ClientCache(public, classes) for _ in range(num_clients)]
    last = None
    for r in range(rounds):
        for k in [k for k in range(num_clients) if g.random() < participation]:
            if last is None:
                continue
            diff = mirrors.diff(k, last)
            mirrors.record_delivery(k, last, server)
            clients[k].apply_catch_up(diff)
            targets = clients[k].restore(last.round, last.indices, last.signals, last.fresh_labels)
            # Then every client distils on exactly the server's targets
            assert np.array_equal(targets, last.targets)
            assert np.array_equal(mirrors.written[k], clients[k].written)
            assert np.array_equal(clients[k].labels[last.indices], server.labels[last.indices])
        plan = server.plan_requests(drawn_public_indices(cfg, r), r, duration)
        last = server.commit(plan, softmax_rows(g, plan.requested.size, classes), r, duration)
        # reuse is the paper's predicate: CACHED exactly for the reused part of the plan
        assert (last.signals[plan.requested.size :] == int(CacheSignal.CACHED)).all()
        assert (last.signals[: plan.requested.size] != int(CacheSignal.CACHED)).all()
