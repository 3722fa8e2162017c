"""The embedded federation: K clients and the server in one process.

It runs exactly the code the services run (the aggregator service with its round loop,
persistence and accounting; the worker's task handler) over the in-process transport and
store, so every message is encoded, counted and decoded as it would be on RabbitMQ. The
clients run in turn between the aggregator publishing a round's tasks and collecting the
uploads.

Every process has its own identity, as under ``scarlet up``: the aggregator's handle
publishes as the aggregator's broker user, each client's as its own, and the sender
checks (``verify_senders``) run exactly as in the services.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from services.aggregator.coordinator import RoundCoordinator
from services.worker.handler import TaskHandler
from shared.arrays import LabelArray
from shared.config import FederationConfig, ServiceSettings
from shared.data import FederatedData
from shared.metrics import Metrics
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits
from shared.results import RoundRecord, RunResults
from shared.rounds.client import ClientRuntime
from shared.rounds.setup import apply_threads, build_runtime, prepare_data
from shared.security.roles import identities_of, sender_identities
from shared.state.memory import MemoryFederationStore
from shared.transport.memory import InMemoryTransport

__all__ = ["EmbeddedFederation", "InMemoryClients", "prepare_data"]


class InMemoryClients:
    """Every client's runtime, kept in memory (a :class:`RuntimeProvider`)."""

    def __init__(self, config: FederationConfig, data: FederatedData) -> None:
        self.runtimes = [build_runtime(config, data, k) for k in range(config.clients)]

    def get(self, client_id: int) -> ClientRuntime | None:
        """The runtime of ``client_id``."""
        return self.runtimes[client_id] if 0 <= client_id < len(self.runtimes) else None

    def save(self, runtime: ClientRuntime) -> None:
        """Nothing to do: the runtime lives in memory."""


class EmbeddedFederation:
    """A whole federation in one process, round by round.

    Args:
        config: the federation configuration.
        data: the split data (see :func:`prepare_data`).
        metrics: metric catalogue shared by the aggregator and the clients.
    """

    def __init__(
        self, config: FederationConfig, data: FederatedData, metrics: Metrics | None = None
    ) -> None:
        apply_threads(config)
        self.config = config
        self.data = data
        self.metrics = metrics or Metrics.create()
        settings = ServiceSettings()
        ids = identities_of(settings)
        senders = sender_identities(settings)
        self.broker = InMemoryTransport(user=ids.aggregator)
        self.store = MemoryFederationStore(config.run_id)
        self.aggregator = RoundCoordinator(
            config, settings, data, self.broker, self.store, self.metrics, senders=senders
        )
        self.clients = InMemoryClients(config, data)
        self.worker_transport = self.broker.connect(user=ids.client(0))
        limits = DecodeLimits(config.public_size, data.num_classes)
        # one handle per client, each publishing as its client's identity
        self.handlers = [
            TaskHandler(
                self.clients,
                self.broker.connect(user=ids.client(k)),
                limits,
                metrics=self.metrics,
                senders=senders,
            )
            for k in range(config.clients)
        ]
        self.handler = self.handlers[0]
        self.results = RunResults(config=config.model_dump())
        self.aggregator.start()

    def _run_clients(self) -> None:
        run = self.config.run_id
        for k in self.aggregator.core.clients:
            delivery = self.worker_transport.get(routes.client_tasks_queue(run, k), timeout_s=1.0)
            if delivery is None:
                raise RuntimeError(f"client {k}: no task for round {self.aggregator.core.round}")
            self.handlers[k].handle(delivery)

    def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> RunResults:
        """Run every configured round; ``on_round`` is called after each one."""
        start = time.perf_counter()
        while not self.aggregator.finished:
            self.run_round(on_round)
        self.results.wall_seconds = time.perf_counter() - start
        return self.results

    def run_round(self, on_round: Callable[[RoundRecord], None] | None = None) -> RoundRecord:
        """Run one round: downlink, clients, uplink, aggregation, server distillation."""
        record = self.aggregator.run_round(between=self._run_clients)
        assert record is not None
        self.results.rounds.append(record)
        if on_round is not None:
            on_round(record)
        return record

    def global_labels(self) -> LabelArray:
        """The global cache's labels (|P|, C), a copy; zeros for DS-FL (no cache)."""
        cache = self.aggregator.core.cache
        if cache is None:
            return np.zeros((self.config.public_size, self.data.num_classes), dtype=np.float32)
        return cache.labels.copy()
