"""The transport interface: topology specs, ``Delivery`` and ``Transport`` protocols.

Two implementations share these semantics and one contract test suite
(``tests/contract/test_transport_contract.py``):
:class:`shared.transport.memory.InMemoryTransport` and
:class:`shared.transport.amqp.AmqpTransport`.

Semantics every implementation keeps:

- Bodies are ``bytes`` (anything else raises ``TypeError``); headers are ``str -> str``.
- Publishing is persistent and returns only once the broker holds the message; a message
  no queue would receive raises :class:`~shared.errors.TransportError` (it is never
  silently dropped). A body over ``max_message_bytes`` raises
  :class:`~shared.errors.MessageTooLarge` before anything is sent.
- Queues are FIFO. Delivery is at-least-once: a delivery must be settled exactly once with
  ``ack()`` or ``reject()``; a delivery left unsettled when its transport closes goes back
  to the queue and is delivered again with ``redelivered=True``.
- ``reject(requeue=False, reason=...)`` moves the message to the transport's dead-letter
  queue (``dead_letters()``), whose deliveries carry the headers ``x-original-queue`` and,
  when a reason was given, ``x-reject-reason``. Queues declared with
  ``dead_letter=False`` drop rejected messages instead.
- ``get`` on a queue that does not exist raises :class:`~shared.errors.TransportError`.
- ``get_many`` takes what a consumer's prefetch window already holds, so a service can
  handle a batch and settle it with one ``ack_many`` (on AMQP one
  ``basic_ack(multiple=True)`` wherever that acks nothing else). A delivery is acked
  only by the caller, only once its effect is durable; ``ack_many`` never acks a
  delivery it was not given, however the tags lie.
- Every publish carries the sender: the connection's user (AMQP ``user_id``, which
  RabbitMQ checks against the authenticated user; in memory, the name a handle was opened
  with). Deliveries expose it as ``user_id`` (None when the message carries none, which
  proves nothing). An operation the user has no permission for raises
  :class:`~shared.errors.AccessRefused`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.errors import MessageTooLarge

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_MAX_LENGTH",
    "DEAD_LETTER_QUEUE",
    "DEAD_LETTER_TTL_S",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "EXCHANGE_KINDS",
    "HEADER_ORIGINAL_QUEUE",
    "HEADER_REJECT_REASON",
    "Delivery",
    "ExchangeSpec",
    "QueueSpec",
    "Transport",
    "batch_size",
    "check_message",
    "dead_letter_queue_spec",
]

DEAD_LETTER_EXCHANGE = "scarlet.dlx"
"""Default name of the exchange rejected messages are routed through."""

DEAD_LETTER_QUEUE = "scarlet.dead-letters"
"""Default name of the queue that collects rejected messages (bounded, see below).

Named ``scarlet.dead-letters`` since it is bounded: the earlier unbounded
``scarlet.dead-letter`` cannot be redeclared with limits (RabbitMQ refuses other
arguments for an existing queue); an operator deletes it once it is drained."""

DEAD_LETTER_MAX_LENGTH = 100_000
"""Dead letters kept at most; past it the oldest are dropped (a flood cannot fill the broker)."""

DEAD_LETTER_TTL_S = 7 * 24 * 3600.0
"""Dead letters older than a week are dropped."""

HEADER_ORIGINAL_QUEUE = "x-original-queue"
"""Dead-letter header: the queue the message was rejected from."""

HEADER_REJECT_REASON = "x-reject-reason"
"""Dead-letter header: the reason given to ``reject`` (absent when none was given)."""

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Client-side body size limit (16 MiB), the same whatever the broker's own default is."""

EXCHANGE_KINDS = frozenset({"direct", "fanout"})
"""Exchange kinds both implementations support."""


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange to declare.

    Attributes:
        name: exchange name; must not be empty (``""`` is the default exchange, which
            always exists).
        kind: ``"direct"`` (routes on an exact routing key) or ``"fanout"`` (every bound
            queue gets a copy).
    """

    name: str
    kind: str = "direct"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue to declare, with its bindings.

    Attributes:
        name: queue name.
        bindings: ``(exchange, routing_key)`` pairs; the exchanges must be declared before
            or in the same ``declare`` call.
        quorum: a replicated quorum queue on AMQP (``x-queue-type=quorum``); ignored in
            memory. Quorum queues put a requeued message at the tail, classic queues at
            its original position.
        dead_letter: rejected (``requeue=False``) messages go to the dead-letter queue;
            when False they are dropped.
        expires_s: delete the queue after this long unused: no consumer, no get (AMQP
            ``x-expires``; ignored in memory). For per-process queues, such as a worker's
            reply queue, that a killed process cannot delete itself, and per-run queues
            that outlive their run.
        max_length: keep at most this many ready messages (AMQP ``x-max-length``).
        reject_overflow: past ``max_length`` refuse the publish (the publisher gets a
            :class:`~shared.errors.TransportError`; AMQP ``x-overflow=reject-publish``)
            instead of dropping the oldest message (``drop-head``).
        message_ttl_s: drop messages ready for longer than this (AMQP ``x-message-ttl``;
            classic queues only).
    """

    name: str
    bindings: tuple[tuple[str, str], ...] = ()
    quorum: bool = False
    dead_letter: bool = True
    expires_s: float | None = None
    max_length: int | None = None
    reject_overflow: bool = False
    message_ttl_s: float | None = None


