"""One task delivery → one published upload, in two halves.

:meth:`TaskHandler.prepare` runs on the thread that owns the broker connection: it decodes
the task, deduplicates redeliveries and restores the distillation targets (resyncing the
cache replica over RPC when it is out of step). :meth:`TaskHandler.learn` is the long,
pure-compute half (distil, train, predict) and may run on another thread.
:meth:`TaskHandler.finish` publishes the upload (confirmed), saves the client's state and
only then acks the task: at-least-once, with the aggregator dropping duplicates.

Vocabulary: to *resync* is to bring a client's cache replica back to the global cache
(fetch, install, verify the digest). :class:`Resync` is what the handler needs for that;
:class:`~services.worker.resync.CacheResync` is the one implementation, over the cache
service's RPC. Whether a resynced replica still fits the task is decided here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.worker.admission import Fit, judge_task
from shared.arrays import LabelArray
from shared.cache_policy import ClientCache
from shared.errors import (
    CacheDesync,
    ProtocolError,
    TransportClosed,
    TransportError,
    TransportUnavailable,
)
from shared.metrics import Metrics
from shared.protocol.codec import DecodeLimits, decode_task, encode_upload
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.protocol.routes import UPLOAD_KEY, uploads_exchange
from shared.rounds.client import ClientRuntime
from shared.security.roles import Identities
from shared.transport.base import Delivery, Transport

__all__ = ["Job", "Resync", "RuntimeProvider", "TaskHandler"]

logger = logging.getLogger(__name__)


class RuntimeProvider(Protocol):
    """Where client runtimes come from (pinned: one in memory; pool: a state store)."""

    def get(self, client_id: int) -> ClientRuntime | None:
        """The runtime of ``client_id``, or None if this worker does not serve it."""

    def save(self, runtime: ClientRuntime) -> None:
        """Persist the runtime after a task (model, replica, progress)."""


class Resync(Protocol):
    """Brings a client's cache replica back in step with the global cache."""

    def resync(self, cache: ClientCache, known_version: int | None) -> int:
        """Install the global cache (changes since ``known_version``, or all when None).

        Returns:
            The cache version the replica now holds.

        Raises:
            CacheDesync: the replica could not be verified or the cache is unreachable.
            TransportError: the request could not be sent or timed out.
        """


@dataclass
class Job:
    """A decoded task ready for :meth:`TaskHandler.learn`."""

    delivery: Delivery
    task: TrainTask
    runtime: ClientRuntime
    targets: LabelArray | None
    upload: SoftLabelUpload | None = None


