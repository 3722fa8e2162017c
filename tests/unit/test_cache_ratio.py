"""cache_ratio: only a seeded share of a round's new labels enters the cache."""

from __future__ import annotations

import pytest

from scarlet.simulate import EmbeddedFederation
from shared.config import FederationConfig
from shared.rounds.setup import prepare_data

SMALL = {
    "dataset": "digits",
    "model": "mlp",
    "clients": 2,
    "samples_per_client": 200,
    "test_per_client": 20,
    "public_size": 100,
    "public_per_round": 100,  # every index drawn every round
    "rounds": 3,
    "local_epochs": 1,
    "distill_epochs": 1,
    "server_distill_epochs": 1,
    "cache_duration": 5,
}


def _run(**fields: object) -> EmbeddedFederation:
    config = FederationConfig(**{**SMALL, **fields})
    fed = EmbeddedFederation(config, prepare_data(config))
    fed.run()
    return fed


@pytest.fixture(scope="module")
def half() -> EmbeddedFederation:
    return _run(cache_ratio=0.5)


def test_each_round_caches_half_of_the_absent_entries_it_requested(half):
    # round 0: all 100 absent, 50 cached; round 1 requests the other 50, caches 25; ...
    rounds = half.results.rounds
    assert [r.requested for r in rounds] == [100, 50, 25]
    assert [r.reused for r in rounds] == [0, 50, 75]
    cache = half.aggregator.core.cache
    assert cache is not None and int((cache.written >= 0).sum()) == 50 + 25 + 12


def test_the_draw_is_seeded_so_a_second_run_caches_the_same_entries(half):
    again = _run(cache_ratio=0.5)
    first, second = half.aggregator.core.cache, again.aggregator.core.cache
    assert first is not None and second is not None
    assert (first.written == second.written).all()
    assert [r.server_accuracy for r in half.results.rounds] == [
        r.server_accuracy for r in again.results.rounds
    ]
