"""The worker process: where client runtimes live and the loop that keeps the broker alive.

*Pinned* mode: the worker is one client (a data owner's machine); its runtime stays in
memory and, with a state store, survives restarts. *Pool* mode: interchangeable workers
serve any client from one task queue; each task loads the client's state from the state
store and saves it back, so workers may join or leave at any time. Pool mode is for
simulation and benchmarks at scale, or a pool inside one data owner's cluster: every pool
worker holds every client's private shard.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from services.worker.handler import TaskHandler
from services.worker.resync import CacheResync
from shared.config import FederationConfig
from shared.data import FederatedData
from shared.protocol.messages import TrainTask
from shared.protocol.tensors import decode_tensor_map, encode_tensor_map
from shared.rounds.client import ClientRuntime
from shared.rounds.setup import build_runtime
from shared.state.base import ClientStateStore
from shared.transport.base import Transport

__all__ = ["PinnedClient", "PoolClients", "ReplicaResync", "WorkerLoop"]

logger = logging.getLogger(__name__)


class PinnedClient:
    """One client, in memory; its state is saved to ``store`` (when given) after each task."""

    def __init__(self, runtime: ClientRuntime, store: ClientStateStore | None = None) -> None:
        self.runtime = runtime
        self.store = store
        if store is not None:
            blob = store.load(runtime.client_id)
            if blob is not None:
                runtime.load_state_dict(decode_tensor_map(blob))
                logger.info(
                    "state: client=%s resumed after round %s",
                    runtime.client_id,
                    runtime.completed_round,
                )

    def get(self, client_id: int) -> ClientRuntime | None:
        """This worker's runtime, if ``client_id`` is its client."""
        return self.runtime if client_id == self.runtime.client_id else None

    def save(self, runtime: ClientRuntime) -> None:
        """Persist the runtime's state when a store was given."""
        if self.store is not None:
            self.store.save(runtime.client_id, encode_tensor_map(runtime.state_dict()))


class PoolClients:
    """Any client of the federation; state loaded from and saved to ``store`` per task."""

    def __init__(
        self, config: FederationConfig, data: FederatedData, store: ClientStateStore
    ) -> None:
        self.config = config
        self.data = data
        self.store = store

    def get(self, client_id: int) -> ClientRuntime | None:
        """A runtime of ``client_id`` with its latest saved state (fresh if none)."""
        if not 0 <= client_id < self.config.clients:
            return None
        runtime = build_runtime(self.config, self.data, client_id)
        blob = self.store.load(client_id)
        if blob is not None:
            runtime.load_state_dict(decode_tensor_map(blob))
        return runtime

    def save(self, runtime: ClientRuntime) -> None:
        """Write the client's state back for whichever worker serves it next."""
        self.store.save(runtime.client_id, encode_tensor_map(runtime.state_dict()))


class ReplicaResync:
    """Resync a runtime's replica through the cache service (a :class:`Resync`)."""

    def __init__(self, rpc: CacheResync) -> None:
        self.rpc = rpc

    def resync(self, runtime: ClientRuntime, task: TrainTask) -> bool:
        """Install the global cache; False when it is already past the task's version."""
        if runtime.cache is None:
            return True
        version = self.rpc.resync(runtime.cache, None)
        logger.info(
            "sync: round=%s client=%s replica reinstalled at cache version %s",
            task.round,
            runtime.client_id,
            version,
        )
        return version <= task.cache_version


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
