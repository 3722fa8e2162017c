"""RabbitMQ transport over pika's ``BlockingConnection``.

Owns :class:`AmqpTransport`: the ``Transport`` operations, the topology it remembers,
and settlement with dead-lettering. Its parts: the connection (``amqp_connection``), the
per-queue consumers (``amqp_consumers``), the recorded topology (``amqp_topology``), the
delivery (``amqp_delivery``), batched acks (``amqp_batch``), helpers (``amqp_support``),
all in :mod:`shared.transport`.

Delivery guarantees:

- Exchanges and queues are durable, messages persistent (``delivery_mode=2``), and every
  publish is ``mandatory`` and waits for its publisher confirm, so ``publish`` returning
  means the broker holds the message (one round trip per message; about 1.5k msg/s).
- Consumers ack manually. ``get`` runs one ``basic_consume`` consumer per queue with a
  ``prefetch`` window: up to ``prefetch`` unsettled deliveries per queue, counting those
  buffered here but not yet returned by ``get``. Buffered deliveries are requeued when
  the queue is purged or deleted through this transport and when the transport closes.
- ``get_many`` returns the first delivery and whatever else of that queue the window
  already holds; ``ack_many`` acks them with one ``basic_ack(multiple=True)`` up to the
  highest tag, but only as far as no other unsettled delivery of the channel (buffered,
  handed out or with a cross-thread settle pending) lies below it; above such a tag it
  acks one by one. Deliveries of an earlier channel generation are never acked.
- ``reject(requeue=False)`` republishes the message (confirmed) to the dead-letter
  exchange with ``x-original-queue`` and ``x-reject-reason`` headers, then acks it. A
  crash in between leaves a duplicate dead letter, never a lost message. Queues also
  carry ``x-dead-letter-exchange``, so what the broker dead-letters by itself (e.g. a
  message rejected by a foreign client) lands in the same queue; its
  ``x-first-death-queue``/``-reason`` headers are exposed under the same two names.

Threads: every method must be called on the thread that created the transport, except
``Delivery.ack``/``Delivery.reject`` (see :mod:`shared.transport.amqp_delivery`).

Connection loss: ``declare``, ``publish``, ``get``, ``purge``, ``delete_queue`` and
``process_events`` reconnect with backoff, declare again the topology of earlier
``declare`` calls and retry (see :mod:`shared.transport.amqp_connection`).

pika exceptions never leave the transport (this module and its parts): they become
:mod:`shared.errors` types.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import pika
import pika.exceptions

from shared.errors import ConfigError, TransportClosed, TransportError
from shared.transport.amqp_batch import ack_batch
from shared.transport.amqp_connection import AmqpLink
from shared.transport.amqp_consumers import AmqpConsumers
from shared.transport.amqp_delivery import AmqpDelivery
from shared.transport.amqp_support import redact_url, refusal
from shared.transport.amqp_topology import AmqpTopology
from shared.transport.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEFAULT_MAX_MESSAGE_BYTES,
    EXCHANGE_KINDS,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REJECT_REASON,
    Delivery,
    ExchangeSpec,
    QueueSpec,
    check_message,
)

__all__ = ["AmqpDelivery", "AmqpTransport", "redact_url"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class AmqpTransport:
    """RabbitMQ client implementing ``Transport`` (see the module docstring).

    Args:
        url: ``amqp://user:password@host:port/vhost``; pika's URL query options apply,
            the keyword options below override them.
        prefetch: unsettled deliveries per consumed queue (``basic_qos``), at least 1.
        heartbeat_s: AMQP heartbeat interval in seconds (0 disables it); kept alive by
            ``get`` and ``process_events``.
        max_message_bytes: largest body ``publish`` accepts (checked client-side).
        reconnect_attempts: connection attempts per (re)connect before giving up.
        reconnect_base_delay_s: first backoff delay; doubles after each failed attempt.
        reconnect_max_delay_s: cap on one backoff delay.
        blocked_timeout_s: give up a connection the broker keeps blocked (memory or
            disk alarm) for this long.
        dead_letter_exchange: fanout exchange rejected messages go through.
        dead_letter_queue: queue that collects them (``dead_letters()``).
        connection_name: shown in the RabbitMQ management UI.

    Raises:
        ConfigError: an invalid URL or option.
        TransportUnavailable: the broker could not be reached within the retry budget.
        TransportError: the dead-letter topology conflicts with an existing one.
    """

    def __init__(
        self,
        url: str,
        *,
        prefetch: int = 1,
        heartbeat_s: int = 30,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_attempts: int = 8,
        reconnect_base_delay_s: float = 0.25,
        reconnect_max_delay_s: float = 8.0,
        blocked_timeout_s: float = 60.0,
        dead_letter_exchange: str = DEAD_LETTER_EXCHANGE,
        dead_letter_queue: str = DEAD_LETTER_QUEUE,
        connection_name: str = "scarlet-fd",
    ) -> None:
        if prefetch < 1 or reconnect_attempts < 1 or heartbeat_s < 0:
            raise ConfigError("prefetch and reconnect_attempts must be >= 1, heartbeat_s >= 0")
        self._link = AmqpLink(
            url,
            heartbeat_s=heartbeat_s,
            blocked_timeout_s=blocked_timeout_s,
            connection_name=connection_name,
            prefetch=prefetch,
            attempts=reconnect_attempts,
            base_delay_s=reconnect_base_delay_s,
            max_delay_s=reconnect_max_delay_s,
            on_open=lambda: self._topology.redeclare(self._link),
            on_channel_reset=lambda: self._consumers.reset(),
            on_cancel=lambda frame: self._consumers.on_broker_cancel(frame),
        )
        self._url = self._link.url
        # stamped on every publish as user_id; RabbitMQ refuses any other name
        self.user: str = self._link.user
        self._max_message_bytes = max_message_bytes
        self._topology = AmqpTopology(dead_letter_exchange, dead_letter_queue)
        self._closed = False
        self._consumers = AmqpConsumers(self._link)
        self._link.connect()

    @property
    def reconnect_count(self) -> int:
        """Successful reconnections after a lost connection (for tests and metrics)."""
        return self._link.reconnect_count

    # ------------------------------------------------------------------ public API

    def declare(
        self, exchanges: Iterable[ExchangeSpec] = (), queues: Iterable[QueueSpec] = ()
    ) -> None:
        """Declare durable exchanges, then queues and bindings; idempotent.

        The topology is remembered and declared again after a reconnect.

        Raises:
            TransportError: unsupported kind, a conflicting existing exchange or queue, a
                binding to an unknown exchange.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        exchange_specs, queue_specs = tuple(exchanges), tuple(queues)
        for ex in exchange_specs:
            if not ex.name or ex.kind not in EXCHANGE_KINDS:
                raise TransportError(f"cannot declare exchange {ex.name!r} of kind {ex.kind!r}")
        self._run(
            "declare", lambda: self._topology.declare(self._link, exchange_specs, queue_specs)
        )
        self._topology.record(exchange_specs, queue_specs)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish a persistent, mandatory message and wait for the broker's confirm.

        Raises:
            TypeError: non-bytes body or non-str headers.
            MessageTooLarge: body over ``max_message_bytes``.
            TransportError: unknown exchange, unroutable message, or a broker nack.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        check_message(body, headers, self._max_message_bytes)
        self._run("publish", lambda: self._publish(exchange, routing_key, body, headers))

    def get(self, queue: str, *, timeout_s: float) -> AmqpDelivery | None:
        """Return the next delivery of ``queue``, or None after ``timeout_s`` seconds.

        ``timeout_s=0`` returns only what has already arrived. A reconnect inside the
        call can make it take longer than ``timeout_s``.

        Raises:
            TransportError: the queue does not exist.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        return self._run("get", lambda: self._get(queue, deadline))

    def get_many(self, queue: str, *, max_count: int, timeout_s: float) -> list[AmqpDelivery]:
        """Up to ``max_count`` deliveries of ``queue``; waits ``timeout_s`` for the first only.

        The others are what the prefetch window holds already (see ``Transport.get_many``).

        Raises:
            ValueError: ``max_count`` < 1.
            TransportError: the queue does not exist.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        if max_count < 1:
            raise ValueError(f"get_many: max_count must be >= 1, got {max_count}")
        deadline = time.monotonic() + max(0.0, timeout_s)

        def op() -> list[AmqpDelivery]:
            first = self._consumers.next(queue, deadline)
            if first is None:
                return []
            pending = [first, *self._consumers.take_ready(queue, max_count - 1)]
            generation = self._consumers.generation
            return [AmqpDelivery(self, queue, p, generation) for p in pending]

        return self._run("get_many", op)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries`` together, on the owner thread (see the module docstring).

        Raises:
            TransportError: a delivery is already settled or not from this transport
                (nothing acked), or called from another thread.
            TransportClosed: some deliveries came from a channel that is gone (the others
                were acked); the broker delivers those again.
        """
        self._link.check_owner()
        batch: list[AmqpDelivery] = []
        for delivery in deliveries:
            if not isinstance(delivery, AmqpDelivery) or delivery._transport is not self:
                raise TransportError("ack_many: a delivery of another transport")
            batch.append(delivery)
        if batch:
            ack_batch(self._link, self._consumers, batch, closed=self._closed)

    def process_events(self, time_s: float = 0.0) -> None:
        """Serve the connection for ``time_s`` seconds: heartbeats, cross-thread acks.

        Raises:
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        deadline = time.monotonic() + max(0.0, time_s)

        def serve() -> None:
            while True:
                self._link.connection().process_data_events(
                    time_limit=max(0.0, deadline - time.monotonic())
                )
                if time.monotonic() >= deadline:
                    return

        self._run("process_events", serve)

    def purge(self, queue: str) -> int:
        """Drop the ready messages of ``queue`` (buffered ones first go back to it).

        Raises:
            TransportError: the queue does not exist.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """

        def op() -> int:
            self._consumers.release(queue)
            frame = self._link.publisher().queue_purge(queue)
            return int(frame.method.message_count)

        return self._run("purge", op)

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` and its messages; it is no longer declared on reconnect.

        Raises:
            TransportUnavailable: the broker could not be reached within the retry budget.
        """

        def op() -> None:
            self._consumers.release(queue)
            self._link.publisher().queue_delete(queue)

        self._run("delete_queue", op)
        self._topology.forget_queue(queue)

    def delete_exchange(self, exchange: str) -> None:
        """Delete ``exchange`` and the bindings to it (not part of ``Transport``).

        Raises:
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        self._run("delete_exchange", lambda: self._link.publisher().exchange_delete(exchange))
        self._topology.forget_exchange(exchange)

    def dead_letters(self) -> str:
        """Name of this transport's dead-letter queue."""
        return self._topology.dlq

    def close(self) -> None:
        """Requeue buffered deliveries and close the connection; idempotent.

        Unsettled deliveries go back to their queues (the broker does that for a closed
        channel) and come again with ``redelivered=True``.

        Raises:
            TransportError: called from a thread other than the owner.
        """
        if self._closed:
            return
        self._link.check_owner()
        try:
            conn = self._link.current_connection
            if conn is not None and conn.is_open:
                # run acks other threads scheduled before close(), so they are not lost
                conn.process_data_events(time_limit=0)
            self._consumers.release_all()
        except pika.exceptions.AMQPError as e:
            logger.debug("transport: close: could not release consumers: %r", e)
        self._closed = True
        self._link.drop()

    def __enter__(self) -> AmqpTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AmqpTransport({self._url!r})"

    # ------------------------------------------------------------------ operations

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, object] | None,
    ) -> None:
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=dict(headers) if headers else None,
            user_id=self.user,
        )
        try:
            self._link.publisher().basic_publish(
                exchange, routing_key, body, properties=properties, mandatory=True
            )
        except pika.exceptions.UnroutableError:
            raise TransportError(
                f"unroutable message: exchange={exchange!r} routing_key={routing_key!r}"
            ) from None
        except pika.exceptions.NackError:
            raise TransportError(f"broker refused the message for exchange={exchange!r}") from None

    def _get(self, queue: str, deadline: float) -> AmqpDelivery | None:
        pending = self._consumers.next(queue, deadline)
        return (
            None
            if pending is None
            else AmqpDelivery(self, queue, pending, self._consumers.generation)
        )

    def _settle(self, delivery: AmqpDelivery, requeue: bool | None, reason: str) -> None:
        """Ack/reject on the owner thread (``requeue=None`` acks)."""
        if self._closed:
            raise TransportClosed(f"delivery from {delivery.queue!r}: transport is closed")
        channel = self._link.current_consumer
        if (
            delivery._generation != self._consumers.generation
            or channel is None
            or not channel.is_open
        ):
            raise TransportClosed(
                f"delivery from {delivery.queue!r} belongs to a closed channel;"
                " the broker will deliver it again"
            )
        try:
            if requeue is None:
                channel.basic_ack(delivery._tag)
            elif requeue or not self._topology.dead_letters_from(delivery.queue):
                channel.basic_reject(delivery._tag, requeue=requeue)
            else:
                self._dead_letter(delivery, reason)
                channel.basic_ack(delivery._tag)
            self._consumers.settled((delivery._tag,))
        except pika.exceptions.ChannelClosedByBroker as e:
            self._link.recover_channels()
            raise refusal("settle", e) from None
        except pika.exceptions.AMQPError as e:
            raise TransportClosed(f"settle: connection lost ({type(e).__name__})") from None

    def _dead_letter(self, delivery: AmqpDelivery, reason: str) -> None:
        headers = dict(delivery._raw_headers or {})
        headers[HEADER_ORIGINAL_QUEUE] = delivery.queue
        if reason:
            headers[HEADER_REJECT_REASON] = reason
        self._publish(self._topology.dlx, delivery.queue, delivery.body, headers)

    def _settle_threadsafe(self, delivery: AmqpDelivery, requeue: bool | None, reason: str) -> None:
        conn = self._link.current_connection  # one read: the owner may swap it while reconnecting
        if self._closed or conn is None or delivery._generation != self._consumers.generation:
            raise TransportClosed(f"delivery from {delivery.queue!r}: its channel is gone")
        try:
            conn.add_callback_threadsafe(
                functools.partial(self._settle_scheduled, delivery, requeue, reason)
            )
        except pika.exceptions.ConnectionWrongStateError:
            raise TransportClosed(f"delivery from {delivery.queue!r}: connection closed") from None

    def _settle_scheduled(self, delivery: AmqpDelivery, requeue: bool | None, reason: str) -> None:
        # runs on the owner inside process_data_events: an exception would surface in an
        # unrelated get() or process_events(), so log it; the broker redelivers the message
        try:
            self._settle(delivery, requeue, reason)
        except TransportError as e:
            logger.warning(
                "transport: cross-thread settle of a %r delivery failed: %s", delivery.queue, e
            )

    # ------------------------------------------------------------------ connection hooks

    def _run(self, op: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the link, which reconnects and retries when the connection drops."""
        if self._closed:
            raise TransportClosed(f"{op}: transport to {self._url} is closed")
        return self._link.run(op, fn)

    def _on_owner_thread(self) -> bool:
        return self._link.on_owner_thread()
