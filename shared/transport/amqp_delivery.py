"""The delivery of the RabbitMQ transport, and how it is settled from any thread.

Owns :class:`AmqpDelivery`: a message taken by ``AmqpTransport.get`` and its one-time
settlement. The transport's connection belongs to one thread (see
:mod:`shared.transport.amqp_connection`); ``ack``/``reject`` are the exception: called
from any other thread they are handed to the owner with
``connection.add_callback_threadsafe`` and take effect the next time the owner runs
``get`` or ``process_events``. Such a cross-thread settlement returns at once; if it
fails later (the connection went away), the failure is logged and the broker delivers
the message again. The owner must therefore keep calling ``process_events`` (which also
answers heartbeats) while another thread trains::

    delivery = transport.get(queue, timeout_s=5.0)        # owner thread
    future = pool.submit(train_then_ack, delivery)          # worker acks when done
    while not future.done():
        transport.process_events(0.5)                       # heartbeats and the ack

A delivery remembers the consume-channel generation it came from: delivery tags are
valid on one channel only, so after a reconnect it can no longer be settled
(``TransportClosed``) and the broker delivers it again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.errors import TransportError
from shared.transport.amqp_support import Pending, text_headers

if TYPE_CHECKING:
    from shared.transport.amqp import AmqpTransport

__all__ = ["AmqpDelivery"]


class AmqpDelivery:
    """A message taken from a RabbitMQ queue; settle it with ``ack`` or ``reject``.

    Settling from a thread other than the transport's owner is scheduled on the owner
    (see the module docstring).
    """

    __slots__ = (
        "_generation",
        "_lock",
        "_raw_headers",
        "_settled",
        "_tag",
        "_transport",
        "body",
        "headers",
        "queue",
        "redelivered",
        "user_id",
    )

    def __init__(
        self, transport: AmqpTransport, queue: str, pending: Pending, generation: int
    ) -> None:
        self.body: bytes = pending.body
        self.headers: Mapping[str, str] = text_headers(pending.raw_headers)
        self.redelivered: bool = pending.redelivered
        self.queue: str = queue
        self.user_id: str | None = pending.user_id  # checked by the broker: the sender
        self._transport = transport
        self._tag = pending.tag
        self._raw_headers = pending.raw_headers  # republished as-is when dead-lettered
        self._generation = generation  # delivery tags are valid on one channel only
        self._settled = False
        self._lock = threading.Lock()  # ack() may race with reject() from another thread

    def ack(self) -> None:
        """Acknowledge the message (it is removed from its queue).

        Raises:
            TransportError: already settled.
            TransportClosed: the channel the delivery came from is gone (after a
                reconnect or close); the broker delivers the message again.
        """
        self._settle(requeue=None, reason="")

    def reject(self, *, requeue: bool, reason: str = "") -> None:
        """Requeue the message or dead-letter it (see ``Delivery.reject``).

        Raises:
            TransportError: already settled, or the dead-letter publish failed (the
                delivery then stays unsettled).
            TransportClosed: the channel the delivery came from is gone.
        """
        self._settle(requeue=requeue, reason=reason)

    def _claim(self) -> bool:
        """Mark the delivery settled; False when it already was."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True

    def _unclaim(self) -> None:
        """Nothing happened after all: the delivery may be settled again."""
        with self._lock:
            self._settled = False

    def _settle(self, *, requeue: bool | None, reason: str) -> None:
        # requeue=None means ack
        if not self._claim():
            raise TransportError(f"delivery from {self.queue!r} was already settled")
        try:
            if self._transport._on_owner_thread():
                self._transport._settle(self, requeue, reason)
            else:
                self._transport._settle_threadsafe(self, requeue, reason)
        except BaseException:
            self._unclaim()  # nothing happened: the caller may try again
            raise
