"""COMET end to end in one process (digits, an MLP): it learns, and it costs the formula.

PAPER.md §4: under full participation COMET's downlink costs what DS-FL's does (the K_c
centroids per sample divided by K_c); with clients left out every centroid row counts.
The uplink is DS-FL's.
"""

from __future__ import annotations

import pytest

from scarlet.simulate import EmbeddedFederation, prepare_data
from shared.config import FederationConfig

pytestmark = pytest.mark.system

SIZES: dict[str, object] = dict(
    algorithm="comet",
    dataset="digits",
    model="mlp",
    clients=3,
    samples_per_client=300,
    test_per_client=50,
    public_size=400,
    public_per_round=150,
    rounds=3,
    local_epochs=2,
    distill_epochs=2,
    server_distill_epochs=5,
    batch_size=30,
    distill_batch_size=30,
    uplink_codec="f32",
    downlink_codec="q8+ans",
    threads=1,
)
F32, I64 = 4, 8


def _run(**overrides: object):
    config = FederationConfig(**{**SIZES, **overrides})  # type: ignore[arg-type]
    return config, EmbeddedFederation(config, prepare_data(config)).run()


def test_comet_learns_and_costs_exactly_dsfl_under_full_participation():
    config, results = _run()
    rounds = results.rounds
    assert [r.round for r in rounds] == [0, 1, 2]
    # the server distils on the clients' mean: far above chance (10 %) and rising
    assert rounds[-1].server_accuracy > rounds[0].server_accuracy + 0.1
    assert rounds[-1].server_accuracy > 0.6
    s, p, c, k = 3, config.public_per_round, 10, config.comet_clusters
    for r in rounds:
        previous = 0 if r.round == 0 else p
        assert r.paper_bytes_down == s * ((F32 * c + I64) * previous + I64 * p)
        assert r.paper_bytes_down == r.baseline_bytes_down  # DS-FL's, as the authors count
        assert r.paper_bytes_up == s * (F32 * c + I64) * p == r.baseline_bytes_up
        assert r.labels_down == s * k * previous  # but K_c real rows per index travel
        assert r.uploads == {"accepted": s}


def test_with_clients_left_out_every_centroid_row_counts():
    config, results = _run(
        clients=4, samples_per_client=200, sample_ratio=0.5, rounds=2, local_epochs=1
    )
    s, p, c, k = 2, config.public_per_round, 10, config.comet_clusters
    last = results.rounds[-1]
    assert last.clients == s
    assert last.paper_bytes_down == s * (F32 * c * k * p + I64 * p + I64 * p)
    assert last.baseline_bytes_down == s * ((F32 * c + I64) * p + I64 * p)
