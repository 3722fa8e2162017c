"""``TaskHandler``: one task delivery becomes one upload, over the in-memory transport.

A tiny federation (digits, 2 clients, an MLP): the tests publish tasks as the aggregator
would (round 0, or round 1 reusing the cache) and read what the handler leaves on the
queues, the dead-letter queue included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.worker.clients import PinnedClient
from services.worker.handler import Resync, TaskHandler
from shared.cache_policy import CacheSignal, ClientCache
from shared.data import FederatedData, dataset_classes
from shared.metrics import Metrics
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits, decode_upload, encode_task
from shared.protocol.messages import DistillTargets, TrainTask
from shared.rounds.aggregator import drawn_public_indices
from shared.rounds.setup import build_runtime, prepare_data
from shared.transport import HEADER_REJECT_REASON, InMemoryTransport
from shared.transport.base import Delivery
from shared.transport.topology import declare_topology
from tests.conftest import tiny_config

CONFIG = tiny_config(
    run_id="handler-test",
    clients=2,
    samples_per_client=40,
    public_size=30,
    public_per_round=12,
    rounds=3,
)
CLIENT = 1
TASKS = routes.client_tasks_queue(CONFIG.run_id, CLIENT)
UPLOADS = routes.uploads_queue(CONFIG.run_id)


@pytest.fixture(scope="module")
def data() -> FederatedData:
    return prepare_data(CONFIG)


@pytest.fixture
def broker() -> Iterator[InMemoryTransport]:
    broker = InMemoryTransport()
    declare_topology(broker, CONFIG, "pinned")
    yield broker
    broker.close()


@pytest.fixture
def limits(data: FederatedData) -> DecodeLimits:
    return DecodeLimits(CONFIG.public_size, data.num_classes)


def make_handler(broker, data, limits, resync: Resync | None = None) -> TaskHandler:
    # the handler publishes on a handle of its own, as a worker process would
    provider = PinnedClient(build_runtime(CONFIG, data, CLIENT))
    metrics = Metrics.create(CollectorRegistry())
    return TaskHandler(provider, broker.connect(), limits, resync, metrics)


@pytest.fixture
def handler(broker, data, limits) -> TaskHandler:
    return make_handler(broker, data, limits)


def drawn(round_no: int, count: int) -> np.ndarray:
    """``count`` of the round's drawn public indices, ascending (a request the rule admits)."""
    return np.sort(drawn_public_indices(CONFIG, round_no)[:count])


def round_zero_task(client_id: int = CLIENT) -> TrainTask:
    return TrainTask(
        run_id=CONFIG.run_id,
        round=0,
        client_id=client_id,
        request_indices=drawn(0, 6),
        targets=None,  # round 0: nothing to distil on yet
        catch_up=None,
        cache_version=0,
    )


def round_one_task_reusing_the_cache(cache_version: int) -> TrainTask:
    """A task whose targets are all CACHED: only a replica that holds them can restore it."""
    reused = np.array([2, 5])
    return TrainTask(
        run_id=CONFIG.run_id,
        round=1,
        client_id=CLIENT,
        request_indices=drawn(1, 3),
        targets=DistillTargets(
            round=0,
            indices=reused,
            signals=np.full(2, int(CacheSignal.CACHED)),
            fresh_labels=np.empty((0, dataset_classes(CONFIG.dataset)), dtype=np.float32),
        ),
        catch_up=None,
        cache_version=cache_version,
    )


class InstallingResync:
    """A :class:`Resync` that installs uniform labels for ``indices``, written in round 0."""

    def __init__(self, indices: list[int], version: int) -> None:
        self.indices = indices
        self.version = version
        self.calls: list[int | None] = []

    def resync(self, cache: ClientCache, known_version: int | None) -> int:
        self.calls.append(known_version)
        cache.labels[self.indices] = 1.0 / cache.labels.shape[1]
        cache.written[self.indices] = 0
        return self.version


def publish_task(broker: InMemoryTransport, body: bytes) -> None:
    broker.publish("", TASKS, body, {"kind": "task"})


def drain(broker: InMemoryTransport, queue: str) -> list[bytes]:
    bodies = []
    while (delivery := broker.get(queue, timeout_s=0)) is not None:
        bodies.append(delivery.body)
        delivery.ack()
    return bodies


def tasks_handled(handler: TaskHandler, outcome: str) -> float | None:
    labels = {"outcome": outcome}
    return handler.metrics.registry.get_sample_value("scarlet_worker_tasks_total", labels)


class LostAck:
    """A delivery whose ack never reaches the broker (the worker died right after it)."""

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self.body: bytes = delivery.body
        self.headers: Mapping[str, str] = delivery.headers
        self.redelivered: bool = delivery.redelivered

    def ack(self) -> None:
        pass

    def reject(self, *, requeue: bool, reason: str = "") -> None:
        self._delivery.reject(requeue=requeue, reason=reason)


