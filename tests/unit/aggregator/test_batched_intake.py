"""Batched intake: what the prefetch window holds is decoded, recorded at once, acked at once.

Over the in-memory transport (its contract with RabbitMQ is tests/contract) and store;
``tests/integration/test_batched_ingest.py`` runs the crash case against the real ones.

Budget: under 10 s (a few aggregator rounds over the in-memory transport).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.aggregator.coordinator import RoundCoordinator
from shared.data import FederatedData
from shared.errors import StoreUnavailable
from shared.protocol import routes
from shared.rounds.setup import prepare_data
from shared.transport.base import Delivery
from shared.transport.memory import DEAD_LETTER_QUEUE, InMemoryTransport
from tests.conftest import tiny_config
from tests.unit.aggregator.test_coordinator import CONFIG, Setup

PREFETCH = 16


class Crash(Exception):
    """The aggregator process dies here."""


@pytest.fixture(scope="module")
def data() -> FederatedData:
    return prepare_data(tiny_config(**CONFIG))


def _coordinator(s: Setup, handle: InMemoryTransport) -> RoundCoordinator:
    agg = RoundCoordinator(
        s.config,
        s.settings,
        s.data,
        handle,
        s.store,
        clock=s.clock,
        observer=s.observer,
    )
    agg.start()
    return agg


def _drain(transport: InMemoryTransport, queue: str) -> list[Delivery]:
    taken = []
    while (d := transport.get(queue, timeout_s=0.01)) is not None:
        taken.append(d)
        d.ack()
    return taken


def test_junk_and_a_duplicate_inside_one_batch_are_settled_once_each(data):
    # Given a coordinator whose window holds the whole round
    s = Setup(data, ingest_prefetch=2 * PREFETCH)
    handle = s.broker.connect(prefetch=2 * PREFETCH)
    batches: list[int] = []
    get_many = handle.get_many

    def spy(queue: str, *, max_count: int, timeout_s: float) -> list:
        taken = get_many(queue, max_count=max_count, timeout_s=timeout_s)
        batches.append(len(taken))
        return taken

    handle.get_many = spy  # type: ignore[method-assign]
    agg = _coordinator(s, handle)

    def clients() -> None:
        tasks = [s.task(k) for k in agg.core.clients]
        s.upload(tasks[0])
        s.publish(b"\x93junk")
        s.upload(tasks[0])  # the same client again, in the same batch
        for task in tasks[1:]:
            s.upload(task)

    # When
    record = agg.run_round(between=clients)
    # Then all five came in one batch and each got exactly one outcome
    assert batches[0] == 5
    assert record is not None
    assert record.uploads == {"accepted": 3, "invalid": 1, "duplicate": 1}
    assert [d.body for d in _drain(s.clients, DEAD_LETTER_QUEUE)] == [b"\x93junk"]
    # nothing is left unsettled: closing the aggregator's handle gives nothing back
    handle.close()
    assert _drain(s.clients, routes.uploads_queue(s.config.run_id)) == []


def test_a_batch_recorded_but_not_acked_before_a_crash_is_counted_once(data):
    # Given an aggregator that dies after recording a batch, before acking it
    s = Setup(data, ingest_prefetch=PREFETCH)
    first = s.broker.connect(prefetch=PREFETCH)

    def crash(deliveries: Sequence[Delivery]) -> None:
        first.close()  # the process is gone: the broker requeues what it held
        raise Crash

    first.ack_many = crash  # type: ignore[method-assign]
    agg = _coordinator(s, first)
    with pytest.raises(Crash):
        agg.run_round(between=lambda: [s.upload(s.task(k)) for k in agg.core.clients])
    assert sorted(s.store.uploads(0)) == sorted(agg.core.clients)
    # When a new aggregator resumes
    again = _coordinator(s, s.broker.connect(prefetch=PREFETCH))
    record = again.run_round()
    # Then the round counts each upload once, from the store
    assert record is not None and record.uploads == {"accepted": 3}
    assert record.wire_bytes_up == sum(s.upload_bytes)
    # and the redeliveries are still there, to be counted late (never accepted twice)
    queue = routes.uploads_queue(s.config.run_id)
    redelivered = _drain(s.clients, queue)
    assert len(redelivered) == 3 and all(d.redelivered for d in redelivered)


def test_nothing_of_a_batch_is_acked_when_recording_it_fails(data):
    # Given a store that is down when the batch is recorded
    s = Setup(data, ingest_prefetch=PREFETCH)
    handle = s.broker.connect(prefetch=PREFETCH)
    agg = _coordinator(s, handle)

    def down(uploads: object) -> list[bool]:
        raise StoreUnavailable("Redis is down")

    s.store.record_uploads = down  # type: ignore[method-assign]
    # When
    with pytest.raises(StoreUnavailable):
        agg.run_round(between=lambda: [s.upload(s.task(k)) for k in agg.core.clients])
    handle.close()
    # Then every upload is back in the queue, none dead-lettered
    assert len(_drain(s.clients, routes.uploads_queue(s.config.run_id))) == 3
    assert _drain(s.clients, DEAD_LETTER_QUEUE) == []
