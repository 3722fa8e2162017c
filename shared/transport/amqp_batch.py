"""Batched acks of the RabbitMQ transport: one ``basic_ack(multiple=True)`` where it is safe.

``basic_ack(tag, multiple=True)`` acks every unsettled delivery of the channel up to
``tag``, not only those the caller meant. :func:`ack_plan` therefore reaches only as far
as no other unsettled tag of the channel lies below (one buffered for ``get``, one handed
out and not yet settled, one a worker thread is about to reject) and acks the rest of the
batch one by one. :func:`ack_batch` applies it to the deliveries of the current channel
generation; those of an earlier channel are never acked (their tags mean nothing on the
new channel; the broker delivers them again).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import pika
import pika.exceptions

from shared.errors import TransportClosed, TransportError
from shared.transport.amqp_connection import AmqpLink
from shared.transport.amqp_consumers import AmqpConsumers
from shared.transport.amqp_delivery import AmqpDelivery
from shared.transport.amqp_support import refusal

__all__ = ["ack_batch", "ack_plan"]


def ack_plan(tags: Collection[int], unsettled: Iterable[int]) -> tuple[int | None, list[int]]:
    """How to ack ``tags``: (the tag of one multiple ack or None, the tags to ack singly).

    Args:
        tags: the delivery tags to ack (distinct).
        unsettled: every unsettled tag of the channel (``tags`` among them or not).
    """
    ordered = sorted(tags)
    taken = set(ordered)
    others = [t for t in unsettled if t not in taken]
    bound = min(others) if others else None
    below = [t for t in ordered if bound is None or t < bound]
    singles = ordered[len(below) :]
    if len(below) > 1:
        return below[-1], singles
    return None, below + singles


def ack_batch(
    link: AmqpLink, consumers: AmqpConsumers, batch: list[AmqpDelivery], *, closed: bool
) -> None:
    """Ack ``batch`` (owner thread): all of it, or on an error none (see the module docstring).

    Raises:
        TransportError: a delivery was already settled; nothing acked.
        TransportClosed: the transport is closed, the connection dropped, or some
            deliveries belong to a channel that is gone (the others were acked).
    """
    claimed = _claim(batch)
    channel = link.current_consumer
    if closed or channel is None or not channel.is_open:
        _unclaim(claimed)
        raise TransportClosed("ack_many: the channel of these deliveries is gone")
    live = [d for d in claimed if d._generation == consumers.generation]
    stale = [d for d in claimed if d._generation != consumers.generation]
    try:
        _ack_tags(link, consumers, channel, [d._tag for d in live])
    except BaseException:
        _unclaim(claimed)
        raise
    _unclaim(stale)
    if stale:
        raise TransportClosed(
            f"ack_many: {len(stale)} deliveries belong to a closed channel;"
            " the broker will deliver them again"
        )


def _ack_tags(
    link: AmqpLink,
    consumers: AmqpConsumers,
    channel: pika.adapters.blocking_connection.BlockingChannel,
    tags: list[int],
) -> None:
    multiple, singles = ack_plan(tags, consumers.unsettled)
    try:
        if multiple is not None:
            channel.basic_ack(multiple, multiple=True)
        for tag in singles:
            channel.basic_ack(tag)
    except pika.exceptions.ChannelClosedByBroker as e:
        link.recover_channels()
        raise refusal("ack_many", e) from None
    except pika.exceptions.AMQPError as e:
        raise TransportClosed(f"ack_many: connection lost ({type(e).__name__})") from None
    consumers.settled(tags)


def _claim(batch: list[AmqpDelivery]) -> list[AmqpDelivery]:
    """Mark every delivery settled, or none when one already was (TransportError)."""
    claimed: list[AmqpDelivery] = []
    for delivery in batch:
        if not delivery._claim():
            _unclaim(claimed)
            raise TransportError(f"ack_many: a {delivery.queue!r} delivery was already settled")
        claimed.append(delivery)
    return claimed


def _unclaim(deliveries: Iterable[AmqpDelivery]) -> None:
    for delivery in deliveries:
        delivery._unclaim()
