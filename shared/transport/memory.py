"""In-process transport with the broker semantics of :mod:`shared.transport.amqp`.

``InMemoryTransport()`` creates a private broker and a first client handle on it;
``transport.connect()`` opens further handles on the same broker, one per simulated
process (aggregator, each worker). Everything is per instance: two
``InMemoryTransport()`` objects never share a message.

It carries bytes, not objects, so the codec runs exactly as it does over RabbitMQ, and it
keeps the AMQP rules that handlers depend on: FIFO queues, manual settlement, requeue to
the original position with ``redelivered=True``, unsettled deliveries of a closed handle
requeued, dead-lettering through a fanout exchange into the dead-letter queue, mandatory
routing (an unroutable publish raises), and a client-side size limit.

Handles are thread-safe (one lock per broker): a worker thread may ``ack`` a delivery that
another thread got. ``process_events`` only sleeps; there is no connection to serve.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from shared.errors import ConfigError, TransportClosed, TransportError
from shared.transport.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEFAULT_MAX_MESSAGE_BYTES,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REJECT_REASON,
    Delivery,
    ExchangeSpec,
    QueueSpec,
    check_message,
)
from shared.transport.memory_broker import Broker, Message, QueueState

__all__ = ["DEFAULT_USER", "InMemoryDelivery", "InMemoryTransport"]

DEFAULT_USER: Final = "guest"
"""Identity of a handle opened without one (RabbitMQ's local default user)."""


class InMemoryDelivery:
    """A message taken from an in-memory queue; settle it with ``ack`` or ``reject``."""

    __slots__ = (
        "_handle",
        "_message",
        "_spec",
        "_settled",
        "body",
        "headers",
        "queue",
        "redelivered",
        "user_id",
    )

    def __init__(self, handle: InMemoryTransport, queue: QueueState, message: Message) -> None:
        self.body: bytes = message.body
        self.headers: Mapping[str, str] = dict(message.headers)  # a copy: consumers may not edit
        self.redelivered: bool = message.redelivered
        self.queue: str = queue.spec.name
        self.user_id: str | None = message.user_id
        self._handle = handle
        self._message = message
        self._spec = queue.spec  # kept: the queue may be deleted before the delivery is settled
        self._settled = False

    def ack(self) -> None:
        """Remove the message for good.

        Raises:
            TransportError: already settled.
            TransportClosed: the handle was closed (the message went back to its queue).
        """
        with self._handle._broker.cond:
            self._settle()

    def reject(self, *, requeue: bool, reason: str = "") -> None:
        """Requeue the message (``redelivered=True`` next time) or dead-letter it.

        Args:
            requeue: True puts it back at its original position; False sends it to the
                dead-letter queue (dropped when the queue has ``dead_letter=False``).
            reason: stored in the dead letter's ``x-reject-reason`` header.

        Raises:
            TransportError: already settled, or the dead-letter queue is gone (the
                delivery then stays unsettled).
            TransportClosed: the handle was closed (the message went back to its queue).
        """
        broker = self._handle._broker
        with broker.cond:
            self._check_unsettled()
            if requeue:
                broker.requeue(self.queue, self._message)
            elif self._spec.dead_letter:
                headers = dict(self._message.headers)
                headers[HEADER_ORIGINAL_QUEUE] = self.queue
                if reason:
                    headers[HEADER_REJECT_REASON] = reason
                broker.publish(
                    broker.dead_letter_exchange, self.queue, self.body, headers, self._handle.user
                )
            self._settle()

    def _check_unsettled(self) -> None:
        if self._settled:
            raise TransportError(f"delivery from {self.queue!r} was already settled")
        if self._handle._closed:
            raise TransportClosed(f"delivery from {self.queue!r}: its transport was closed")

    def _settle(self) -> None:
        self._check_unsettled()
        self._settled = True
        self._handle._unsettled.pop(id(self), None)
        self._handle._broker.cond.notify_all()  # a get() may wait for a prefetch slot


class InMemoryTransport:
    """A broker in this process, and one client handle on it (see the module docstring).

    Args:
        prefetch: unsettled deliveries per queue and handle; ``get`` waits (and times
            out) beyond it, as an AMQP consumer with ``basic_qos(prefetch)`` would.
        max_message_bytes: largest body this handle publishes.
        dead_letter_exchange: name of the broker's dead-letter (fanout) exchange.
        dead_letter_queue: name of the broker's dead-letter queue.
        user: this handle's identity, stamped on what it publishes (``Delivery.user_id``),
            as RabbitMQ stamps the connection's user.
    """

    user: str
    """The identity this handle publishes as."""

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        prefetch: int = 1,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dead_letter_exchange: str = DEAD_LETTER_EXCHANGE,
        dead_letter_queue: str = DEAD_LETTER_QUEUE,
    ) -> None:
        if prefetch < 1:
            raise ConfigError("prefetch must be >= 1")
        self._broker = Broker(dead_letter_exchange, dead_letter_queue)
        self.user = user
        self._prefetch = prefetch
        self._max_message_bytes = max_message_bytes
        self._closed = False
        self._unsettled: dict[int, InMemoryDelivery] = {}

    def connect(
        self,
        *,
        user: str | None = None,
        prefetch: int | None = None,
        max_message_bytes: int | None = None,
    ) -> InMemoryTransport:
        """Open another client handle on this handle's broker.

        Args:
            user: the new handle's identity; defaults to this handle's.
            prefetch: the new handle's prefetch; defaults to this handle's.
            max_message_bytes: the new handle's size limit; defaults to this handle's.

        Returns:
            A handle that sees the same exchanges and queues; closing it requeues only its
            own unsettled deliveries.
        """
        handle = InMemoryTransport.__new__(InMemoryTransport)
        handle._broker = self._broker
        handle.user = self.user if user is None else user
        handle._prefetch = self._prefetch if prefetch is None else prefetch
        handle._max_message_bytes = (
            self._max_message_bytes if max_message_bytes is None else max_message_bytes
        )
        handle._closed = False
        handle._unsettled = {}
        return handle

    def declare(
        self, exchanges: Iterable[ExchangeSpec] = (), queues: Iterable[QueueSpec] = ()
    ) -> None:
        """Create exchanges, then queues and bindings; see ``Transport.declare``.

        Raises:
            TransportError: conflicting redeclaration, unknown exchange in a binding,
                unsupported kind, or the handle is closed.
        """
        with self._broker.cond:
            self._check_open()
            self._broker.declare(exchanges, queues)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Put a message into every queue the exchange routes it to.

        Raises:
            TypeError: non-bytes body or non-str headers.
            MessageTooLarge: body over ``max_message_bytes``.
            TransportError: unknown exchange, or no queue would receive the message.
            TransportClosed: the handle is closed.
        """
        check_message(body, headers, self._max_message_bytes)
        with self._broker.cond:
            self._check_open()
            self._broker.publish(exchange, routing_key, body, headers or {}, self.user)

    def get(self, queue: str, *, timeout_s: float) -> InMemoryDelivery | None:
        """Wait up to ``timeout_s`` seconds for the next message of ``queue``.

        Waits also while this handle holds ``prefetch`` unsettled deliveries of ``queue``.

        Raises:
            TransportError: the queue does not exist (or was deleted while waiting).
            TransportClosed: the handle is (or was, while waiting) closed.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        broker = self._broker
        with broker.cond:
            while True:
                self._check_open()
                state = broker.queues.get(queue)
                if state is None:
                    raise TransportError(f"no queue {queue!r} (declare it first)")
                state.drop_expired(time.monotonic())
                if state.ready and self._has_prefetch_slot(queue):
                    delivery = InMemoryDelivery(self, state, state.ready.popleft())
                    self._unsettled[id(delivery)] = delivery
                    return delivery
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                broker.cond.wait(remaining)

    def get_many(self, queue: str, *, max_count: int, timeout_s: float) -> list[InMemoryDelivery]:
        """Up to ``max_count`` deliveries of ``queue``; waits ``timeout_s`` for the first only.

        The others are the ready messages the prefetch window has room for.

        Raises:
            ValueError: ``max_count`` < 1.
            TransportError: the queue does not exist.
            TransportClosed: the handle is closed.
        """
        if max_count < 1:
            raise ValueError(f"get_many: max_count must be >= 1, got {max_count}")
        first = self.get(queue, timeout_s=timeout_s)
        if first is None:
            return []
        batch = [first]
        with self._broker.cond:
            state = self._broker.queues.get(queue)
            if state is not None:
                state.drop_expired(time.monotonic())
            while state is not None and state.ready and len(batch) < max_count:
                if not self._has_prefetch_slot(queue):
                    break
                delivery = InMemoryDelivery(self, state, state.ready.popleft())
                self._unsettled[id(delivery)] = delivery
                batch.append(delivery)
        return batch

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries`` together (under one lock: all or, on an error, none).

        Raises:
            TransportError: a delivery is already settled or not from this handle.
            TransportClosed: the handle was closed (the messages went back to their queues).
        """
        batch: list[InMemoryDelivery] = []
        for delivery in deliveries:
            if not isinstance(delivery, InMemoryDelivery) or delivery._handle is not self:
                raise TransportError("ack_many: a delivery of another transport handle")
            batch.append(delivery)
        with self._broker.cond:
            if len({id(d) for d in batch}) != len(batch):
                raise TransportError("ack_many: the same delivery twice")
            for delivery in batch:
                delivery._check_unsettled()
            for delivery in batch:
                delivery._settle()

    def process_events(self, time_s: float = 0.0) -> None:
        """Sleep ``time_s`` seconds (nothing to serve in memory).

        Raises:
            TransportClosed: the handle is closed.
        """
        self._check_open()
        if time_s > 0:
            time.sleep(time_s)

    def purge(self, queue: str) -> int:
        """Drop the ready messages of ``queue`` and return how many there were.

        Raises:
            TransportError: the queue does not exist.
            TransportClosed: the handle is closed.
        """
        with self._broker.cond:
            self._check_open()
            state = self._broker.queues.get(queue)
            if state is None:
                raise TransportError(f"no queue {queue!r} to purge")
            count = len(state.ready)
            state.ready.clear()
            return count

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with its messages; unknown queues are ignored.

        Raises:
            TransportClosed: the handle is closed.
        """
        with self._broker.cond:
            self._check_open()
            if self._broker.queues.pop(queue, None) is not None:
                self._broker.cond.notify_all()  # waiting consumers must see it is gone

    def delete_exchange(self, exchange: str) -> None:
        """Delete ``exchange`` and the bindings to it; unknown exchanges are ignored.

        Raises:
            TransportClosed: the handle is closed.
        """
        with self._broker.cond:
            self._check_open()
            self._broker.exchanges.pop(exchange, None)
            for state in self._broker.queues.values():
                state.bindings = {b for b in state.bindings if b[0] != exchange}

    def dead_letters(self) -> str:
        """Name of the broker's dead-letter queue."""
        return self._broker.dead_letter_queue

    def close(self) -> None:
        """Close this handle; its unsettled deliveries go back to their queues. Idempotent."""
        with self._broker.cond:
            if self._closed:
                return
            for delivery in sorted(self._unsettled.values(), key=lambda d: d._message.seq):
                self._broker.requeue(delivery.queue, delivery._message)
            self._unsettled.clear()
            self._closed = True
            self._broker.cond.notify_all()  # wake this handle's waiting get()

    def _has_prefetch_slot(self, queue: str) -> bool:
        in_flight = sum(1 for d in self._unsettled.values() if d.queue == queue)
        return in_flight < self._prefetch

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("in-memory transport handle is closed")

    def __enter__(self) -> InMemoryTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
