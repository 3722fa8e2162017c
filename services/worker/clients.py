"""Where a worker's client runtimes come from: the two modes of ``RuntimeProvider``.

*Pinned* mode: the worker is one client (a data owner's machine); its runtime stays in
memory and, with a state store, survives restarts. *Pool* mode: interchangeable workers
serve any client from one task queue; each task loads the client's state from the state
store and saves it back, so workers may join or leave at any time. Pool mode is for
simulation and benchmarks at scale, or a pool inside one data owner's cluster: every pool
worker can read every client's private shard.

A pool worker's memory does not grow with the clients it has served: a runtime is built
for one task (its shard converted from the decoded split just then) and dropped after
the save, and the state blob keeps only the replica rows a client holds
(:mod:`services.worker.client_state`).
"""

from __future__ import annotations

import logging

from services.worker.client_state import pack_client_state, unpack_client_state
from shared.config import FederationConfig
from shared.data import FederatedData
from shared.rounds.client import ClientRuntime
from shared.rounds.setup import build_runtime
from shared.state.base import ClientStateStore

__all__ = ["PinnedClient", "PoolClients"]

logger = logging.getLogger(__name__)


class PinnedClient:
    """One client, in memory; its state is saved to ``store`` (when given) after each task."""

    def __init__(self, runtime: ClientRuntime, store: ClientStateStore | None = None) -> None:
        self.runtime = runtime
        self.store = store
        if store is not None:
            blob = store.load(runtime.client_id)
            if blob is not None:
                runtime.load_state_dict(unpack_client_state(blob))
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
            self.store.save(runtime.client_id, pack_client_state(runtime.state_dict()))


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
            runtime.load_state_dict(unpack_client_state(blob))
        return runtime

    def save(self, runtime: ClientRuntime) -> None:
        """Write the client's state back for whichever worker serves it next."""
        self.store.save(runtime.client_id, pack_client_state(runtime.state_dict()))
