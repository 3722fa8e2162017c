"""The topology of the RabbitMQ transport: what it declared, to declare again on reconnect.

Owns :class:`AmqpTopology`: the exchanges and queues earlier ``declare`` calls named
(minus those deleted since), their translation into durable AMQP declarations with
``x-`` queue arguments, and the dead-letter exchange and queue every fresh connection
declares first, so that nothing is ever rejected into a missing queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

import pika
import pika.exceptions

from shared.transport.amqp_connection import AmqpLink
from shared.transport.amqp_support import ACCESS_REFUSED
from shared.transport.base import ExchangeSpec, QueueSpec, dead_letter_queue_spec

__all__ = ["AmqpTopology"]

logger = logging.getLogger(__name__)


class AmqpTopology:
    """The recorded topology of one transport (see the module docstring).

    Args:
        dead_letter_exchange: fanout exchange rejected messages go through.
        dead_letter_queue: queue that collects them.
    """

    def __init__(self, dead_letter_exchange: str, dead_letter_queue: str) -> None:
        self.dlx = dead_letter_exchange
        self.dlq = dead_letter_queue
        self._exchanges: dict[str, ExchangeSpec] = {}
        self._queues: dict[str, QueueSpec] = {}

    def declare(
        self,
        link: AmqpLink,
        exchanges: Iterable[ExchangeSpec],
        queues: Iterable[QueueSpec],
    ) -> None:
        """Declare ``exchanges``, then ``queues`` and bindings, on the publish channel."""
        _declare_specs(link.publisher(), exchanges, queues, self.dlx)

    def record(self, exchanges: Iterable[ExchangeSpec], queues: Iterable[QueueSpec]) -> None:
        """Remember declared specs (a later spec of the same name replaces the earlier)."""
        self._exchanges.update((ex.name, ex) for ex in exchanges)
        self._queues.update((q.name, q) for q in queues)

    def forget_queue(self, queue: str) -> None:
        """``queue`` was deleted: no longer declare it."""
        self._queues.pop(queue, None)

    def forget_exchange(self, exchange: str) -> None:
        """``exchange`` was deleted: no longer declare it nor the bindings to it."""
        self._exchanges.pop(exchange, None)
        for name, spec in self._queues.items():
            kept = tuple(b for b in spec.bindings if b[0] != exchange)
            self._queues[name] = replace(spec, bindings=kept)

    def dead_letters_from(self, queue: str) -> bool:
        """Whether a message rejected from ``queue`` goes to the dead-letter queue."""
        spec = self._queues.get(queue)
        return spec.dead_letter if spec is not None else queue != self.dlq

    def redeclare(self, link: AmqpLink) -> None:
        """On a fresh connection: declare the dead-letter and the recorded topology."""
        # the dead-letter queue must exist before anything is rejected into it
        try:
            self.declare(
                link,
                [ExchangeSpec(self.dlx, "fanout")],
                [dead_letter_queue_spec(self.dlq, self.dlx)],
            )
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != ACCESS_REFUSED:
                raise
            # a least-privilege user (a worker) may not declare them: whoever provisioned
            # the federation did (shared.security.roles)
            logger.debug("transport: %s may not declare the dead-letter topology", link.user)
            link.open_channels()
        self.declare(link, self._exchanges.values(), self._queues.values())


def _declare_specs(
    channel: pika.adapters.blocking_connection.BlockingChannel,
    exchanges: Iterable[ExchangeSpec],
    queues: Iterable[QueueSpec],
    dead_letter_exchange: str,
) -> None:
    """Declare durable ``exchanges``, then ``queues`` and their bindings, on ``channel``."""
    for ex in exchanges:
        channel.exchange_declare(exchange=ex.name, exchange_type=ex.kind, durable=True)
    for spec in queues:
        arguments: dict[str, object] = {}
        if spec.quorum:
            arguments["x-queue-type"] = "quorum"
        if spec.dead_letter:
            arguments["x-dead-letter-exchange"] = dead_letter_exchange
        if spec.expires_s is not None:
            arguments["x-expires"] = max(1, int(spec.expires_s * 1000))
        if spec.max_length is not None:
            arguments["x-max-length"] = spec.max_length
            arguments["x-overflow"] = "reject-publish" if spec.reject_overflow else "drop-head"
        if spec.message_ttl_s is not None:
            arguments["x-message-ttl"] = max(1, int(spec.message_ttl_s * 1000))
        channel.queue_declare(queue=spec.name, durable=True, arguments=arguments or None)
        for exchange, routing_key in spec.bindings:
            channel.queue_bind(queue=spec.name, exchange=exchange, routing_key=routing_key)
