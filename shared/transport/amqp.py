"""RabbitMQ transport over pika's ``BlockingConnection``.

Delivery guarantees:

- Exchanges and queues are durable, messages persistent (``delivery_mode=2``), and every
  publish is ``mandatory`` and waits for its publisher confirm, so ``publish`` returning
  means the broker holds the message (one round trip per message; about 1.5k msg/s).
- Consumers ack manually. ``get`` runs one ``basic_consume`` consumer per queue with a
  ``prefetch`` window: up to ``prefetch`` unsettled deliveries per queue, counting those
  buffered here but not yet returned by ``get``. Buffered deliveries are requeued when
  the queue is purged or deleted through this transport and when the transport closes.
- ``reject(requeue=False)`` republishes the message (confirmed) to the dead-letter
  exchange with ``x-original-queue`` and ``x-reject-reason`` headers, then acks it. A
  crash in between leaves a duplicate dead letter, never a lost message. Queues also
  carry ``x-dead-letter-exchange``, so what the broker dead-letters by itself (e.g. a
  message rejected by a foreign client) lands in the same queue; its
  ``x-first-death-queue``/``-reason`` headers are exposed under the same two names.

Threads: one thread owns the connection, the one that created the transport (pika's
``BlockingConnection`` is not thread-safe). Every method must be called on it, except
``Delivery.ack``/``Delivery.reject``: called from any other thread they are handed to the
owner with ``connection.add_callback_threadsafe`` and take effect the next time the owner
runs ``get`` or ``process_events``. Such a cross-thread settlement returns at once; if it
fails later (the connection went away), the failure is logged and the broker delivers
the message again. The owner must therefore keep calling ``process_events`` (which also
answers heartbeats) while another thread trains::

    delivery = transport.get(queue, timeout_s=5.0)        # owner thread
    future = pool.submit(train_then_ack, delivery)          # worker acks when done
    while not future.done():
        transport.process_events(0.5)                       # heartbeats and the ack

Connection loss: ``declare``, ``publish``, ``get``, ``purge``, ``delete_queue`` and
``process_events`` reconnect with exponential backoff (``reconnect_attempts`` tries,
``reconnect_base_delay_s`` doubling up to ``reconnect_max_delay_s``), declare again the
topology of earlier ``declare`` calls and retry. When the budget is spent they raise
:class:`~shared.errors.TransportUnavailable` naming the URL with its password redacted.
Deliveries taken before a reconnect can no longer be settled (``TransportClosed``); the
broker delivers them again. A publish retried after a reconnect may duplicate a message
whose confirm was lost: consumers are idempotent (DESIGN §3).

pika exceptions never leave this module: they become :mod:`shared.errors` types.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import pika
import pika.exceptions

from shared.errors import (
    AccessRefused,
    ConfigError,
    TransportClosed,
    TransportError,
    TransportUnavailable,
)
from shared.security.tls import client_context, split_tls_query
from shared.transport.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEFAULT_MAX_MESSAGE_BYTES,
    EXCHANGE_KINDS,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REJECT_REASON,
    ExchangeSpec,
    QueueSpec,
    check_message,
    dead_letter_queue_spec,
)

__all__ = ["AmqpDelivery", "AmqpTransport", "redact_url"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_MAX_RECONNECT_CYCLES = 3  # per operation: a broker that drops us again at once is down
_BROKER_DEATH_HEADERS = {
    HEADER_ORIGINAL_QUEUE: "x-first-death-queue",
    HEADER_REJECT_REASON: "x-first-death-reason",
}


_ACCESS_REFUSED = 403
_PRECONDITION_FAILED = 406


def _refusal(op: str, e: pika.exceptions.ChannelClosedByBroker) -> TransportError:
    """The typed error of a broker refusal: permissions and forged user_id are AccessRefused."""
    text = f"{op}: broker refused ({e.reply_code} {e.reply_text})"
    if e.reply_code == _ACCESS_REFUSED or (
        e.reply_code == _PRECONDITION_FAILED and "user_id" in str(e.reply_text)
    ):
        return AccessRefused(text)
    return TransportError(text)


def _connect_failure(e: Exception, tls: bool) -> str:
    """Why a connection attempt failed, in words an operator can act on."""
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed: {e}"
    if isinstance(e, pika.exceptions.IncompatibleProtocolError | pika.exceptions.StreamLostError):
        # with TLS 1.3 a refused client certificate only shows as the broker hanging up
        hint = (
            "was the client certificate refused (tls_cert_file)?"
            if tls
            else "is this a TLS port (amqps://)?"
        )
        return f"{type(e).__name__}: the broker closed the connection; {hint}"
    return type(e).__name__


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _text_headers(raw: Mapping[str, object] | None) -> dict[str, str]:
    """AMQP header table -> ``str -> str`` (nested tables such as ``x-death`` are left out)."""
    headers: dict[str, str] = {}
    for key, value in (raw or {}).items():
        if isinstance(value, str):
            headers[key] = value
        elif isinstance(value, bytes):
            headers[key] = value.decode("utf-8", "replace")
        elif isinstance(value, int | float):  # e.g. x-delivery-count of quorum queues
            headers[key] = str(value)
    for ours, broker in _BROKER_DEATH_HEADERS.items():
        if ours not in headers and broker in headers:
            headers[ours] = headers[broker]
    return headers


@dataclass(frozen=True, slots=True)
class _Pending:
    """A message the broker pushed to one of our consumers, not yet returned by get()."""

    tag: int
    redelivered: bool
    raw_headers: dict[str, object] | None
    body: bytes
    user_id: str | None = None


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
        self, transport: AmqpTransport, queue: str, pending: _Pending, generation: int
    ) -> None:
        self.body: bytes = pending.body
        self.headers: Mapping[str, str] = _text_headers(pending.raw_headers)
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

    def _settle(self, *, requeue: bool | None, reason: str) -> None:
        # requeue=None means ack
        with self._lock:
            if self._settled:
                raise TransportError(f"delivery from {self.queue!r} was already settled")
            self._settled = True
        try:
            if threading.get_ident() == self._transport._owner:
                self._transport._settle(self, requeue, reason)
            else:
                self._transport._settle_threadsafe(self, requeue, reason)
        except BaseException:
            with self._lock:
                self._settled = False  # nothing happened: the caller may try again
            raise


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
        self._url = redact_url(url)
        plain_url, tls = split_tls_query(url, ("amqps",))
        try:
            self._params = pika.URLParameters(plain_url)
            self._params.heartbeat = heartbeat_s
            self._params.blocked_connection_timeout = blocked_timeout_s
            self._params.connection_attempts = 1  # the backoff below is ours
            self._params.client_properties = {"connection_name": connection_name}
            # stamped on every publish as user_id; RabbitMQ refuses any other name
            self.user: str = str(self._params.credentials.username)
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"invalid AMQP URL {self._url}: {e}") from None
        self._tls = tls is not None
        if tls is not None:
            # pika's own amqps context knows neither our CA nor a client certificate; the
            # host name is verified against the URL's host
            self._params.ssl_options = pika.SSLOptions(client_context(tls), self._params.host)
        self._prefetch = prefetch
        self._max_message_bytes = max_message_bytes
        self._attempts = reconnect_attempts
        self._base_delay_s = reconnect_base_delay_s
        self._max_delay_s = reconnect_max_delay_s
        self._dlx = dead_letter_exchange
        self._dlq = dead_letter_queue
        self._owner = threading.get_ident()
        self._closed = False
        self._conn: pika.BlockingConnection | None = None
        self._pub: pika.adapters.blocking_connection.BlockingChannel | None = None
        self._con: pika.adapters.blocking_connection.BlockingChannel | None = None
        self._generation = 0  # bumped with every new consume channel
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._buffers: dict[str, deque[_Pending]] = {}
        self._exchanges: dict[str, ExchangeSpec] = {}  # topology to declare again on reconnect
        self._queues: dict[str, QueueSpec] = {}
        self.reconnect_count = 0
        """Successful reconnections after a lost connection (for tests and metrics)."""
        self._connected_once = False
        self._connect()

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
        self._run("declare", lambda: self._declare(exchange_specs, queue_specs))
        self._exchanges.update((ex.name, ex) for ex in exchange_specs)
        self._queues.update((q.name, q) for q in queue_specs)

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

    def process_events(self, time_s: float = 0.0) -> None:
        """Serve the connection for ``time_s`` seconds: heartbeats, cross-thread acks.

        Raises:
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        deadline = time.monotonic() + max(0.0, time_s)

        def serve() -> None:
            while True:
                self._connection().process_data_events(
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
            self._release_consumer(queue)
            frame = self._publisher().queue_purge(queue)
            return int(frame.method.message_count)

        return self._run("purge", op)

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` and its messages; it is no longer declared on reconnect.

        Raises:
            TransportUnavailable: the broker could not be reached within the retry budget.
        """

        def op() -> None:
            self._release_consumer(queue)
            self._publisher().queue_delete(queue)

        self._run("delete_queue", op)
        self._queues.pop(queue, None)

    def delete_exchange(self, exchange: str) -> None:
        """Delete ``exchange`` and the bindings to it (not part of ``Transport``).

        Raises:
            TransportUnavailable: the broker could not be reached within the retry budget.
        """
        self._run("delete_exchange", lambda: self._publisher().exchange_delete(exchange))
        self._exchanges.pop(exchange, None)
        for name, spec in self._queues.items():
            kept = tuple(b for b in spec.bindings if b[0] != exchange)
            self._queues[name] = replace(spec, bindings=kept)

    def dead_letters(self) -> str:
        """Name of this transport's dead-letter queue."""
        return self._dlq

    def close(self) -> None:
        """Requeue buffered deliveries and close the connection; idempotent.

        Unsettled deliveries go back to their queues (the broker does that for a closed
        channel) and come again with ``redelivered=True``.

        Raises:
            TransportError: called from a thread other than the owner.
        """
        if self._closed:
            return
        self._check_owner()
        try:
            if self._conn is not None and self._conn.is_open:
                # run acks other threads scheduled before close(), so they are not lost
                self._conn.process_data_events(time_limit=0)
            for queue in list(self._consumers):
                self._release_consumer(queue)
        except pika.exceptions.AMQPError as e:
            logger.debug("transport: close: could not release consumers: %r", e)
        self._closed = True
        self._drop_connection()

    def __enter__(self) -> AmqpTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AmqpTransport({self._url!r})"

    # ------------------------------------------------------------------ operations

    def _declare(self, exchanges: Iterable[ExchangeSpec], queues: Iterable[QueueSpec]) -> None:
        channel = self._publisher()
        for ex in exchanges:
            channel.exchange_declare(exchange=ex.name, exchange_type=ex.kind, durable=True)
        for spec in queues:
            arguments: dict[str, object] = {}
            if spec.quorum:
                arguments["x-queue-type"] = "quorum"
            if spec.dead_letter:
                arguments["x-dead-letter-exchange"] = self._dlx
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
            self._publisher().basic_publish(
                exchange, routing_key, body, properties=properties, mandatory=True
            )
        except pika.exceptions.UnroutableError:
            raise TransportError(
                f"unroutable message: exchange={exchange!r} routing_key={routing_key!r}"
            ) from None
        except pika.exceptions.NackError:
            raise TransportError(f"broker refused the message for exchange={exchange!r}") from None

    def _get(self, queue: str, deadline: float) -> AmqpDelivery | None:
        while True:
            if not self._consumer().is_open:
                # closed by the broker (e.g. an unknown delivery tag): it requeued that
                # channel's deliveries, so start over on a fresh one
                self._recover_channels()
            if queue not in self._consumers:
                self._start_consumer(queue)
            buffer = self._buffers[queue]
            if buffer:
                return AmqpDelivery(self, queue, buffer.popleft(), self._generation)
            remaining = deadline - time.monotonic()
            # at least one pass even when the time is up: deliveries may be in flight
            self._connection().process_data_events(time_limit=max(0.0, remaining))
            arrived = self._buffers.get(queue)
            if remaining <= 0 and not arrived and queue in self._consumers:
                return None

    def _start_consumer(self, queue: str) -> None:
        # a passive declare on the publish channel: a 404 closes that channel, not the
        # consume channel whose unsettled deliveries the broker would requeue
        self._publisher().queue_declare(queue=queue, passive=True)
        self._buffers.setdefault(queue, deque())
        self._consumers[queue] = self._consumer().basic_consume(
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
        pending = _Pending(
            method.delivery_tag, method.redelivered, properties.headers, body, properties.user_id
        )
        buffer = self._buffers.get(queue)
        if buffer is None:  # consumer released meanwhile: give the message back now
            channel.basic_reject(method.delivery_tag, requeue=True)
        else:
            buffer.append(pending)

    def _on_broker_cancel(self, frame: pika.frame.Method) -> None:
        # the queue was deleted under us; get() will find out with a passive declare
        tag = frame.method.consumer_tag
        for queue, consumer_tag in list(self._consumers.items()):
            if consumer_tag == tag:
                del self._consumers[queue]

    def _release_consumer(self, queue: str) -> None:
        """Cancel our consumer of ``queue`` and requeue what it buffered, in order."""
        buffer = self._buffers.pop(queue, deque())
        tag = self._consumers.pop(queue, None)
        channel = self._con
        if channel is None or not channel.is_open:
            return  # the broker requeued everything when the channel closed
        # reject before cancelling: the queue has them back before cancel-ok arrives
        for pending in buffer:
            channel.basic_reject(pending.tag, requeue=True)
        if tag is not None:
            channel.basic_cancel(tag)

    def _settle(self, delivery: AmqpDelivery, requeue: bool | None, reason: str) -> None:
        """Ack/reject on the owner thread (``requeue=None`` acks)."""
        if self._closed:
            raise TransportClosed(f"delivery from {delivery.queue!r}: transport is closed")
        channel = self._con
        if delivery._generation != self._generation or channel is None or not channel.is_open:
            raise TransportClosed(
                f"delivery from {delivery.queue!r} belongs to a closed channel;"
                " the broker will deliver it again"
            )
        try:
            if requeue is None:
                channel.basic_ack(delivery._tag)
            elif requeue or not self._dead_letters_from(delivery.queue):
                channel.basic_reject(delivery._tag, requeue=requeue)
            else:
                self._dead_letter(delivery, reason)
                channel.basic_ack(delivery._tag)
        except pika.exceptions.ChannelClosedByBroker as e:
            self._recover_channels()
            raise _refusal("settle", e) from None
        except pika.exceptions.AMQPError as e:
            raise TransportClosed(f"settle: connection lost ({type(e).__name__})") from None

    def _dead_letters_from(self, queue: str) -> bool:
        spec = self._queues.get(queue)
        return spec.dead_letter if spec is not None else queue != self._dlq

    def _dead_letter(self, delivery: AmqpDelivery, reason: str) -> None:
        headers = dict(delivery._raw_headers or {})
        headers[HEADER_ORIGINAL_QUEUE] = delivery.queue
        if reason:
            headers[HEADER_REJECT_REASON] = reason
        self._publish(self._dlx, delivery.queue, delivery.body, headers)

    def _settle_threadsafe(self, delivery: AmqpDelivery, requeue: bool | None, reason: str) -> None:
        conn = self._conn  # one read: the owner may swap it while reconnecting
        if self._closed or conn is None or delivery._generation != self._generation:
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

    # ------------------------------------------------------------------ connection

    def _run(self, op: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the connection; reconnect and retry it when the connection drops."""
        if self._closed:
            raise TransportClosed(f"{op}: transport to {self._url} is closed")
        self._check_owner()
        for cycle in range(1, _MAX_RECONNECT_CYCLES + 2):
            try:
                if self._conn is None:  # lost earlier, or an earlier reconnect gave up
                    self._connect()
                return fn()
            except pika.exceptions.ChannelClosedByBroker as e:
                # a refusal (404 NOT_FOUND, 406 PRECONDITION_FAILED, 403): not transient
                self._recover_channels()
                raise _refusal(op, e) from None
            except pika.exceptions.AMQPError as e:
                if self._conn is not None and self._conn.is_open:
                    self._recover_channels()
                    raise TransportError(f"{op}: {type(e).__name__}: {e}") from None
                self._drop_connection()
                if cycle > _MAX_RECONNECT_CYCLES:
                    break
                logger.warning(
                    "transport: %s: connection to %s lost (%s); reconnecting (%d/%d)",
                    op,
                    self._url,
                    type(e).__name__,
                    cycle,
                    _MAX_RECONNECT_CYCLES,
                )
        raise TransportUnavailable(f"{op}: the connection to {self._url} keeps dropping")

    def _connect(self) -> None:
        """Open connection and channels, declare the topology; back off between attempts."""
        delay = self._base_delay_s
        for attempt in range(1, self._attempts + 1):
            try:
                self._open()
                if self._connected_once:
                    self.reconnect_count += 1
                    logger.info("transport: reconnected to %s", self._url)
                self._connected_once = True
                return
            except pika.exceptions.ChannelClosedByBroker as e:
                self._drop_connection()
                raise TransportError(
                    f"connect: broker refused the topology ({e.reply_code} {e.reply_text})"
                ) from None
            except (pika.exceptions.AMQPError, ssl.SSLError) as e:
                # pika hands a failed TLS handshake over as the ssl error itself
                self._drop_connection()
                logger.warning(
                    "transport: connect to %s failed (%d/%d): %s",
                    self._url,
                    attempt,
                    self._attempts,
                    _connect_failure(e, self._tls),
                )
                if attempt == self._attempts:
                    raise TransportUnavailable(
                        f"cannot connect to {self._url} after {attempt} attempts"
                        f" ({_connect_failure(e, self._tls)})"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, self._max_delay_s)

    def _open(self) -> None:
        self._conn = pika.BlockingConnection(self._params)
        self._open_channels()
        # the dead-letter queue must exist before anything is rejected into it
        try:
            self._declare(
                [ExchangeSpec(self._dlx, "fanout")],
                [dead_letter_queue_spec(self._dlq, self._dlx)],
            )
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != _ACCESS_REFUSED:
                raise
            # a least-privilege user (a worker) may not declare them: whoever provisioned
            # the federation did (shared.security.roles)
            logger.debug("transport: %s may not declare the dead-letter topology", self.user)
            self._open_channels()
        self._declare(self._exchanges.values(), self._queues.values())

    def _open_channels(self) -> None:
        conn = self._connection()
        if self._pub is None or not self._pub.is_open:
            self._pub = conn.channel()
            self._pub.confirm_delivery()
        if self._con is None or not self._con.is_open:
            self._con = conn.channel()
            self._con.basic_qos(prefetch_count=self._prefetch)
            self._con.add_on_cancel_callback(self._on_broker_cancel)
            self._generation += 1  # tags of the old channel mean nothing on this one
            self._consumers.clear()
            self._buffers.clear()

    def _recover_channels(self) -> None:
        """Reopen whichever channel the broker closed (the connection is still up)."""
        try:
            self._open_channels()
        except pika.exceptions.AMQPError as e:
            logger.warning("transport: reopening channels failed (%s)", type(e).__name__)
            self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn, self._pub, self._con = self._conn, None, None, None
        self._generation += 1
        self._consumers.clear()
        self._buffers.clear()
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except pika.exceptions.AMQPError as e:
                logger.debug("transport: close failed: %r", e)

    def _connection(self) -> pika.BlockingConnection:
        if self._conn is None:
            raise pika.exceptions.ConnectionWrongStateError("not connected")
        return self._conn

    def _publisher(self) -> pika.adapters.blocking_connection.BlockingChannel:
        if self._pub is None:
            raise pika.exceptions.ConnectionWrongStateError("not connected")
        return self._pub

    def _consumer(self) -> pika.adapters.blocking_connection.BlockingChannel:
        if self._con is None:
            raise pika.exceptions.ConnectionWrongStateError("not connected")
        return self._con

    def _check_owner(self) -> None:
        if threading.get_ident() != self._owner:
            raise TransportError(
                "AmqpTransport is confined to the thread that created it;"
                " only Delivery.ack/reject may be called from other threads"
            )
