"""Batched acks across a lost connection, against the shared RabbitMQ node.

Delivery tags belong to one channel: a batch taken before a reconnect must never be
acked on the new channel (a stale tag could ack another message, or get the channel
closed), while what was taken after it is acked normally.

Budget: about 6 s (one heartbeat starvation).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from shared.errors import TransportClosed
from shared.transport import AmqpTransport, Delivery, QueueSpec
from tests.conftest import AMQP_URL, require_rabbitmq

pytestmark = pytest.mark.integration


@pytest.fixture
def names() -> Iterator[tuple[str, str, str]]:
    require_rabbitmq()
    prefix = f"test.{uuid.uuid4().hex[:12]}"
    queue, dlx, dlq = f"{prefix}.q", f"{prefix}.dlx", f"{prefix}.dlq"
    yield queue, dlx, dlq
    with AmqpTransport(AMQP_URL, dead_letter_exchange=dlx, dead_letter_queue=dlq) as admin:
        admin.delete_queue(queue)
        admin.delete_queue(dlq)
        admin.delete_exchange(dlx)


def _take(transport: AmqpTransport, queue: str, count: int) -> list[Delivery]:
    taken: list[Delivery] = []
    deadline = time.monotonic() + 5.0
    while len(taken) < count and time.monotonic() < deadline:
        taken.extend(transport.get_many(queue, max_count=count, timeout_s=1.0))
    assert len(taken) == count
    return taken


def test_a_batch_taken_before_a_reconnect_is_never_acked_on_the_new_channel(
    names: tuple[str, str, str],
):
    queue, dlx, dlq = names
    transport = AmqpTransport(
        AMQP_URL, heartbeat_s=1, prefetch=10, dead_letter_exchange=dlx, dead_letter_queue=dlq
    )
    transport.declare(queues=[QueueSpec(queue)])
    for i in range(3):
        transport.publish("", queue, f"old{i}".encode())
    old = _take(transport, queue, 3)
    # When the connection is lost (starved of heartbeats) and the next call reconnects
    time.sleep(4.0)
    transport.publish("", queue, b"new")
    assert transport.reconnect_count == 1
    # the broker requeued the old batch: it comes again on the new channel, plus "new"
    fresh = _take(transport, queue, 4)
    assert sorted(d.body for d in fresh) == [b"new", b"old0", b"old1", b"old2"]
    # Then acking old and new together acks only the new deliveries
    with pytest.raises(TransportClosed):
        transport.ack_many([*old, *fresh])
    assert transport.get(queue, timeout_s=0.3) is None
    transport.close()
    with AmqpTransport(AMQP_URL, dead_letter_exchange=dlx, dead_letter_queue=dlq) as again:
        assert again.get(queue, timeout_s=0.3) is None  # each acked once, none lost
