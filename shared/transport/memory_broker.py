"""The in-memory broker behind :class:`~shared.transport.memory.InMemoryTransport`.

Exchanges, queues, bindings and ready messages shared by every handle of one
``InMemoryTransport``, with RabbitMQ's rules: direct and fanout routing, mandatory
publishing (an unroutable message raises), redeclaration only with the same arguments,
requeue to the original position, and the queue bounds (``max_length`` with drop-head or
reject-publish overflow, message TTL). Every method runs with ``Broker.cond`` held by the
caller.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from shared.errors import TransportError
from shared.transport.base import (
    EXCHANGE_KINDS,
    ExchangeSpec,
    QueueSpec,
    dead_letter_queue_spec,
)

__all__ = ["Broker", "Message", "QueueState"]

_DEFAULT_EXCHANGE: Final = ""


@dataclass(slots=True)
class Message:
    """One message as a queue holds it."""

    body: bytes
    headers: dict[str, str]
    seq: int  # broker-wide publish order; a requeued message goes back to its slot
    redelivered: bool = False
    user_id: str | None = None
    enqueued: float = 0.0  # monotonic seconds, for the queue's message TTL


@dataclass(slots=True)
class QueueState:
    """A declared queue: its spec, bindings and ready messages."""

    spec: QueueSpec
    ready: deque[Message] = field(default_factory=deque)
    bindings: set[tuple[str, str]] = field(default_factory=set)

    def drop_expired(self, now: float) -> None:
        """Drop ready messages older than the queue's message TTL."""
        ttl = self.spec.message_ttl_s
        while ttl is not None and self.ready and now - self.ready[0].enqueued >= ttl:
            self.ready.popleft()


def _arguments(spec: QueueSpec) -> tuple[object, ...]:
    # what the broker compares on a redeclaration (406 PRECONDITION_FAILED if it differs)
    return (
        spec.quorum,
        spec.dead_letter,
        spec.max_length,
        spec.reject_overflow,
        spec.message_ttl_s,
    )


class Broker:
    """Exchanges, queues and bindings shared by the handles of one InMemoryTransport."""

    def __init__(self, dead_letter_exchange: str, dead_letter_queue: str) -> None:
        self.cond = threading.Condition()
        self.exchanges: dict[str, ExchangeSpec] = {}
        self.queues: dict[str, QueueState] = {}
        self.next_seq = 0
        self.dead_letter_exchange = dead_letter_exchange
        self.dead_letter_queue = dead_letter_queue
        self.declare(
            [ExchangeSpec(dead_letter_exchange, "fanout")],
            [dead_letter_queue_spec(dead_letter_queue, dead_letter_exchange)],
        )

    # Every method below runs with ``cond`` held by the caller (or in __init__).

    def declare(self, exchanges: Iterable[ExchangeSpec], queues: Iterable[QueueSpec]) -> None:
        """Declare exchanges and queues; a redeclaration must have the same arguments."""
        for ex in exchanges:
            if not ex.name:
                raise TransportError("the default exchange cannot be declared")
            if ex.kind not in EXCHANGE_KINDS:
                raise TransportError(f"exchange {ex.name!r}: unsupported kind {ex.kind!r}")
            known = self.exchanges.setdefault(ex.name, ex)
            if known.kind != ex.kind:
                raise TransportError(
                    f"exchange {ex.name!r} exists as {known.kind!r}, not {ex.kind!r}"
                )
        for spec in queues:
            self._declare_queue(spec)

    def _declare_queue(self, spec: QueueSpec) -> None:
        queue = self.queues.get(spec.name)
        if queue is None:
            queue = self.queues[spec.name] = QueueState(spec)
        elif _arguments(queue.spec) != _arguments(spec):
            # the broker refuses a redeclaration with other arguments (406 PRECONDITION_FAILED)
            raise TransportError(f"queue {spec.name!r} exists with different settings")
        for exchange, key in spec.bindings:
            if exchange not in self.exchanges:
                raise TransportError(f"queue {spec.name!r}: no exchange {exchange!r} to bind to")
            queue.bindings.add((exchange, key))

    def route(self, exchange: str, routing_key: str) -> list[QueueState]:
        """The queues a message published to ``exchange`` with ``routing_key`` reaches."""
        if exchange == _DEFAULT_EXCHANGE:
            queue = self.queues.get(routing_key)
            return [] if queue is None else [queue]
        spec = self.exchanges.get(exchange)
        if spec is None:
            raise TransportError(f"no exchange {exchange!r}")
        fanout = spec.kind == "fanout"
        return [
            q
            for q in self.queues.values()
            if any(ex == exchange and (fanout or key == routing_key) for ex, key in q.bindings)
        ]

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, str],
        user_id: str | None = None,
    ) -> None:
        """Route one message; raises TransportError when unroutable or a queue is full."""
        targets = self.route(exchange, routing_key)
        if not targets:
            raise TransportError(
                f"unroutable message: exchange={exchange!r} routing_key={routing_key!r}"
            )
        now = time.monotonic()
        for queue in targets:
            queue.drop_expired(now)
            limit = queue.spec.max_length
            if limit is not None and len(queue.ready) >= limit and queue.spec.reject_overflow:
                # the broker nacks the publish (x-overflow=reject-publish)
                raise TransportError(
                    f"broker refused the message: queue {queue.spec.name!r} is full"
                )
        for queue in targets:
            limit = queue.spec.max_length
            while limit is not None and queue.ready and len(queue.ready) >= limit:
                queue.ready.popleft()  # drop-head: the oldest goes
            if limit != 0:
                message = Message(body, dict(headers), self.next_seq, user_id=user_id)
                message.enqueued = now
                queue.ready.append(message)
        self.next_seq += 1
        self.cond.notify_all()

    def requeue(self, queue_name: str, message: Message) -> None:
        """Put a message back at its original position, marked redelivered."""
        queue = self.queues.get(queue_name)
        if queue is None:  # deleted meanwhile: its messages went with it
            return
        message.redelivered = True
        index = bisect.bisect_left(queue.ready, message.seq, key=lambda m: m.seq)
        queue.ready.insert(index, message)
        self.cond.notify_all()