def dead_letter_queue_spec(queue: str, exchange: str) -> QueueSpec:
    """The bounded dead-letter queue every transport declares beside its exchange."""
    return QueueSpec(
        queue,
        ((exchange, ""),),
        dead_letter=False,
        max_length=DEAD_LETTER_MAX_LENGTH,
        message_ttl_s=DEAD_LETTER_TTL_S,
    )


class Delivery(Protocol):
    """One message handed to a consumer; settle it exactly once.

    Attributes:
        body: the message body.
        headers: ``str -> str`` application headers (plus ``x-original-queue`` and
            ``x-reject-reason`` on dead letters).
        redelivered: True when the message may have been delivered before (it was
            requeued, or its previous consumer went away without settling it).
        queue: the queue it was taken from.
        user_id: the broker user that published it (None: unknown, proves nothing).
    """

    body: bytes
    headers: Mapping[str, str]
    redelivered: bool
    queue: str
    user_id: str | None

    def ack(self) -> None:
        """Remove the message for good; call only once its effect is durable.

        Raises:
            TransportError: the delivery was already settled.
            TransportClosed: the connection it came from is gone; the broker will deliver
                the message again.
        """
        ...

    def reject(self, *, requeue: bool, reason: str = "") -> None:
        """Give the message back (``requeue=True``) or dead-letter it.

        Args:
            requeue: True puts it back in its queue (``redelivered=True`` next time);
                False moves it to the dead-letter queue (or drops it when its queue was
                declared with ``dead_letter=False``).
            reason: stored in the dead letter's ``x-reject-reason`` header.

        Raises:
            TransportError: the delivery was already settled.
            TransportClosed: the connection it came from is gone; the broker will deliver
                the message again.
        """
        ...


class Transport(Protocol):
    """A message broker client: durable topology, confirmed publishes, manual acks."""

    def declare(
        self, exchanges: Iterable[ExchangeSpec] = (), queues: Iterable[QueueSpec] = ()
    ) -> None:
        """Create exchanges, then queues and their bindings; idempotent.

        Raises:
            TransportError: an existing exchange or queue has different settings, a binding
                names an unknown exchange, or an exchange kind is unsupported.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        ...

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish one persistent message and wait until the broker confirmed it.

        Args:
            exchange: exchange name; ``""`` is the default exchange, where ``routing_key``
                is the queue name.
            routing_key: routing key (ignored by fanout exchanges).
            body: message body.
            headers: ``str -> str`` application headers.

        Raises:
            TypeError: ``body`` is not ``bytes`` or a header is not ``str -> str``.
            MessageTooLarge: ``body`` is over ``max_message_bytes``.
            TransportError: the exchange does not exist, no queue would receive the message,
                or the broker refused it.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        ...

    def get(self, queue: str, *, timeout_s: float) -> Delivery | None:
        """Return the next delivery of ``queue``, or None once ``timeout_s`` passed.

        Raises:
            TransportError: the queue does not exist.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        ...

    def get_many(self, queue: str, *, max_count: int, timeout_s: float) -> Sequence[Delivery]:
        """Up to ``max_count`` deliveries of ``queue``, in queue order; empty on timeout.

        Waits up to ``timeout_s`` for the first; the others are only those already at
        hand (within the prefetch window), never waited for.

        Raises:
            ValueError: ``max_count`` < 1.
            TransportError: the queue does not exist.
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        ...

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries`` (taken from this transport, on its owner thread) together.

        Exactly the given deliveries are acked; call it only once all their effects are
        durable. Settle any other delivery of the batch (``reject``) before, not after.

        Raises:
            TransportError: a delivery was already settled, or is not from this
                transport; nothing was acked.
            TransportClosed: some deliveries belong to a channel that is gone (the
                others were acked); the broker delivers those again.
        """
        ...

    def process_events(self, time_s: float = 0.0) -> None:
        """Serve the connection for ``time_s`` seconds (heartbeats, scheduled acks).

        Raises:
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        ...

    def purge(self, queue: str) -> int:
        """Drop every ready message of ``queue``; return how many there were.

        Unsettled deliveries are not ready and survive a purge.

        Raises:
            TransportError: the queue does not exist.
        """
        ...

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` and its messages; a queue that does not exist is fine."""
        ...

    def dead_letters(self) -> str:
        """Name of this transport's dead-letter queue (consumable with ``get``)."""
        ...

    def close(self) -> None:
        """Close the connection; unsettled deliveries go back to their queues. Idempotent."""
        ...


def batch_size(prefetch: int) -> int:
    """Deliveries a service handles and acks together in a window of ``prefetch``.

    Half the window: while one half is being handled and recorded, the broker already
    sends the next, so the consumer never waits a round trip for work.
    """
    return max(1, prefetch // 2)


def check_message(body: object, headers: Mapping[str, str] | None, max_bytes: int) -> None:
    """Validate a message before it is published (shared by both implementations).

    Args:
        body: must be ``bytes`` (``bytearray`` and ``memoryview`` are refused too: the
            transport keeps the object, which must not change after publishing).
        headers: None, or a mapping of ``str`` to ``str``.
        max_bytes: largest accepted body length.

    Raises:
        TypeError: wrong body or header types.
        MessageTooLarge: ``len(body) > max_bytes``.
    """
    if not isinstance(body, bytes):
        raise TypeError(f"message body must be bytes, not {type(body).__name__}")
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"message body of {len(body)} bytes is over the {max_bytes}-byte limit"
        )
    if headers is None:
        return
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"headers must map str to str, got {type(key).__name__} -> {type(value).__name__}"
            )
