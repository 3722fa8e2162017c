"""Accepted wire bytes and refused bytes are counted apart; the accuracy mean ignores order.

Budget: under 10 s (a few aggregator rounds over the in-memory transport).
"""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from services.aggregator.observer import MetricsObserver
from shared.accounting import ByteLedger
from shared.data import FederatedData
from shared.metrics import Metrics
from shared.rounds.setup import prepare_data
from tests.conftest import tiny_config
from tests.unit.aggregator.test_coordinator import CONFIG, Setup


@pytest.fixture(scope="module")
def data() -> FederatedData:
    return prepare_data(tiny_config(**CONFIG))


def test_a_refused_body_adds_to_the_rejected_bytes_and_never_to_the_wire_bytes():
    # Given
    ledger = ByteLedger()
    ledger.up.add(wire=1741, paper=2000, baseline=3000, labels=40)
    # When: a flood of 500 refused bodies
    for _ in range(500):
        ledger.add_unaccepted_upload(1932)
    # Then
    assert ledger.up.wire == 1741
    assert ledger.up.rejected_wire == 500 * 1932
    assert (ledger.up.messages, ledger.up.paper, ledger.up.labels) == (1, 2000, 40)


def test_a_flood_of_junk_and_duplicates_leaves_the_rounds_wire_bytes_as_without_it(data):
    # Given: one round answered normally, and the same round under a flood
    quiet, flooded = Setup(data), Setup(data)
    junk = [b"\x93junk" * (i + 1) for i in range(40)]

    def run(s: Setup, flood: bool):
        agg = s.coordinator()

        def clients() -> None:
            tasks = [s.task(k) for k in agg.core.clients]
            if flood:
                for body in junk:
                    s.publish(body)
            if flood:
                s.upload(tasks[0])  # its duplicate follows (before the round can close)
            for task in tasks:
                s.upload(task)

        return agg.run_round(between=clients)

    # When
    want, got = run(quiet, False), run(flooded, True)
    # Then
    assert want is not None and got is not None
    assert got.wire_bytes_up == want.wire_bytes_up == sum(quiet.upload_bytes)
    assert got.rejected_bytes_up == sum(map(len, junk)) + flooded.upload_bytes[0]
    assert want.rejected_bytes_up == 0
    assert got.uploads == {"accepted": 3, "duplicate": 1, "invalid": 40}


def test_refused_bytes_go_to_their_own_metric_by_kind():
    # Given
    metrics = Metrics.create(CollectorRegistry())
    observer = MetricsObserver(metrics)
    # When
    observer.upload_refused("invalid", 100)
    observer.upload_refused("duplicate", 7)
    observer.upload_refused("invalid", 1)
    # Then
    get = metrics.registry.get_sample_value
    assert get("scarlet_rejected_bytes_total", {"kind": "invalid"}) == 101
    assert get("scarlet_rejected_bytes_total", {"kind": "duplicate"}) == 7
    assert get("scarlet_bytes_total", {"direction": "up", "kind": "upload"}) == 0


def test_the_mean_client_accuracy_is_the_same_whatever_order_uploads_arrive_in(data):
    # Given: accuracies whose float sum depends on the order of addition
    accuracies = {0: 0.1, 1: 0.2, 2: 0.3}
    assert (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1

    def run(order: list[int]) -> float:
        s = Setup(data)
        agg = s.coordinator()

        def clients() -> None:
            tasks = {k: s.task(k) for k in agg.core.clients}
            for k in order:
                s.upload(tasks[k], accuracy=accuracies[k])

        record = agg.run_round(between=clients)
        assert record is not None
        return record.client_accuracy

    # When
    forward, backward = run([0, 1, 2]), run([2, 1, 0])
    # Then: bit for bit
    assert not math.isnan(forward)
    assert forward.hex() == backward.hex()
