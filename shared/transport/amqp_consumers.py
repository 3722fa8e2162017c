"""The consumers of the RabbitMQ transport: one per queue, with its buffer of pushed messages.

Owns :class:`AmqpConsumers`: the ``basic_consume`` consumer of each queue ``get`` has
read, the messages the broker pushed to it but ``get`` has not yet returned, and the
generation of the consume channel (bumped whenever that channel is replaced or lost,
since delivery tags are valid on one channel only), and the delivery tags of that
channel not yet settled (buffered or handed out), which tell a batched ack how far
``basic_ack(multiple=True)`` may reach. Released consumers give their buffered messages
back to the queue, in order. The channels themselves belong to
:class:`~shared.transport.amqp_connection.AmqpLink`.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterable

import pika
import pika.exceptions

from shared.transport.amqp_connection import AmqpLink
from shared.transport.amqp_support import Pending

__all__ = ["AmqpConsumers"]


class AmqpConsumers:
    """The per-queue consumers on ``link``'s consume channel (see the module docstring)."""

    def __init__(self, link: AmqpLink) -> None:
        self._link = link
        self.generation = 0
        """Bumped with every new (or lost) consume channel."""
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._buffers: dict[str, deque[Pending]] = {}
        self.unsettled: set[int] = set()
        """Tags of this channel's deliveries not yet settled, buffered or handed out."""

    def next(self, queue: str, deadline: float) -> Pending | None:
        """The next message of ``queue``, or None once ``time.monotonic()`` passes ``deadline``.

        pika errors propagate (the caller runs this inside ``AmqpLink.run``).
        """
        while True:
            if not self._link.consumer().is_open:
                # closed by the broker (e.g. an unknown delivery tag): it requeued that
                # channel's deliveries, so start over on a fresh one
                self._link.recover_channels()
            if queue not in self._consumers:
                self._start(queue)
            buffer = self._buffers[queue]
            if buffer:
                return buffer.popleft()
            remaining = deadline - time.monotonic()
            # at least one pass even when the time is up: deliveries may be in flight
            self._link.connection().process_data_events(time_limit=max(0.0, remaining))
            arrived = self._buffers.get(queue)
            if remaining <= 0 and not arrived and queue in self._consumers:
                return None

    def take_ready(self, queue: str, count: int) -> list[Pending]:
        """Up to ``count`` more messages of ``queue`` that are already here, without waiting.

        One non-blocking pass over the socket first picks up what the broker already sent.
        """
        buffer = self._buffers.get(queue)
        if buffer is None or count < 1:
            return []
        if len(buffer) < count:
            self._link.connection().process_data_events(time_limit=0)
            buffer = self._buffers.get(queue, deque())
        return [buffer.popleft() for _ in range(min(count, len(buffer)))]

    def settled(self, tags: Iterable[int]) -> None:
        """These tags of the current channel were acked or rejected."""
        self.unsettled.difference_update(tags)

    def _start(self, queue: str) -> None:
        # a passive declare on the publish channel: a 404 closes that channel, not the
        # consume channel whose unsettled deliveries the broker would requeue
        self._link.publisher().queue_declare(queue=queue, passive=True)
        self._buffers.setdefault(queue, deque())
        self._consumers[queue] = self._link.consumer().basic_consume(
            queue, functools.partial(self._on_message, queue), auto_ack=False
        )

    def _on_message(
        self,
        queue: str,
        channel: pika.adapters.blocking_connection.BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        pending = Pending(
            method.delivery_tag, method.redelivered, properties.headers, body, properties.user_id
        )
        buffer = self._buffers.get(queue)
        if buffer is None:  # consumer released meanwhile: give the message back now
            channel.basic_reject(method.delivery_tag, requeue=True)
        else:
            buffer.append(pending)
            self.unsettled.add(method.delivery_tag)

    def on_broker_cancel(self, frame: pika.frame.Method) -> None:
        """The broker cancelled a consumer: forget it (its queue was deleted under us)."""
        # get() will find out with a passive declare
        tag = frame.method.consumer_tag
        for queue, consumer_tag in list(self._consumers.items()):
            if consumer_tag == tag:
                del self._consumers[queue]

    def reset(self) -> None:
        """The consume channel was replaced or lost: its consumers and tags are gone."""
        self.generation += 1
        self._consumers.clear()
        self._buffers.clear()
        self.unsettled.clear()

    def release(self, queue: str) -> None:
        """Cancel our consumer of ``queue`` and requeue what it buffered, in order."""
        buffer = self._buffers.pop(queue, deque())
        tag = self._consumers.pop(queue, None)
        channel = self._link.current_consumer
        if channel is None or not channel.is_open:
            return  # the broker requeued everything when the channel closed
        # reject before cancelling: the queue has them back before cancel-ok arrives
        for pending in buffer:
            channel.basic_reject(pending.tag, requeue=True)
            self.unsettled.discard(pending.tag)
        if tag is not None:
            channel.basic_cancel(tag)

    def release_all(self) -> None:
        """Release every consumer (see :meth:`release`)."""
        for queue in list(self._consumers):
            self.release(queue)
