"""The cache service takes requests in batches: each reply confirmed, then one batched ack.

Over the in-memory transport (its contract with RabbitMQ is tests/contract) and store.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from services.cache.service import CacheService
from shared.errors import TransportClosed
from shared.protocol import routes
from shared.protocol.cache_sync import HEADER_REQUEST_ID, CacheSyncRequest, encode_sync_request
from shared.protocol.codec import DecodeLimits
from shared.state.memory import MemoryFederationStore
from shared.transport import Delivery, InMemoryTransport, QueueSpec

RUN = "rpc-batch"


def _setup(max_batch: int) -> tuple[InMemoryTransport, CacheService, InMemoryTransport, str]:
    broker = InMemoryTransport()
    handle = broker.connect(prefetch=2 * max_batch)
    service = CacheService(
        handle, MemoryFederationStore(RUN), RUN, DecodeLimits(30, 10), max_batch=max_batch
    )
    service.declare()
    reply = routes.reply_queue(RUN, "w")
    broker.declare(queues=[QueueSpec(reply, ((routes.replies_exchange(RUN), reply),))])
    return broker, service, handle, reply


def _ask(broker: InMemoryTransport, reply_to: str) -> None:
    request = CacheSyncRequest(RUN, 1, uuid.uuid4().hex, None, reply_to)
    _publish(broker, encode_sync_request(request), request.request_id)


def _publish(broker: InMemoryTransport, body: bytes, request_id: str = "x") -> None:
    broker.publish(
        routes.cache_rpc_exchange(RUN), routes.CACHE_RPC_KEY, body, {HEADER_REQUEST_ID: request_id}
    )


def _count(transport: InMemoryTransport, queue: str) -> int:
    n = 0
    while (d := transport.get(queue, timeout_s=0)) is not None:
        d.ack()
        n += 1
    return n


def test_a_batch_answers_the_good_requests_and_dead_letters_the_others_once_each():
    # Given five requests: good, undecodable, good, with a reply queue that is gone, good
    broker, service, handle, reply = _setup(max_batch=4)
    _ask(broker, reply)
    _publish(broker, b"\x93junk")
    _ask(broker, reply)
    _ask(broker, routes.reply_queue(RUN, "gone"))
    _ask(broker, reply)
    # When the service takes one batch
    assert service.serve_once(0.01)
    # Then the first four were settled, one way each
    assert dict(service.stats) == {"answered": 2, "invalid": 1, "unroutable": 1}
    assert service.serve_once(0.01) and not service.serve_once(0.01)
    assert service.stats["answered"] == 3
    assert _count(broker, reply) == 3
    assert _count(broker, broker.dead_letters()) == 2
    handle.close()  # nothing was left unsettled
    assert _count(broker, routes.cache_rpc_queue(RUN)) == 0


def test_requests_answered_but_not_acked_are_answered_again():
    # Given a service whose connection goes away between its replies and the ack
    broker, service, handle, reply = _setup(max_batch=4)
    for _ in range(3):
        _ask(broker, reply)

    def lost(deliveries: Sequence[Delivery]) -> None:
        handle.close()
        raise TransportClosed("connection lost")

    handle.ack_many = lost  # type: ignore[method-assign]
    with pytest.raises(TransportClosed):
        service.serve_once(0.01)
    # Then nothing was counted answered, and the requests come again
    assert service.stats["answered"] == 0
    assert _count(broker, routes.cache_rpc_queue(RUN)) == 3
    assert _count(broker, reply) == 3  # the replies were published (workers drop stale ones)