class TaskHandler:
    """The worker's handling of task deliveries, shared by every worker mode.

    Args:
        provider: client runtimes.
        transport: to publish uploads on (owned by the calling thread).
        limits: decoder limits.
        resync: how a replica out of step is resynced (None: a desync requeues the task).
        metrics: metric catalogue.
        senders: when given, a task is taken only from the aggregator's broker user
            (AMQP ``user_id``); any other is dead-lettered and counted ``forged``, and
            the client's state is not touched. None: no sender check.
    """

    def __init__(
        self,
        provider: RuntimeProvider,
        transport: Transport,
        limits: DecodeLimits,
        resync: Resync | None = None,
        metrics: Metrics | None = None,
        senders: Identities | None = None,
    ) -> None:
        self.provider = provider
        self.transport = transport
        self.limits = limits
        self.resync = resync
        self.metrics = metrics or Metrics.create()
        self.senders = senders

    def handle(self, delivery: Delivery) -> SoftLabelUpload | None:
        """All three halves on the calling thread (the embedded simulation's path)."""
        job = self.prepare(delivery)
        if job is None:
            return None
        self.learn(job)
        return self.finish(job)

    def prepare(self, delivery: Delivery) -> Job | None:
        """Decode, deduplicate and restore; None when the delivery is already settled."""
        if self.senders is not None and not self.senders.task_sender_ok(delivery.user_id):
            # before decoding: nothing a forged task says may reach the client's state
            logger.warning("handle: dead-lettering a task sent by %r", delivery.user_id)
            delivery.reject(requeue=False, reason=f"forged: task sent by {delivery.user_id!r}")
            self._count("forged")
            self.metrics.dead_letters_total.labels(kind="task").inc()
            return None
        try:
            task = decode_task(delivery.body, self.limits)
        except ProtocolError as e:
            logger.warning("handle: dead-lettering undecodable task: %s", e)
            delivery.reject(requeue=False, reason=str(e)[:200])
            self._count("invalid")
            self.metrics.dead_letters_total.labels(kind="task").inc()
            return None
        runtime = self.provider.get(task.client_id)
        if runtime is None:
            logger.warning(
                "handle: round=%s client=%s is not served here", task.round, task.client_id
            )
            delivery.reject(requeue=False, reason=f"client {task.client_id} not served here")
            self._count("foreign")
            return None
        verdict = judge_task(task, runtime.config, runtime.completed_round)
        if verdict.fit is Fit.MISFIT:
            # before the replica is touched: a misfit must leave no trace in the state
            logger.warning(
                "handle: dead-lettering round=%s client=%s: %s",
                task.round,
                task.client_id,
                verdict.reason,
            )
            delivery.reject(requeue=False, reason=f"misfit: {verdict.reason}"[:200])
            self._count("misfit")
            self.metrics.dead_letters_total.labels(kind="task").inc()
            return None
        if verdict.fit is Fit.REDELIVERY:
            self._answer_again(delivery, task, runtime)
            return None
        try:
            targets = self._restore(task, runtime)
        except _Unrepairable as e:
            # the fresh snapshot cannot reproduce the targets either: requeueing would
            # loop forever, so the task goes to the dead letters and the round goes on
            logger.error(
                "handle: dead-lettering round=%s client=%s: %s", task.round, task.client_id, e
            )
            delivery.reject(requeue=False, reason="cache desync after resync")
            self._count("unrepairable")
            self.metrics.dead_letters_total.labels(kind="task").inc()
            return None
        except CacheDesync as e:
            logger.warning(
                "handle: round=%s client=%s cannot restore: %s", task.round, task.client_id, e
            )
            delivery.reject(requeue=True, reason="cache desync")
            self._count("desync")
            return None
        if targets is _STALE:
            delivery.ack()
            self._count("stale")
            return None
        assert targets is None or isinstance(targets, np.ndarray)
        return Job(delivery, task, runtime, targets)

    def learn(self, job: Job) -> None:
        """Distil, train and predict (safe to run on a thread of its own)."""
        job.upload = job.runtime.learn(job.task, job.targets)

    def finish(self, job: Job) -> SoftLabelUpload:
        """Publish the upload, save the client's state, ack the task."""
        assert job.upload is not None
        cfg = job.runtime.config
        body = encode_upload(job.upload, cfg.uplink_spec, public_size=cfg.public_size)
        runtime = job.runtime
        runtime.completed_round, runtime.last_upload = job.task.round, body
        self.provider.save(runtime)
        self._publish(job.task, body)
        job.delivery.ack()
        times = runtime.last_times
        for phase, seconds in (
            ("distill", times.distill),
            ("train", times.train),
            ("predict", times.predict),
        ):
            self.metrics.worker_phase_seconds.labels(phase=phase).observe(seconds)
        self._count("done")
        logger.info(
            "handle: round=%s client=%s uploaded %s bytes",
            job.task.round,
            job.task.client_id,
            len(body),
        )
        return job.upload

    def _restore(self, task: TrainTask, runtime: ClientRuntime) -> LabelArray | None | object:
        try:
            return runtime.restore_targets(task)
        except CacheDesync:
            if self.resync is None:
                raise
        # the replica is out of step (restarted worker, missed rounds): fetch the global
        # cache, then apply the task's catch-up and signals on top of it
        self.metrics.cache_resyncs_total.labels(kind="snapshot").inc()
        if runtime.cache is not None:
            try:
                version = self.resync.resync(runtime.cache, None)
            except (TransportUnavailable, TransportClosed):
                raise
            except TransportError as e:
                # e.g. the cache-RPC queue is at its bound: the task goes back and retries
                self.metrics.cache_resyncs_total.labels(kind="refused").inc()
                raise CacheDesync(f"resync refused: {e}") from e
            logger.info(
                "sync: round=%s client=%s replica reinstalled at cache version %s",
                task.round,
                runtime.client_id,
                version,
            )
            if version > task.cache_version:
                return _STALE  # the federation moved on past this task
        try:
            return runtime.restore_targets(task)
        except CacheDesync as e:
            raise _Unrepairable(f"{e} (after a resync from the cache service)") from e

    def _answer_again(self, delivery: Delivery, task: TrainTask, runtime: ClientRuntime) -> None:
        # a redelivered task: the upload was produced before; send the same bytes again
        if task.round == runtime.completed_round and runtime.last_upload:
            self._publish(task, runtime.last_upload)
        delivery.ack()
        self._count("redelivered")

    def _publish(self, task: TrainTask, body: bytes) -> None:
        self.transport.publish(uploads_exchange(task.run_id), UPLOAD_KEY, body, {"kind": "upload"})
        self.metrics.bytes_total.labels(direction="up", kind="upload").inc(len(body))

    def _count(self, outcome: str) -> None:
        self.metrics.worker_tasks_total.labels(outcome=outcome).inc()


_STALE = object()


class _Unrepairable(CacheDesync):
    """A desync that a fresh snapshot from the cache service did not repair."""
