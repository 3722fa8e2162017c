"""Message transport: one small interface, a RabbitMQ and an in-process implementation.

Only a composition root picks the implementation, from a URL::

    transport = open_transport(settings.transport_url, prefetch=4)

Everything else receives a :class:`Transport` and codes against
:mod:`shared.transport.base`.
"""

from __future__ import annotations

from typing import TypedDict, Unpack

from shared.errors import ConfigError
from shared.transport.amqp import AmqpDelivery, AmqpTransport, redact_url
from shared.transport.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEFAULT_MAX_MESSAGE_BYTES,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REJECT_REASON,
    Delivery,
    ExchangeSpec,
    QueueSpec,
    Transport,
)
from shared.transport.memory import InMemoryDelivery, InMemoryTransport

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HEADER_ORIGINAL_QUEUE",
    "HEADER_REJECT_REASON",
    "AmqpDelivery",
    "AmqpTransport",
    "Delivery",
    "ExchangeSpec",
    "InMemoryDelivery",
    "InMemoryTransport",
    "QueueSpec",
    "Transport",
    "TransportOptions",
    "open_transport",
]


class TransportOptions(TypedDict, total=False):
    """Keyword options of :func:`open_transport` (see ``AmqpTransport`` for each).

    ``memory://`` uses ``prefetch``, ``max_message_bytes`` and the dead-letter names and
    ignores the connection options, which mean nothing in one process.
    """

    prefetch: int
    heartbeat_s: int
    max_message_bytes: int
    reconnect_attempts: int
    reconnect_base_delay_s: float
    reconnect_max_delay_s: float
    blocked_timeout_s: float
    dead_letter_exchange: str
    dead_letter_queue: str
    connection_name: str


def open_transport(url: str, **opts: Unpack[TransportOptions]) -> Transport:
    """Open the transport a URL names.

    Args:
        url: ``memory://`` (a fresh in-process broker; share it between simulated
            processes with ``InMemoryTransport.connect()``) or
            ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS).
        **opts: see :class:`TransportOptions`.

    Returns:
        A connected transport; the caller closes it.

    Raises:
        ConfigError: an unknown scheme or an invalid option.
        TransportUnavailable: the broker could not be reached within the retry budget.
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return InMemoryTransport(
            prefetch=opts.get("prefetch", 1),
            max_message_bytes=opts.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
            dead_letter_exchange=opts.get("dead_letter_exchange", DEAD_LETTER_EXCHANGE),
            dead_letter_queue=opts.get("dead_letter_queue", DEAD_LETTER_QUEUE),
        )
    if scheme in ("amqp", "amqps"):
        return AmqpTransport(url, **opts)
    raise ConfigError(f"unknown transport URL scheme in {redact_url(url)!r}")
