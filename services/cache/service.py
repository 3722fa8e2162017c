"""The cache service: answers cache-sync RPCs from the federation store.

Workers never hold Redis credentials (DESIGN §4). One that is behind, restarted or
desynchronized publishes a :class:`~shared.protocol.cache_sync.CacheSyncRequest` to the
run's RPC queue; this service reads the global soft-label cache from the
:class:`~shared.state.base.FederationStore` (a full snapshot, or the changes since the
worker's version, falling back to a full snapshot when the change log no longer reaches
back) and publishes a :class:`~shared.protocol.cache_sync.CacheSyncResponse` to the
worker's reply queue with the header ``request-id``.

Per request, exactly one outcome (``CacheService.stats``):

- ``answered``: the reply was published (confirmed), then the request acked;
- ``invalid``: the request did not decode or names another run: dead-lettered;
- ``store_unavailable`` / ``store_error``: the store could not be read, or holds data
  this service cannot send (corrupt, another class count, too large): a reply with
  ``error`` set was published so the worker does not wait out its timeout, then the
  request acked;
- ``unroutable``: the reply queue does not exist (the worker is gone): dead-lettered;
- ``forged``: the sender (AMQP ``user_id``) is not a client of the run nor the pool:
  dead-lettered unanswered.

Broker outages (:class:`~shared.errors.TransportUnavailable`,
:class:`~shared.errors.TransportClosed`) propagate out of ``serve_once``; an unsettled
request is delivered again, and answering it twice is harmless (the worker discards stale
replies). ``serve_forever`` rides them out: a request whose channel went away is left to
its redelivery, a broker away past the reconnect budget is waited for with a capped
backoff.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from shared.errors import (
    DecodeError,
    MessageTooLarge,
    ProtocolError,
    StateError,
    StoreUnavailable,
    TransportClosed,
    TransportError,
    TransportUnavailable,
)
from shared.metrics import Metrics
from shared.protocol.cache_sync import (
    HEADER_REQUEST_ID,
    CacheSyncRequest,
    CacheSyncResponse,
    decode_sync_request,
    encode_sync_response,
    failed_response,
)
from shared.protocol.codec import DecodeLimits
from shared.protocol.routes import (
    cache_rpc_exchange,
    cache_rpc_queue,
    replies_exchange,
)
from shared.state.base import CacheSnapshot, FederationStore
from shared.transport.base import Delivery, ExchangeSpec, Transport
from shared.transport.topology import cache_rpc_queue_spec

__all__ = ["POLL_S", "CacheService"]

_OUTAGE_BACKOFF_MAX_S = 30.0  # longest wait for a broker that stays away

logger = logging.getLogger(__name__)

POLL_S = 0.5
"""Longest wait for a request in ``serve_forever`` before the stop flag is checked again."""

_REASON_CHARS = 200


class CacheService:
    """Serves cache-sync requests of one run from its federation store.

    Args:
        transport: a connected transport, used only from the thread that serves.
        store: the run's federation store.
        run_id: the run whose RPC queue this service consumes.
        limits: the run's decode limits (|P|, C, body size): requests are decoded with
            them, and a reply that would break them is replaced by an error reply.
        metrics: metric catalogue (a private registry when None): requests per outcome,
            the bytes of requests received and replies published (kind ``cache_sync``,
            also counted as overhead: DS-FL never needs them) and dead letters.
        requesters: which broker users (AMQP ``user_id``) may ask, e.g.
            ``Identities.requester_ok``; a request from anyone else is dead-lettered and
            counted ``forged``. None: anyone may (``verify_senders`` off).
        max_batch: requests taken from the prefetch window at once; their replies are
            each published (confirmed) before the answered ones are acked together.
    """

    def __init__(
        self,
        transport: Transport,
        store: FederationStore,
        run_id: str,
        limits: DecodeLimits,
        metrics: Metrics | None = None,
        requesters: Callable[[str | None], bool] | None = None,
        max_batch: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._max_batch = max_batch
        self.metrics = metrics or Metrics.create()
        self._requesters = requesters
        self._transport = transport
        self._store = store
        self._run_id = run_id
        self._limits = limits
        self._queue = cache_rpc_queue(run_id)
        self._replies = replies_exchange(run_id)
        self.stats: collections.Counter[str] = collections.Counter()
        """Requests per outcome: answered, invalid, store_unavailable, store_error,
        unroutable."""

    @property
    def queue(self) -> str:
        """The RPC queue this service consumes."""
        return self._queue

    def declare(self) -> None:
        """Declare the RPC queue (durable, rejected requests dead-lettered); idempotent.

        Raises:
            TransportError: the queue exists with other settings.
            TransportUnavailable: the broker cannot be reached.
        """
        rpc, replies = cache_rpc_exchange(self._run_id), replies_exchange(self._run_id)
        self._transport.declare(
            [ExchangeSpec(rpc), ExchangeSpec(replies)],
            [cache_rpc_queue_spec(self._run_id)],
        )

    def serve_once(self, timeout_s: float) -> bool:
        """Handle the requests at hand (up to ``max_batch``), waiting ``timeout_s`` for one.

        Each answered request is acked only after its reply was confirmed; the answered
        ones of a batch are acked together, the refused ones dead-lettered as they come.

        Returns:
            True when a request was handled (whatever its outcome), False on timeout.

        Raises:
            TransportUnavailable: the broker cannot be reached (the requests taken and
                not yet acked are delivered again).
            TransportClosed: the connection went away under the requests.
        """
        deliveries = self._transport.get_many(
            self._queue, max_count=self._max_batch, timeout_s=timeout_s
        )
        answered: list[tuple[Delivery, str]] = []
        try:
            for delivery in deliveries:
                outcome = self._handle(delivery)
                if outcome:
                    answered.append((delivery, outcome))
        except BaseException:
            # the replies published so far are confirmed: ack them, but let the error
            # that ended the batch be the one raised
            with contextlib.suppress(TransportError):
                self._ack(answered)
            raise
        self._ack(answered)
        return bool(deliveries)

    def _ack(self, answered: list[tuple[Delivery, str]]) -> None:
        if not answered:
            return
        self._transport.ack_many([delivery for delivery, _ in answered])
        for _, outcome in answered:
            self._count(outcome)

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Serve requests until ``stop`` is set (checked at least every :data:`POLL_S`).

        Broker outages do not end it (see the module docstring); store errors are
        answered per request.
        """
        logger.info("sync: run=%s serving cache-sync requests on %s", self._run_id, self._queue)
        outages = 0
        while stop is None or not stop.is_set():
            try:
                self.serve_once(POLL_S)
                outages = 0
            except TransportClosed as e:
                # the request's channel went away before its ack: the broker requeued it
                # and answering it twice is harmless
                logger.warning("sync: run=%s request comes again: %s", self._run_id, e)
            except TransportUnavailable as e:
                # past the transport's reconnect budget: keep waiting, never exit for it
                outages += 1
                wait_s = min(_OUTAGE_BACKOFF_MAX_S, 2.0 ** (outages - 1))
                logger.warning(
                    "sync: run=%s broker unavailable (%s); retry in %.0f s", self._run_id, e, wait_s
                )
                if stop is not None:
                    stop.wait(wait_s)
                else:
                    time.sleep(wait_s)
        logger.info("sync: run=%s stopped; requests %s", self._run_id, dict(self.stats))

    # ------------------------------------------------------------------ one request

    def _handle(self, delivery: Delivery) -> str:
        """Answer or refuse one request; returns the outcome to count once it is acked.

        "" when the request was dead-lettered (and counted) instead.
        """
        started = time.perf_counter()
        self._count_bytes("up", len(delivery.body))
        if self._requesters is not None and not self._requesters(delivery.user_id):
            logger.warning(
                "sync: run=%s dead-lettering a request sent by %r", self._run_id, delivery.user_id
            )
            delivery.reject(requeue=False, reason=f"forged: request sent by {delivery.user_id!r}")
            self._count("forged", dead_lettered=True)
            return ""
        try:
            request = decode_sync_request(delivery.body, self._limits)
            if request.run_id != self._run_id:
                raise DecodeError(f"run: request for run {request.run_id!r}")
        except ProtocolError as e:
            logger.warning("sync: run=%s dead-lettering invalid request: %s", self._run_id, e)
            delivery.reject(requeue=False, reason=str(e)[:_REASON_CHARS])
            self._count("invalid", dead_lettered=True)
            return ""
        response, outcome = self._answer(request)
        try:
            response, outcome = self._publish_reply(request, response, outcome)
        except (TransportUnavailable, TransportClosed):
            raise
        except TransportError as e:
            logger.warning(
                "sync: run=%s client=%s cannot reply to %s, dead-lettering the request: %s",
                self._run_id,
                request.client_id,
                request.reply_to,
                e,
            )
            delivery.reject(requeue=False, reason=f"reply failed: {e}"[:_REASON_CHARS])
            self._count("unroutable", dead_lettered=True)
            return ""
        logger.info(
            "sync: run=%s client=%s %s since=%s -> version=%d full=%s entries=%d cleared=%d "
            "in %.3f s",
            self._run_id,
            request.client_id,
            outcome,
            request.since_version,
            response.version,
            response.full,
            response.indices.size,
            response.cleared.size,
            time.perf_counter() - started,
        )
        return outcome  # acked by serve_once: the reply is confirmed

    def _count(self, outcome: str, *, dead_lettered: bool = False) -> None:
        self.stats[outcome] += 1
        self.metrics.cache_sync_requests_total.labels(outcome=outcome).inc()
        if dead_lettered:
            self.metrics.dead_letters_total.labels(kind="cache_sync").inc()

    def _count_bytes(self, direction: str, size: int) -> None:
        self.metrics.bytes_total.labels(direction=direction, kind="cache_sync").inc(size)
        self.metrics.bytes_overhead_total.labels(reason="cache_sync").inc(size)

    def _answer(self, request: CacheSyncRequest) -> tuple[CacheSyncResponse, str]:
        """The response to ``request`` and its outcome name."""
        try:
            snapshot = self._read(request)
        except StoreUnavailable as e:
            return self._failure(request, "store_unavailable", f"store unavailable: {e}")
        except StateError as e:
            return self._failure(request, "store_error", f"store error: {e}")
        problem = self._check(snapshot)
        if problem:
            return self._failure(request, "store_error", problem)
        labels = snapshot.labels
        if labels.size == 0:
            # before the first commit the store does not know C: send (0, C)
            labels = np.empty((0, self._limits.num_classes), dtype=np.float32)
        response = CacheSyncResponse(
            run_id=self._run_id,
            request_id=request.request_id,
            version=snapshot.version,
            digest=snapshot.digest,
            full=snapshot.full,
            indices=snapshot.indices,
            written=snapshot.written,
            labels=labels,
            cleared=snapshot.cleared,
        )
        return response, "answered"

    def _read(self, request: CacheSyncRequest) -> CacheSnapshot:
        since = request.since_version
        if since is None:
            return self._store.cache_snapshot()
        current = self._store.cache_version()
        if since > current:
            # the replica comes from another history (a reset store): start it over
            logger.warning(
                "sync: run=%s client=%s asks for changes since %d, ahead of version %d; "
                "sending a full snapshot",
                self._run_id,
                request.client_id,
                since,
                current,
            )
            return self._store.cache_snapshot()
        changes = self._store.cache_changes_since(since)
        return changes if changes is not None else self._store.cache_snapshot()

    def _check(self, snapshot: CacheSnapshot) -> str:
        """Why ``snapshot`` cannot go to a worker under our limits ("" when it can)."""
        classes = snapshot.labels.shape[1] if snapshot.labels.ndim == 2 else -1
        if snapshot.indices.size and classes != self._limits.num_classes:
            return (
                f"store error: the cache holds {classes} classes, the service is configured "
                f"for {self._limits.num_classes}"
            )
        for name, idx in (("indices", snapshot.indices), ("cleared", snapshot.cleared)):
            if idx.size and int(idx.max()) >= self._limits.public_size:
                return (
                    f"store error: {name} reach {int(idx.max())}, outside the public set "
                    f"of {self._limits.public_size}"
                )
        return ""

    def _failure(
        self, request: CacheSyncRequest, outcome: str, error: str
    ) -> tuple[CacheSyncResponse, str]:
        logger.error(
            "sync: run=%s client=%s cannot answer: %s", self._run_id, request.client_id, error
        )
        return (
            failed_response(self._run_id, request.request_id, error, self._limits.num_classes),
            outcome,
        )

    def _publish_reply(
        self, request: CacheSyncRequest, response: CacheSyncResponse, outcome: str
    ) -> tuple[CacheSyncResponse, str]:
        """Publish ``response`` (an error reply instead when it is too large to send).

        Returns:
            What was published and its outcome name.

        Raises:
            TransportError: the reply queue does not exist or the broker refused it.
        """
        headers = {HEADER_REQUEST_ID: request.request_id}
        body = encode_sync_response(response)
        if len(body) <= self._limits.max_body_bytes:
            try:
                self._transport.publish(self._replies, request.reply_to, body, headers)
                self._count_bytes("down", len(body))
                return response, outcome
            except MessageTooLarge:
                pass  # the transport's own limit is lower than the decode limit
        response, outcome = self._failure(
            request,
            "store_error",
            f"store error: the reply of {len(body)} bytes is over the message size limit",
        )
        body = encode_sync_response(response)
        self._transport.publish(self._replies, request.reply_to, body, headers)
        self._count_bytes("down", len(body))
        return response, outcome