def test_a_task_yields_exactly_one_upload_for_that_client_round_and_indices(
    broker, handler, limits
):
    # Given a round-0 task on the client's queue
    task = round_zero_task()
    publish_task(broker, encode_task(task, public_size=CONFIG.public_size))
    consumer = broker.connect()
    # When the handler handles its delivery
    handler.handle(consumer.get(TASKS, timeout_s=1))
    # Then one upload answers it, and the task was acked
    uploads = drain(broker, UPLOADS)
    assert len(uploads) == 1
    upload = decode_upload(uploads[0], limits)
    assert (upload.run_id, upload.round, upload.client_id) == (task.run_id, 0, CLIENT)
    assert np.array_equal(upload.indices, task.request_indices)
    assert upload.soft_labels.shape == (len(task.request_indices), limits.num_classes)
    consumer.close()  # an unacked task would go back to its queue here
    assert drain(broker, TASKS) == []


def test_a_redelivered_task_is_answered_with_the_same_upload_bytes(broker, handler):
    # Given a task handled once, whose ack was lost: the broker redelivers it
    publish_task(broker, encode_task(round_zero_task(), public_size=CONFIG.public_size))
    first_consumer = broker.connect()
    handler.handle(LostAck(first_consumer.get(TASKS, timeout_s=1)))
    first_consumer.close()
    consumer = broker.connect()
    redelivery = consumer.get(TASKS, timeout_s=1)
    assert redelivery is not None and redelivery.redelivered
    # When the handler handles the redelivery
    handler.handle(redelivery)
    # Then the same bytes are published again (no second training), and this time acked
    first, again = drain(broker, UPLOADS)
    assert again == first
    assert tasks_handled(handler, "redelivered") == 1 and tasks_handled(handler, "done") == 1
    consumer.close()
    assert drain(broker, TASKS) == []


def test_a_malformed_task_is_dead_lettered_and_nothing_is_uploaded(broker, handler):
    # Given a body that is not a task
    publish_task(broker, b"\x00 not msgpack")
    consumer = broker.connect()
    # When the handler handles it
    result = handler.handle(consumer.get(TASKS, timeout_s=1))
    # Then it lands in the dead-letter queue with the reason, and no upload is published
    assert result is None
    dead = broker.get(broker.dead_letters(), timeout_s=0)
    assert dead is not None and dead.body == b"\x00 not msgpack"
    assert dead.headers[HEADER_REJECT_REASON]
    assert drain(broker, UPLOADS) == []


def test_a_task_for_a_client_served_elsewhere_is_dead_lettered_untrained(broker, handler):
    # Given a task for the other client on this worker's queue
    other = 1 - CLIENT
    publish_task(broker, encode_task(round_zero_task(other), public_size=CONFIG.public_size))
    consumer = broker.connect()
    # When the handler handles it
    result = handler.handle(consumer.get(TASKS, timeout_s=1))
    # Then it is dead-lettered and nothing is uploaded
    assert result is None
    assert broker.get(broker.dead_letters(), timeout_s=0) is not None
    assert drain(broker, UPLOADS) == []


def test_a_replica_out_of_step_is_resynced_then_the_task_is_trained(broker, data, limits):
    # Given a worker whose replica lacks the entries a task reuses
    resync = InstallingResync([2, 5], version=1)
    handler = make_handler(broker, data, limits, resync)
    task = round_one_task_reusing_the_cache(cache_version=1)
    publish_task(broker, encode_task(task, public_size=CONFIG.public_size))
    # When the handler handles the task
    handler.handle(broker.connect().get(TASKS, timeout_s=1))
    # Then it fetched a full snapshot (known version None) and answered the task
    assert resync.calls == [None]
    (upload,) = (decode_upload(body, limits) for body in drain(broker, UPLOADS))
    assert (upload.round, upload.client_id) == (1, CLIENT)


def test_a_task_older_than_the_resynced_cache_is_acked_as_stale(broker, data, limits):
    # Given a resync that brings the replica past the task's cache version
    handler = make_handler(broker, data, limits, InstallingResync([2, 5], version=2))
    task = round_one_task_reusing_the_cache(cache_version=1)
    publish_task(broker, encode_task(task, public_size=CONFIG.public_size))
    consumer = broker.connect()
    # When the handler handles the task
    result = handler.handle(consumer.get(TASKS, timeout_s=1))
    # Then nothing is trained or uploaded, and the task is settled for good
    assert result is None
    assert tasks_handled(handler, "stale") == 1
    assert drain(broker, UPLOADS) == []
    consumer.close()
    assert drain(broker, TASKS) == []


def test_without_a_resync_a_replica_out_of_step_requeues_the_task(broker, handler):
    # Given a task the fresh replica cannot restore, and no way to resync
    task = round_one_task_reusing_the_cache(cache_version=1)
    body = encode_task(task, public_size=CONFIG.public_size)
    publish_task(broker, body)
    # When the handler handles the task
    result = handler.handle(broker.connect().get(TASKS, timeout_s=1))
    # Then the task goes back to its queue, and nothing is uploaded
    assert result is None
    redelivery = broker.get(TASKS, timeout_s=0)
    assert redelivery is not None and redelivery.redelivered and redelivery.body == body
    assert drain(broker, UPLOADS) == []
