"""The worker's consume loop: the broker connection's thread stays responsive while training.

One thread owns the connection (pika is not thread-safe): it takes a delivery, runs
:meth:`TaskHandler.prepare`, hands :meth:`TaskHandler.learn` to a second thread and keeps
processing broker events (heartbeats) until it is done, then runs
:meth:`TaskHandler.finish` itself.

Connection loss never ends the loop. The transport reconnects by itself; what it cannot
do is settle a delivery taken on the channel that went away (``TransportClosed``): the
broker has already put that task back in the queue, so the loop logs it and moves on.
The redelivery is then answered from the saved state (the same upload bytes again, see
:meth:`TaskHandler._answer_again`) or, when the task was not finished, done again. When
the broker stays away past the transport's reconnect budget (``TransportUnavailable``),
the loop waits with a capped exponential backoff and tries again until it is stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from services.worker.handler import Job, TaskHandler
from shared.errors import TransportClosed, TransportUnavailable
from shared.transport.base import Transport

__all__ = ["OUTAGE_BACKOFF_MAX_S", "WorkerLoop", "outage_backoff_s"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

OUTAGE_BACKOFF_MAX_S = 30.0
"""Longest wait between two tries to reach a broker that stays away."""


def outage_backoff_s(
    failures: int, *, base_s: float = 1.0, cap_s: float = OUTAGE_BACKOFF_MAX_S
) -> float:
    """The wait after ``failures`` consecutive outages (1, 2, 4, ... capped at ``cap_s``).

    Args:
        failures: consecutive ``TransportUnavailable`` so far (at least 1).
        base_s: the first wait.
        cap_s: the longest wait.

    Returns:
        Seconds to wait before the next try.
    """
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    return float(min(cap_s, base_s * 2.0 ** min(failures - 1, 30)))


class WorkerLoop:
    """Consume tasks; train on a second thread while this one keeps the connection alive.

    Args:
        handler: the task handler (its transport must be ``transport``).
        transport: owned by the calling thread.
        queue: the task queue (a pinned client's queue or the pool queue).
    """

    def __init__(self, handler: TaskHandler, transport: Transport, queue: str) -> None:
        self.handler = handler
        self.transport = transport
        self.queue = queue
        self.tasks_done = 0
        self.stale_settles = 0
        """Settles refused because the delivery's channel was gone (the broker requeued)."""
        self.outages = 0
        """Times the broker stayed away past the transport's reconnect budget."""

    def run(self, stop: threading.Event, max_tasks: int | None = None) -> None:
        """Serve until ``stop`` is set (or ``max_tasks`` tasks were handled)."""
        failures = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="learn") as pool:
            while not stop.is_set() and (max_tasks is None or self.tasks_done < max_tasks):
                try:
                    self._serve_one(pool)
                    failures = 0
                except TransportUnavailable as e:
                    failures += 1
                    self.outages += 1
                    wait_s = outage_backoff_s(failures)
                    logger.warning(
                        "worker: broker unavailable (%s); trying again in %.0f s", e, wait_s
                    )
                    stop.wait(wait_s)

    def _serve_one(self, pool: ThreadPoolExecutor) -> None:
        delivery = self.transport.get(self.queue, timeout_s=0.5)
        if delivery is None:
            return
        job = self._settling("prepare", lambda: self.handler.prepare(delivery))
        if job is None:
            return
        future = pool.submit(self.handler.learn, job)
        self._keep_alive(future)
        future.result()
        if self._settling("finish", lambda: self._finish(job)):
            self.tasks_done += 1

    def _finish(self, job: Job) -> bool:
        self.handler.finish(job)
        return True

    def _keep_alive(self, future: Future[None]) -> None:
        # heartbeats and broker callbacks keep flowing during minutes of training; a
        # broker that goes away meanwhile must not abandon the training thread
        while not future.done():
            try:
                self.transport.process_events(0.2)
            except TransportUnavailable as e:
                logger.warning("worker: broker unavailable while training (%s)", e)
                future.exception()  # wait for the result; finish() reconnects to publish

    def _settling(self, phase: str, fn: Callable[[], _T]) -> _T | None:
        """Run ``fn``; a settle on a delivery of a channel that went away is not fatal."""
        try:
            return fn()
        except TransportClosed as e:
            # the broker requeued the task with its channel: the redelivery is answered
            # from the saved state (same bytes) or done again
            self.stale_settles += 1
            logger.warning(
                "worker: %s: delivery no longer settleable (%s); it comes again", phase, e
            )
            return None
