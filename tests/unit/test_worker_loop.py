"""``WorkerLoop`` rides out connection loss: a stale settle or a broker outage never ends it.

The broker is an in-memory one; the faults are injected where the AMQP transport raises
them (a settle on a delivery of a channel that went away, a reconnect budget spent). The
real broker restart is in tests/system/test_fault_matrix.py.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.worker.loop import OUTAGE_BACKOFF_MAX_S, WorkerLoop, outage_backoff_s
from shared.errors import TransportClosed, TransportUnavailable
from shared.transport import InMemoryTransport
from shared.transport.base import QueueSpec

QUEUE = "tasks"


class FlakyTransport:
    """An in-memory transport handle whose ``get`` fails as scripted, once per entry."""

    def __init__(self, inner: Any, failures: list[BaseException]) -> None:
        self.inner = inner
        self.failures = failures

    def get(self, queue: str, *, timeout_s: float) -> Any:
        if self.failures:
            raise self.failures.pop(0)
        return self.inner.get(queue, timeout_s=0)

    def process_events(self, time_s: float = 0.0) -> None:
        self.inner.process_events(min(time_s, 0.01))


class StaleAckHandler:
    """Stands in for ``TaskHandler``: the first ``stale`` finishes hit a stale channel."""

    def __init__(self, stale: int) -> None:
        self.stale = stale
        self.finished: list[bytes] = []

    def prepare(self, delivery: Any) -> Any:
        return delivery

    def learn(self, job: Any) -> None:
        pass

    def finish(self, job: Any) -> None:
        if self.stale:
            self.stale -= 1
            # what AmqpDelivery.ack raises after a reconnect; the broker requeued it
            job.reject(requeue=True)
            raise TransportClosed("delivery belongs to a closed channel")
        job.ack()
        self.finished.append(job.body)


def _queue() -> QueueSpec:
    return QueueSpec(QUEUE)


def test_a_finish_on_a_stale_channel_is_logged_and_the_redelivered_task_is_done():
    # Given a task whose first ack hits a channel that went away (the broker requeued it)
    broker = InMemoryTransport()
    broker.declare(queues=[_queue()])
    broker.publish("", QUEUE, b"task-0")
    handler = StaleAckHandler(stale=1)
    loop = WorkerLoop(handler, broker.connect(), QUEUE)  # type: ignore[arg-type]
    # When the loop serves one task
    loop.run(threading.Event(), max_tasks=1)
    # Then it did not exit: the redelivery was done and acked
    assert handler.finished == [b"task-0"]
    assert loop.stale_settles == 1 and loop.tasks_done == 1
    broker.close()


def test_a_broker_outage_past_the_reconnect_budget_is_waited_out(monkeypatch):
    # Given a transport whose reconnect budget is spent twice before the broker is back
    broker = InMemoryTransport()
    broker.declare(queues=[_queue()])
    broker.publish("", QUEUE, b"task-0")
    waits: list[float] = []
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", lambda s: waits.append(s) or False)
    failures: list[BaseException] = [TransportUnavailable("down"), TransportUnavailable("down")]
    handler = StaleAckHandler(stale=0)
    loop = WorkerLoop(handler, FlakyTransport(broker.connect(), failures), QUEUE)  # type: ignore[arg-type]
    # When
    loop.run(stop, max_tasks=1)
    # Then it backed off (1 s, then 2 s) and served the task once the broker answered
    assert waits == [1.0, 2.0]
    assert loop.outages == 2
    assert handler.finished == [b"task-0"]
    broker.close()


def test_the_outage_backoff_doubles_and_is_capped():
    # Given / When / Then
    assert [outage_backoff_s(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert outage_backoff_s(50) == OUTAGE_BACKOFF_MAX_S
    with pytest.raises(ValueError):
        outage_backoff_s(0)
