"""The RabbitMQ connection of one transport: its two channels, reconnects, owner thread.

Owns :class:`AmqpLink`: the pika ``BlockingConnection`` with its publish channel
(publisher confirms on) and its consume channel (``basic_qos`` prefetch), the backoff of
a (re)connect, the reconnect cycles around one operation, and the owner-thread check.
What a transport must redo on a fresh connection or consume channel (declare its
topology again, forget its consumers, bump its channel generation) it hands over as
callbacks; the link knows nothing of queues or deliveries.

Threads: one thread owns the connection, the one that created the link (pika's
``BlockingConnection`` is not thread-safe). Every transport method must be called on it,
except ``Delivery.ack``/``Delivery.reject`` (see :mod:`shared.transport.amqp_delivery`).

Connection loss: :meth:`AmqpLink.run` reconnects with exponential backoff
(``reconnect_attempts`` tries, ``reconnect_base_delay_s`` doubling up to
``reconnect_max_delay_s``), lets the transport declare again the topology of earlier
``declare`` calls, and retries the operation, for at most three reconnect cycles per
operation. When the budget is spent it raises :class:`~shared.errors.TransportUnavailable`
naming the URL with its password redacted. Deliveries taken before a reconnect can no
longer be settled (``TransportClosed``); the broker delivers them again. A publish
retried after a reconnect may duplicate a message whose confirm was lost: consumers are
idempotent (DESIGN §3). A channel the broker closed (a refusal) is reopened on the same
connection and the refusal raised as a :mod:`shared.errors` type, never retried.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pika
import pika.exceptions

from shared.errors import ConfigError, TransportError, TransportUnavailable
from shared.security.tls import client_context, split_tls_query
from shared.transport.amqp_support import (
    MAX_RECONNECT_CYCLES,
    connect_failure,
    redact_url,
    refusal,
)

__all__ = ["AmqpLink"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class AmqpLink:
    """The connection and channels of one ``AmqpTransport`` (see the module docstring).

    Args:
        url: ``amqp://user:password@host:port/vhost`` with pika's URL query options.
        heartbeat_s: AMQP heartbeat interval in seconds (0 disables it).
        blocked_timeout_s: give up a connection the broker keeps blocked this long.
        connection_name: shown in the RabbitMQ management UI.
        prefetch: ``basic_qos`` window of the consume channel.
        attempts: connection attempts per (re)connect before giving up.
        base_delay_s: first backoff delay; doubles after each failed attempt.
        max_delay_s: cap on one backoff delay.
        on_open: called on every fresh connection, once its channels are open (declares
            the topology); a ``ChannelClosedByBroker`` it raises fails the connect.
        on_channel_reset: called whenever the consume channel is replaced or lost.
        on_cancel: the consume channel's callback for a consumer the broker cancelled.

    Raises:
        ConfigError: an invalid URL.
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat_s: int,
        blocked_timeout_s: float,
        connection_name: str,
        prefetch: int,
        attempts: int,
        base_delay_s: float,
        max_delay_s: float,
        on_open: Callable[[], None],
        on_channel_reset: Callable[[], None],
        on_cancel: Callable[[pika.frame.Method], None],
    ) -> None:
        self.url = redact_url(url)
        plain_url, tls = split_tls_query(url, ("amqps",))
        try:
            self._params = pika.URLParameters(plain_url)
            self._params.heartbeat = heartbeat_s
            self._params.blocked_connection_timeout = blocked_timeout_s
            self._params.connection_attempts = 1  # the backoff below is ours
            self._params.client_properties = {"connection_name": connection_name}
            self.user: str = str(self._params.credentials.username)
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"invalid AMQP URL {self.url}: {e}") from None
        self._tls = tls is not None
        if tls is not None:
            # pika's own amqps context knows neither our CA nor a client certificate; the
            # host name is verified against the URL's host
            self._params.ssl_options = pika.SSLOptions(client_context(tls), self._params.host)
        self._prefetch = prefetch
        self._attempts = attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._on_open = on_open
        self._on_channel_reset = on_channel_reset
        self._on_cancel = on_cancel
        self._owner = threading.get_ident()
        self._conn: pika.BlockingConnection | None = None
        self._pub: pika.adapters.blocking_connection.BlockingChannel | None = None
        self._con: pika.adapters.blocking_connection.BlockingChannel | None = None
        self.reconnect_count = 0
        """Successful reconnections after a lost connection."""
        self._connected_once = False

    def run(self, op: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the connection; reconnect and retry it when the connection drops.

        Raises:
            TransportError: not the owner thread, a broker refusal (``AccessRefused`` for
                permissions), or another AMQP error on a live connection.
            TransportUnavailable: the connection could not be (re)established or keeps
                dropping.
        """
        self.check_owner()
        for cycle in range(1, MAX_RECONNECT_CYCLES + 2):
            try:
                if self._conn is None:  # lost earlier, or an earlier reconnect gave up
                    self.connect()
                return fn()
            except pika.exceptions.ChannelClosedByBroker as e:
                # a refusal (404 NOT_FOUND, 406 PRECONDITION_FAILED, 403): not transient
                self.recover_channels()
                raise refusal(op, e) from None
            except pika.exceptions.AMQPError as e:
                if self._conn is not None and self._conn.is_open:
                    self.recover_channels()
                    raise TransportError(f"{op}: {type(e).__name__}: {e}") from None
                self.drop()
                if cycle > MAX_RECONNECT_CYCLES:
                    break
                logger.warning(
                    "transport: %s: connection to %s lost (%s); reconnecting (%d/%d)",
                    op,
                    self.url,
                    type(e).__name__,
                    cycle,
                    MAX_RECONNECT_CYCLES,
                )
        raise TransportUnavailable(f"{op}: the connection to {self.url} keeps dropping")

    def connect(self) -> None:
        """Open connection and channels, declare the topology; back off between attempts.

        Raises:
            TransportError: the broker refused the topology.
            TransportUnavailable: no attempt succeeded.
        """
        delay = self._base_delay_s
        for attempt in range(1, self._attempts + 1):
            try:
                self._open()
                if self._connected_once:
                    self.reconnect_count += 1
                    logger.info("transport: reconnected to %s", self.url)
                self._connected_once = True
                return
            except pika.exceptions.ChannelClosedByBroker as e:
                self.drop()
                raise TransportError(
                    f"connect: broker refused the topology ({e.reply_code} {e.reply_text})"
                ) from None
            except (pika.exceptions.AMQPError, ssl.SSLError) as e:
                # pika hands a failed TLS handshake over as the ssl error itself
                self.drop()
                logger.warning(
                    "transport: connect to %s failed (%d/%d): %s",
                    self.url,
                    attempt,
                    self._attempts,
                    connect_failure(e, self._tls),
                )
                if attempt == self._attempts:
                    raise TransportUnavailable(
                        f"cannot connect to {self.url} after {attempt} attempts"
                        f" ({connect_failure(e, self._tls)})"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, self._max_delay_s)

    def _open(self) -> None:
        self._conn = pika.BlockingConnection(self._params)
        self.open_channels()
        self._on_open()

    def open_channels(self) -> None:
        """Open whichever of the two channels is missing or closed."""
        conn = self.connection()
        if self._pub is None or not self._pub.is_open:
            self._pub = conn.channel()
            self._pub.confirm_delivery()
        if self._con is None or not self._con.is_open:
            self._con = conn.channel()
            self._con.basic_qos(prefetch_count=self._prefetch)
            self._con.add_on_cancel_callback(self._on_cancel)
            self._on_channel_reset()  # tags of the old channel mean nothing on this one

    def recover_channels(self) -> None:
        """Reopen whichever channel the broker closed (the connection is still up)."""
        try:
            self.open_channels()
        except pika.exceptions.AMQPError as e:
            logger.warning("transport: reopening channels failed (%s)", type(e).__name__)
            self.drop()

    def drop(self) -> None:
        """Forget the connection and its channels, closing it if it is still open."""
        conn, self._conn, self._pub, self._con = self._conn, None, None, None
        self._on_channel_reset()
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except pika.exceptions.AMQPError as e:
                logger.debug("transport: close failed: %r", e)

    @property
    def current_connection(self) -> pika.BlockingConnection | None:
        """The connection, or None while there is none (safe to read from any thread)."""
        return self._conn

    @property
    def current_consumer(self) -> pika.adapters.blocking_connection.BlockingChannel | None:
        """The consume channel, or None while there is none."""
        return self._con

    def connection(self) -> pika.BlockingConnection:
        """The connection; ``ConnectionWrongStateError`` (an AMQP error) when there is none."""
        if self._conn is None:
            raise pika.exceptions.ConnectionWrongStateError("not connected")
        return self._conn

    def publisher(self) -> pika.adapters.blocking_connection.BlockingChannel:
        """The publish channel; ``ConnectionWrongStateError`` when there is none."""
        if self._pub is None:
            raise pika.exceptions.ConnectionWrongStateError("not connected")
        return self._pub

    def consumer(self) -> pika.adapters.blocking_connection.BlockingChannel:
        """The consume channel; ``ConnectionWrongStateError`` when there is none."""
        if self._con is None:
            raise pika.exceptions.ConnectionWrongStateError("not connected")
        return self._con

    def on_owner_thread(self) -> bool:
        """Whether the calling thread is the one that owns the connection."""
        return threading.get_ident() == self._owner

    def check_owner(self) -> None:
        """Raise ``TransportError`` unless called on the owner thread."""
        if not self.on_owner_thread():
            raise TransportError(
                "AmqpTransport is confined to the thread that created it;"
                " only Delivery.ack/reject may be called from other threads"
            )
