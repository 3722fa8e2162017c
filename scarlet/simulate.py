"""The embedded federation: K clients and the server in one process.

It runs exactly the code the services run (the round state machines, the codec, the
worker's task handler and the aggregator's upload collector) over the in-process
transport, so every message is encoded, counted and decoded as it would be on RabbitMQ.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from services.aggregator.collect import collect_uploads
from services.worker.handler import handle_delivery
from shared.accounting import ByteLedger
from shared.config import FederationConfig
from shared.data import FederatedData, load_dataset, split_federation
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits, encode_task
from shared.protocol.messages import SoftLabelUpload
from shared.results import RoundRecord, RunResults
from shared.rounds.aggregator import AggregatorCore, RoundResult, UploadOutcome
from shared.rounds.client import ClientRuntime
from shared.rounds.server_model import ServerModel
from shared.transport.base import ExchangeSpec, QueueSpec, Transport
from shared.transport.memory import InMemoryTransport

__all__ = ["EmbeddedFederation", "prepare_data"]

logger = logging.getLogger(__name__)


def prepare_data(config: FederationConfig) -> FederatedData:
    """Load the configured data set and split it into public, private and test parts."""
    train, test = load_dataset(config.dataset, config.data_root)
    return split_federation(
        train,
        test,
        num_clients=config.clients,
        alpha=None if config.iid else config.alpha,
        samples_per_client=config.samples_per_client,
        public_size=config.public_size,
        test_per_client=config.test_per_client,
        seed=config.seed,
    )


@dataclass
class _Timer:
    seconds: dict[str, float]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class EmbeddedFederation:
    """A whole federation in one process, round by round.

    Args:
        config: the federation configuration.
        data: the split data (see :func:`prepare_data`).
        transport: defaults to a fresh in-process transport.
    """

    def __init__(
        self,
        config: FederationConfig,
        data: FederatedData,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.num_classes = data.num_classes
        self.limits = DecodeLimits(config.public_size, data.num_classes)
        self.core = AggregatorCore(config, data.num_classes)
        self.server = ServerModel(config, data.public, data.test, data.num_classes)
        self.clients = [
            ClientRuntime(
                k, config, data.clients[k], data.client_tests[k], data.public, data.num_classes
            )
            for k in range(config.clients)
        ]
        self.transport: Transport = transport or InMemoryTransport()
        self._declare()
        self.results = RunResults(config=config.model_dump())

    def _declare(self) -> None:
        run = self.config.run_id
        exchange = routes.rounds_exchange(run)
        queues = [QueueSpec(routes.uploads_queue(run))] + [
            QueueSpec(
                routes.client_tasks_queue(run, k),
                bindings=((exchange, routes.client_routing_key(k)),),
            )
            for k in range(self.config.clients)
        ]
        self.transport.declare([ExchangeSpec(exchange)], queues)

    def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> RunResults:
        """Run every configured round; ``on_round`` is called after each one."""
        start = time.perf_counter()
        for _ in range(self.config.rounds):
            record = self.run_round()
            if on_round is not None:
                on_round(record)
        self.results.wall_seconds = time.perf_counter() - start
        return self.results

    def run_round(self) -> RoundRecord:
        """Run one round: downlink, clients, uplink, aggregation, server distillation."""
        cfg, run = self.config, self.config.run_id
        timer, ledger = _Timer({}), ByteLedger()
        start = time.perf_counter()
        t = self.core.round
        previous = (
            self.core.plan.requested.numel() + self.core.plan.reused.numel()
            if (self.core.plan is not None)
            else 0
        )
        with timer.phase("select"):
            tasks = self.core.open_round()
            for task in tasks:
                body = encode_task(task)
                ledger.add_task(task, len(body), self.num_classes, previous, cfg.public_per_round)
                self.transport.publish(
                    routes.rounds_exchange(run), routes.client_routing_key(task.client_id), body
                )
        client_accs: list[float] = []
        with timer.phase("clients"):
            for k in self.core.clients:
                delivery = self.transport.get(routes.client_tasks_queue(run, k), timeout_s=1.0)
                if delivery is None:
                    raise RuntimeError(f"client {k}: task for round {t} was not delivered")
                handled = handle_delivery(delivery, self.clients[k], self.transport, self.limits)
                if handled.upload is not None and not math.isnan(handled.upload.client_accuracy):
                    client_accs.append(handled.upload.client_accuracy)

        def on_upload(
            upload: SoftLabelUpload | None, outcome: UploadOutcome | None, size: int
        ) -> None:
            if upload is not None and outcome is UploadOutcome.ACCEPTED:
                ledger.add_upload(upload, size, self.num_classes, cfg.public_per_round)
            else:
                ledger.up.wire += size

        with timer.phase("collect"):
            counts = collect_uploads(
                self.transport,
                routes.uploads_queue(run),
                self.core,
                self.limits,
                timeout_s=1.0,
                on_upload=on_upload,
            )
        with timer.phase("aggregate"):
            result = self.core.close_round()
        with timer.phase("distill"):
            self.server.distill(result.indices, result.targets)
        with timer.phase("evaluate"):
            accuracy = self.server.evaluate()
        record = self._record(result, accuracy, client_accs, ledger, dict(counts), timer, start)
        self.results.rounds.append(record)
        return record

    def _record(
        self,
        result: RoundResult,
        accuracy: float,
        client_accs: list[float],
        ledger: ByteLedger,
        counts: dict[str, int],
        timer: _Timer,
        start: float,
    ) -> RoundRecord:
        return RoundRecord(
            round=result.round,
            server_accuracy=accuracy,
            client_accuracy=sum(client_accs) / len(client_accs) if client_accs else math.nan,
            clients=len(result.clients),
            requested=result.requested,
            reused=result.reused,
            labels_up=ledger.up.labels,
            labels_down=ledger.down.labels,
            wire_bytes_up=ledger.up.wire,
            wire_bytes_down=ledger.down.wire,
            paper_bytes_up=ledger.up.paper,
            paper_bytes_down=ledger.down.paper,
            baseline_bytes_up=ledger.up.baseline,
            baseline_bytes_down=ledger.down.baseline,
            uploads=counts,
            cache_version=result.cache_version,
            seconds=time.perf_counter() - start,
            phase_seconds={k: round(v, 4) for k, v in timer.seconds.items()},
        )

    def global_labels(self) -> torch.Tensor:
        """The global cache's labels (|P|, C); zeros for DS-FL (no cache)."""
        if self.core.cache is None:
            return torch.zeros(self.config.public_size, self.num_classes)
        return self.core.cache.labels.clone()
