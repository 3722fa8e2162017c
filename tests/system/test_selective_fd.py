"""Selective-FD end to end in one process (digits): what the selectors keep is what travels."""

from __future__ import annotations

import numpy as np
import pytest

from scarlet.simulate import EmbeddedFederation, prepare_data
from shared.config import FederationConfig
from shared.rounds.aggregator import drawn_public_indices

pytestmark = pytest.mark.system

SMALL = dict(
    algorithm="selective_fd",
    dataset="digits",
    model="mlp",
    clients=4,
    samples_per_client=250,
    public_size=400,
    public_per_round=200,
    rounds=4,
    test_per_client=50,
    local_epochs=2,
    distill_epochs=2,
    server_distill_epochs=3,
    uplink_codec="f32",
    downlink_codec="f32",
    threads=1,
)
C = 10


@pytest.fixture(scope="module")
def run():
    config = FederationConfig(**SMALL)
    federation = EmbeddedFederation(config, prepare_data(config))
    return config, federation, federation.run()


def test_clients_upload_exactly_the_requested_samples_their_selector_keeps(run):
    config, federation, results = run
    masks = [runtime.inliers for runtime in federation.clients.runtimes]
    assert all(m is not None for m in masks)
    for record in results.rounds:
        drawn = np.sort(drawn_public_indices(config, record.round))
        kept = [int(m[drawn].sum()) for m in masks if m is not None]
        assert record.uploads == {"accepted": config.clients}
        assert record.labels_up == sum(kept)
        # every client drops some samples, so the uplink is below DS-FL's
        assert all(0 < k < drawn.size for k in kept)
        assert record.paper_bytes_up == (4 * C + 8) * record.labels_up
        assert record.paper_bytes_up < record.baseline_bytes_up


def test_the_downlink_carries_the_samples_some_client_sent(run):
    config, federation, results = run
    masks = [m for m in (r.inliers for r in federation.clients.runtimes) if m is not None]
    union = np.logical_or.reduce(masks)
    for record, following in zip(results.rounds, results.rounds[1:], strict=False):
        drawn = np.sort(drawn_public_indices(config, record.round))
        rows = int(union[drawn].sum())  # the L1 filter at 2.0 keeps every one of them
        # round r+1's tasks carry round r's rows (labels, indices) and r+1's requests
        assert following.labels_down == config.clients * rows
        per_client = (4 * C + 8) * rows + 8 * config.public_per_round
        assert following.paper_bytes_down == config.clients * per_client


def test_selective_fd_learns_well_above_chance(run):
    _, _, results = run
    summary = results.summary()
    assert summary["rounds"] == SMALL["rounds"]
    assert summary["final_server_accuracy"] > 0.4  # 10 classes: chance is 10 %
    assert summary["final_client_accuracy"] > 0.7
