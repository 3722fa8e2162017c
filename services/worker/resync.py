"""Worker side of the cache-sync RPC: fetch the global cache, install it, verify it.

Vocabulary: to *resync* is to bring a client's cache replica back to the global cache.
:class:`CacheResync` is the one implementation of the task handler's
:class:`~services.worker.handler.Resync`, and the only resync class: it resyncs through
the cache service, with :meth:`~CacheResync.fetch` and :meth:`~CacheResync.install` as
its two halves.

A worker holds no store credentials (DESIGN §4). When its replica is behind, was lost
in a restart, or fails a digest check, it asks the cache service over the broker::

    resync = CacheResync(transport, run_id, client_id, worker_id, limits, timeout_s=30)
    resync.declare()
    version = resync.resync(cache, known_version)   # changes since, or full when None

The request goes through ``cache_rpc_exchange(run)`` to ``cache_rpc_queue(run)``; the
reply comes back through ``replies_exchange(run)`` on this worker's
``reply_queue(run, worker_id)`` with the header ``request-id``. Replies to earlier
requests (a previous timeout, a redelivered request answered twice) are acked and
skipped. A replica is verified against the response's digest after every install; one
that does not match is emptied and never used silently.

Threads: every method runs on the thread that owns ``transport``. While waiting, the
transport is polled in short slices, so AMQP heartbeats keep flowing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from shared.cache_policy import NEVER, ClientCache
from shared.errors import (
    AccessRefused,
    CacheDesync,
    ProtocolError,
    TransportClosed,
    TransportError,
    TransportUnavailable,
)
from shared.protocol.cache_sync import (
    HEADER_REQUEST_ID,
    CacheSyncRequest,
    CacheSyncResponse,
    decode_sync_response,
    encode_sync_request,
)
from shared.protocol.codec import DecodeLimits
from shared.protocol.routes import (
    CACHE_RPC_KEY,
    cache_rpc_exchange,
    cache_rpc_queue,
    replies_exchange,
    reply_queue,
)
from shared.security.roles import Identities
from shared.transport.base import Delivery, ExchangeSpec, QueueSpec, Transport

__all__ = ["CacheResync"]


# a killed worker cannot delete its reply queue; the broker drops it after an idle hour
_REPLY_QUEUE_EXPIRES_S = 3600.0

logger = logging.getLogger(__name__)

_POLL_S = 0.25  # longest single wait on the reply queue
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_REASON_CHARS = 200


class CacheResync:
    """Resyncs a replica: fetches the global soft-label cache over RPC and installs it.

    Args:
        transport: a connected transport owned by the calling thread.
        run_id: the federation.
        client_id: the client whose replica this is (logs and requests).
        worker_id: names this worker's reply queue; unique among live workers of the
            run (1-128 characters of ``A-Za-z0-9_.-``, no leading ``_.-``).
        limits: the run's decode limits; replies are validated against them.
        timeout_s: how long :meth:`fetch` waits for the reply.
        senders: when given, a reply is taken only from the cache service's broker user
            (AMQP ``user_id``); any other is dead-lettered and skipped. None: no check.

    Raises:
        ValueError: an invalid ``worker_id`` or a non-positive ``timeout_s``.
    """

    def __init__(
        self,
        transport: Transport,
        run_id: str,
        client_id: int,
        worker_id: str,
        limits: DecodeLimits,
        timeout_s: float,
        senders: Identities | None = None,
    ) -> None:
        if not _WORKER_ID.fullmatch(worker_id):
            raise ValueError(f"invalid worker id {worker_id!r}: use 1-128 of A-Za-z0-9_.-")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._transport = transport
        self._run_id = run_id
        self._client_id = client_id
        self._limits = limits
        self._timeout_s = timeout_s
        self._senders = senders
        self.forged_replies = 0
        """Replies dead-lettered because they did not come from the cache service."""
        self.reply_queue = reply_queue(run_id, worker_id)
        """This worker's reply queue."""

    def declare(self) -> None:
        """Declare the reply queue (durable; undecodable replies dead-lettered).

        Raises:
            TransportError: the queue exists with other settings.
            TransportUnavailable: the broker cannot be reached.
        """
        # bound by its own name; the replies exchange is the aggregator's and the cache's
        # to declare (a worker's broker user may not)
        replies = replies_exchange(self._run_id)
        binding = ((replies, self.reply_queue),)
        with contextlib.suppress(AccessRefused):  # least privilege: the aggregator did
            self._transport.declare([ExchangeSpec(replies)])
        self._transport.declare(
            queues=[
                QueueSpec(
                    self.reply_queue, binding, dead_letter=True, expires_s=_REPLY_QUEUE_EXPIRES_S
                )
            ]
        )

    def fetch(self, since_version: int | None) -> CacheSyncResponse:
        """Ask the cache service for the cache and wait for the matching reply.

        Args:
            since_version: the version the replica holds (changes since it), or None for
                a full snapshot.

        Returns:
            The validated response (``error`` is always empty).

        Raises:
            TransportError: the request could not be published (no RPC queue: the
                cache service never ran for this run), or no reply came within
                ``timeout_s``.
            TransportUnavailable: the broker cannot be reached.
            CacheDesync: the service answered with an error (e.g. its store is down) or
                with a reply that does not decode; the replica cannot be repaired now.
        """
        request = CacheSyncRequest(
            run_id=self._run_id,
            client_id=self._client_id,
            request_id=uuid.uuid4().hex,
            since_version=since_version,
            reply_to=self.reply_queue,
        )
        self._publish(request)
        response = self._await_reply(request)
        if response.error:
            raise CacheDesync(
                f"sync: run={self._run_id} client={self._client_id} the cache service "
                f"could not answer: {response.error}"
            )
        return response

    def install(self, cache: ClientCache, response: CacheSyncResponse) -> None:
        """Install ``response`` into ``cache`` and verify the digest.

        A full snapshot replaces the replica; changes are applied on top of it (set
        ``indices``, empty ``cleared``).

        Raises:
            ValueError: the replica's shape is not (|P|, C) of the limits, or
                ``response`` is an error response; the replica is unchanged.
            CacheDesync: the replica's digest differs from ``response.digest`` (changes
                applied to a replica not at the version asked for, or a corrupt
                answer). The replica is then emptied, so it is never used silently.
        """
        expected = (self._limits.public_size, self._limits.num_classes)
        if tuple(cache.labels.shape) != expected or cache.written.shape != (expected[0],):
            raise ValueError(
                f"sync: replica of shape {tuple(cache.labels.shape)}, expected {expected}"
            )
        if response.error:
            raise ValueError("sync: cannot install an error response")
        if response.full:
            _reset(cache)
        cache.labels[response.indices] = response.labels
        cache.written[response.indices] = response.written
        cache.labels[response.cleared] = 0.0
        cache.written[response.cleared] = NEVER
        digest = cache.digest()
        if digest != response.digest:
            _reset(cache)
            raise CacheDesync(
                f"sync: run={self._run_id} client={self._client_id} replica digest "
                f"{digest[:12]} != {response.digest[:12]} after installing "
                f"{'a full snapshot' if response.full else 'changes'} of version "
                f"{response.version}; replica emptied"
            )

    def resync(self, cache: ClientCache, known_version: int | None) -> int:
        """Bring ``cache`` to the current global cache and verify it.

        Fetches the changes since ``known_version`` (a full snapshot when None) and
        installs them; when the digest then fails, retries once with a full snapshot.

        Returns:
            The cache version the replica now holds.

        Raises:
            CacheDesync: the replica could not be verified (it is left empty) or the
                service could not answer.
            TransportError: the request could not be sent or timed out (the replica is
                unchanged, or empty after a failed changes install).
        """
        response = self.fetch(known_version)
        try:
            self.install(cache, response)
        except CacheDesync as e:
            if response.full:
                raise
            logger.warning(
                "sync: run=%s client=%s changes since %s did not verify (%s); "
                "fetching a full snapshot",
                self._run_id,
                self._client_id,
                known_version,
                e,
            )
            response = self.fetch(None)
            self.install(cache, response)
        logger.info(
            "sync: run=%s client=%s replica at version %d (%s, %d entries, %d cleared)",
            self._run_id,
            self._client_id,
            response.version,
            "full" if response.full else f"changes since {known_version}",
            response.indices.size,
            response.cleared.size,
        )
        return response.version

    # ------------------------------------------------------------------ helpers

    def _publish(self, request: CacheSyncRequest) -> None:
        queue = cache_rpc_queue(self._run_id)
        try:
            self._transport.publish(
                cache_rpc_exchange(self._run_id),
                CACHE_RPC_KEY,
                encode_sync_request(request),
                {HEADER_REQUEST_ID: request.request_id},
            )
        except (TransportUnavailable, TransportClosed):
            raise
        except TransportError as e:
            raise TransportError(
                f"sync: run={self._run_id} client={self._client_id} cannot send the request "
                f"to {queue} (is the cache service running?): {e}"
            ) from e

    def _await_reply(self, request: CacheSyncRequest) -> CacheSyncResponse:
        deadline = time.monotonic() + self._timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            delivery = self._transport.get(self.reply_queue, timeout_s=min(_POLL_S, remaining))
            if delivery is None:
                continue
            if self._senders is not None and not self._senders.reply_sender_ok(delivery.user_id):
                logger.warning(
                    "sync: run=%s client=%s dead-lettering a reply sent by %r",
                    self._run_id,
                    self._client_id,
                    delivery.user_id,
                )
                delivery.reject(requeue=False, reason=f"forged: reply sent by {delivery.user_id!r}")
                self.forged_replies += 1
                continue
            if delivery.headers.get(HEADER_REQUEST_ID) != request.request_id:
                logger.info(
                    "sync: run=%s client=%s skipping a stale reply (request-id %s)",
                    self._run_id,
                    self._client_id,
                    delivery.headers.get(HEADER_REQUEST_ID),
                )
                delivery.ack()
                continue
            return self._decode(delivery, request)
        raise TransportError(
            f"sync: run={self._run_id} client={self._client_id} no reply from the cache "
            f"service within {self._timeout_s:g} s (is it running?)"
        )

    def _decode(self, delivery: Delivery, request: CacheSyncRequest) -> CacheSyncResponse:
        try:
            response = decode_sync_response(delivery.body, self._limits)
            if (response.run_id, response.request_id) != (request.run_id, request.request_id):
                raise ProtocolError(
                    f"reply for run {response.run_id!r} request {response.request_id} under "
                    f"request-id {request.request_id}"
                )
        except ProtocolError as e:
            delivery.reject(requeue=False, reason=str(e)[:_REASON_CHARS])
            raise CacheDesync(
                f"sync: run={self._run_id} client={self._client_id} invalid reply from the "
                f"cache service (dead-lettered): {e}"
            ) from e
        delivery.ack()
        return response


def _reset(cache: ClientCache) -> None:
    cache.labels.fill(0.0)
    cache.written.fill(NEVER)
