"""The worker's consume loop: the broker connection's thread stays responsive while training.

One thread owns the connection (pika is not thread-safe): it takes a delivery, runs
:meth:`TaskHandler.prepare`, hands :meth:`TaskHandler.learn` to a second thread and keeps
processing broker events (heartbeats) until it is done, then runs
:meth:`TaskHandler.finish` itself.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from services.worker.handler import TaskHandler
from shared.transport.base import Transport

__all__ = ["WorkerLoop"]


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

    def run(self, stop: threading.Event, max_tasks: int | None = None) -> None:
        """Serve until ``stop`` is set (or ``max_tasks`` tasks were handled)."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="learn") as pool:
            while not stop.is_set() and (max_tasks is None or self.tasks_done < max_tasks):
                delivery = self.transport.get(self.queue, timeout_s=0.5)
                if delivery is None:
                    continue
                job = self.handler.prepare(delivery)
                if job is None:
                    continue
                future = pool.submit(self.handler.learn, job)
                while not future.done():
                    # heartbeats and broker callbacks keep flowing during minutes of training
                    self.transport.process_events(0.2)
                future.result()
                self.handler.finish(job)
                self.tasks_done += 1
