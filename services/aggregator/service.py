"""The aggregator process: drives rounds over a transport, persists progress in a store.

One implementation serves both the RabbitMQ deployment and the embedded simulation: the
embedded federation runs its clients inside ``between`` (after the tasks are published and
before the uploads are collected); real workers simply run elsewhere meanwhile.

Durability (DESIGN §3-§4): tasks are published only after the round's state (with the
encoded tasks) is saved; an upload is acked only after it is recorded in the store; the
cache update, the next round's state and the deletion of the round's uploads are one atomic
store transaction. A restarted aggregator resumes from the store and produces the same
results as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from shared.accounting import ByteLedger, Traffic, dsfl_upload_bytes, paper_upload_bytes
from shared.cache_policy import NEVER, CacheSignal
from shared.config import FederationConfig, ServiceSettings
from shared.data import FederatedData
from shared.errors import ProtocolError
from shared.metrics import Metrics
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits, decode_upload, encode_task
from shared.protocol.tensors import decode_tensor_map, encode_tensor_map
from shared.results import RoundRecord
from shared.rounds.aggregator import AggregatorCore, UploadOutcome
from shared.rounds.aggregator_state import dump_aggregator, restore_aggregator
from shared.rounds.server_model import ServerModel
from shared.state.base import CacheUpdate, FederationStore
from shared.training import predict
from shared.transport.base import Transport
from shared.transport.topology import declare_topology

__all__ = ["AggregatorService"]

logger = logging.getLogger(__name__)

_STAGE_IDLE, _STAGE_COLLECTING, _STAGE_DISTILLING = "idle", "collecting", "distilling"


@dataclass
class _Progress:
    """What the service persists beside the state machine (the blob's ``extra``)."""

    stage: str = _STAGE_IDLE
    pending_tasks: list[tuple[int, bytes]] = field(default_factory=list)
    ledger_up: dict[str, int] = field(default_factory=dict)
    ledger_down: dict[str, int] = field(default_factory=dict)
    uploads: dict[str, int] = field(default_factory=dict)
    client_accuracies: list[float] = field(default_factory=list)
    started: float = 0.0
    closing: dict[str, object] = field(default_factory=dict)


class AggregatorService:
    """Runs the aggregator's rounds.

    Args:
        config: the federation configuration.
        settings: deadlines and quorum.
        data: the split data (the aggregator uses the public set and the test split).
        transport: where tasks go and uploads come from.
        store: durable federation state.
        metrics: metric catalogue (a private registry when None).
        clock: monotonic seconds (tests inject a manual clock).
    """

    def __init__(
        self,
        config: FederationConfig,
        settings: ServiceSettings,
        data: FederatedData,
        transport: Transport,
        store: FederationStore,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.settings = settings
        self.num_classes = data.num_classes
        self.transport = transport
        self.store = store
        self.metrics = metrics or Metrics.create()
        self.clock = clock
        self.limits = DecodeLimits(config.public_size, data.num_classes, settings.max_message_bytes)
        self.core = AggregatorCore(config, data.num_classes)
        self.server = ServerModel(config, data.public, data.test, data.num_classes)
        self.progress = _Progress()
        self.records: list[RoundRecord] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Declare the topology and resume from the store if a previous run left state."""
        declare_topology(self.transport, self.config, self.settings.worker_mode)
        blob = self.store.load_aggregator()
        if blob is not None:
            self._resume(blob)

    @property
    def finished(self) -> bool:
        """True once every configured round is closed and distilled."""
        return self.core.round >= self.config.rounds and self.progress.stage == _STAGE_IDLE

    def run(
        self,
        between: Callable[[], None] | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> list[RoundRecord]:
        """Run rounds until the configured number is reached (or ``stop()`` says so)."""
        while not self.finished and not (stop is not None and stop()):
            record = self.run_round(between, stop)
            if record is not None and on_round is not None:
                on_round(record)
        return self.records

    def run_round(
        self, between: Callable[[], None] | None = None, stop: Callable[[], bool] | None = None
    ) -> RoundRecord | None:
        """Advance the current round to its end; returns its record (None if stopped)."""
        if self.progress.stage == _STAGE_IDLE:
            self._open_round()
        if self.progress.stage == _STAGE_COLLECTING:
            if between is not None:
                between()
            if not self._collect(stop):
                return None
            self._close_round()
        return self._finish_round()

    # -- the round, step by step ---------------------------------------------------------

    def _open_round(self) -> None:
        start = self.clock()
        tasks = self.core.open_round(server_view=self._server_view)
        t = self.core.round
        previous = self._previous_drawn()
        ledger = ByteLedger()
        bodies = []
        for task in tasks:
            body = encode_task(task, self.config.downlink_spec, public_size=self.config.public_size)
            ledger.add_task(
                task, len(body), self.num_classes, previous, self.config.public_per_round
            )
            bodies.append((task.client_id, body))
        self.progress = _Progress(
            stage=_STAGE_COLLECTING,
            pending_tasks=bodies,
            ledger_down=asdict(ledger.down),
            started=time.time(),
        )
        self._save()  # the tasks are durable before any is published
        self._publish_pending()
        self.metrics.current_round.set(t)
        self.metrics.round_phase_seconds.labels(phase="select").observe(self.clock() - start)
        logger.info(
            "select: round=%s sampled=%s/%s requested=%s reused=%s",
            t,
            len(tasks),
            self.config.clients,
            self._plan_sizes()[0],
            self._plan_sizes()[1],
        )

    def _publish_pending(self) -> None:
        run = self.config.run_id
        for client_id, body in self.progress.pending_tasks:
            self.transport.publish(
                routes.rounds_exchange(run),
                routes.client_routing_key(client_id),
                body,
                {"kind": "train_task", "round": str(self.core.round)},
            )
            self.metrics.bytes_total.labels(direction="down", kind="task").inc(len(body))
        self.progress.pending_tasks = []
        self._save()

    def _collect(self, stop: Callable[[], bool] | None) -> bool:
        start = self.clock()
        deadline = start + self.settings.round_timeout_s
        queue = routes.uploads_queue(self.config.run_id)
        needed = max(1, math.ceil(self.settings.min_quorum * len(self.core.clients)))
        # evaluated at scrape time: keeps counting while this thread is stuck
        self.metrics.round_age_seconds.set_function(self._round_age)
        self.metrics.clients_missing.set(len(self.core.missing()))
        while self.core.missing():
            if stop is not None and stop():
                return False
            now = self.clock()
            if now >= deadline and len(self.core.uploads) >= needed:
                logger.warning(
                    "collect: round=%s deadline passed, closing with %s/%s uploads",
                    self.core.round,
                    len(self.core.uploads),
                    len(self.core.clients),
                )
                break
            delivery = self.transport.get(queue, timeout_s=0.5)
            self.metrics.clients_missing.set(len(self.core.missing()))
            if delivery is None:
                continue
            self._on_upload(delivery.body, delivery.ack, delivery.reject)
        self.metrics.clients_missing.set(len(self.core.missing()))
        self.metrics.round_phase_seconds.labels(phase="collect").observe(self.clock() - start)
        return True

    def _on_upload(self, body: bytes, ack: Callable[[], None], reject: Callable[..., None]) -> None:
        up = Traffic(**self.progress.ledger_up) if self.progress.ledger_up else Traffic()
        up.wire += len(body)
        try:
            upload = decode_upload(body, self.limits)
        except ProtocolError as e:
            logger.warning(
                "collect: round=%s dead-lettering invalid upload: %s", self.core.round, e
            )
            reject(requeue=False, reason=str(e)[:200])
            self._count_upload("invalid")
            self.metrics.dead_letters_total.labels(kind="upload").inc()
            self.progress.ledger_up = asdict(up)
            return
        outcome = self.core.classify(upload)
        if outcome is UploadOutcome.ACCEPTED:
            # durable before acked: a crash after this line redelivers it as a duplicate
            if self.store.record_upload(upload.round, upload.client_id, body):
                self.core.accept(upload)
                hard = self.config.algorithm == "cfd"
                up.paper += paper_upload_bytes(upload, self.num_classes, hard=hard)
                up.baseline += dsfl_upload_bytes(self.config.public_per_round, self.num_classes)
                up.labels += upload.indices.numel()
                up.messages += 1
                if not math.isnan(upload.client_accuracy):
                    self.progress.client_accuracies.append(upload.client_accuracy)
            else:
                outcome = UploadOutcome.DUPLICATE
        ack()
        self._count_upload(outcome.value)
        self.progress.ledger_up = asdict(up)
        logger.info("collect: round=%s client=%s %s", upload.round, upload.client_id, outcome.value)

    def _round_age(self) -> float:
        # seconds since the open round started (wall clock, survives a restart); 0 when idle
        p = self.progress
        if p.stage == _STAGE_IDLE or not p.started:
            return 0.0
        return max(0.0, time.time() - p.started)

    def _count_upload(self, outcome: str) -> None:
        self.progress.uploads[outcome] = self.progress.uploads.get(outcome, 0) + 1
        self.metrics.uploads_total.labels(outcome=outcome).inc()

    def _close_round(self) -> None:
        start = self.clock()
        t = self.core.round
        result = self.core.close_round()
        self.progress.stage = _STAGE_DISTILLING
        self.progress.closing = {
            "round": result.round,
            "clients": list(result.clients),
            "contributors": list(result.contributors),
            "requested": result.requested,
            "reused": result.reused,
        }
        update = self._cache_update(t)
        self.store.commit_round(t, self._blob(), update, self.num_classes)
        self.metrics.round_phase_seconds.labels(phase="aggregate").observe(self.clock() - start)
        logger.info(
            "aggregate: round=%s contributors=%s cache_version=%s",
            t,
            len(result.contributors),
            self.core.cache_version,
        )

    def _cache_update(self, t: int) -> CacheUpdate:
        cache, commit = self.core.cache, self.core.last_commit
        empty = torch.empty(0, dtype=torch.int64)
        if cache is None or commit is None or commit.round != t:
            version = self.store.cache_version() + 1
            return CacheUpdate(
                version,
                _empty_digest(self.config, self.num_classes),
                empty,
                empty,
                torch.empty(0, self.num_classes),
                empty,
            )
        newly = commit.signals == int(CacheSignal.NEWLY_CACHED)
        expired = commit.signals == int(CacheSignal.EXPIRED)
        set_idx = commit.indices[newly]
        clear_idx = commit.indices[expired & (commit.previous_written != NEVER)]
        return CacheUpdate(
            version=cache.version,
            digest=cache.digest(),
            set_indices=set_idx,
            set_written=cache.written[set_idx],
            set_labels=cache.labels[set_idx],
            clear_indices=clear_idx,
        )

    def _finish_round(self) -> RoundRecord:
        closing = self.progress.closing
        t = int(closing["round"])  # type: ignore[call-overload]
        indices, targets = self._distill_set()
        start = self.clock()
        self.server.distill(indices, targets)
        if self.config.algorithm == "cfd":
            # CFD broadcasts the distilled server model's soft labels, not the vote shares
            self.core.replace_downlink_labels(self._server_view(indices))
        self.metrics.round_phase_seconds.labels(phase="distill").observe(self.clock() - start)
        accuracy = self.server.evaluate()
        record = self._record(t, accuracy)
        self.progress = _Progress(stage=_STAGE_IDLE)
        self._save()
        self.store.append_result(json.dumps(record.to_json()))
        self.records.append(record)
        self._observe(record)
        logger.info("distill: round=%s server_accuracy=%.4f", t, accuracy)
        return record

    # -- helpers --------------------------------------------------------------------------

    def _server_view(self, indices: Tensor) -> Tensor:
        return predict(self.server.model, self.server.public[indices])

    def _distill_set(self) -> tuple[Tensor, Tensor]:
        if self.core.last_commit is not None:
            return self.core.last_commit.indices, self.core.last_commit.targets
        prev = self.core.downlink_targets
        assert prev is not None
        return prev.indices, prev.fresh_labels

    def _previous_drawn(self) -> int:
        if self.core.round == 0:
            return 0
        return self.config.public_per_round

    def _plan_sizes(self) -> tuple[int, int]:
        plan = self.core.plan
        return (0, 0) if plan is None else (plan.requested.numel(), plan.reused.numel())

    def _record(self, t: int, accuracy: float) -> RoundRecord:
        p, c = self.progress, self.progress.closing
        up = Traffic(**p.ledger_up) if p.ledger_up else Traffic()
        down = Traffic(**p.ledger_down) if p.ledger_down else Traffic()
        accs = p.client_accuracies
        return RoundRecord(
            round=t,
            server_accuracy=accuracy,
            client_accuracy=sum(accs) / len(accs) if accs else math.nan,
            clients=len(c["clients"]),  # type: ignore[arg-type]
            requested=int(c["requested"]),  # type: ignore[call-overload]
            reused=int(c["reused"]),  # type: ignore[call-overload]
            labels_up=up.labels,
            labels_down=down.labels,
            wire_bytes_up=up.wire,
            wire_bytes_down=down.wire,
            paper_bytes_up=up.paper,
            paper_bytes_down=down.paper,
            baseline_bytes_up=up.baseline,
            baseline_bytes_down=down.baseline,
            uploads=dict(p.uploads),
            cache_version=self.core.cache_version,
            seconds=max(0.0, time.time() - p.started) if p.started else 0.0,
        )

    def _observe(self, r: RoundRecord) -> None:
        m = self.metrics
        for direction, paper, base, labels in (
            ("up", r.paper_bytes_up, r.baseline_bytes_up, r.labels_up),
            ("down", r.paper_bytes_down, r.baseline_bytes_down, r.labels_down),
        ):
            m.paper_bytes_total.labels(direction=direction).inc(paper)
            m.baseline_bytes_total.labels(direction=direction).inc(base)
            m.soft_labels_total.labels(direction=direction).inc(labels)
        for direction, values in (
            ("up", (r.wire_bytes_up, r.paper_bytes_up, r.baseline_bytes_up)),
            ("down", (r.wire_bytes_down, r.paper_bytes_down, r.baseline_bytes_down)),
        ):
            for accounting, value in zip(("wire", "paper", "baseline"), values, strict=True):
                m.round_bytes.labels(direction=direction, accounting=accounting).set(value)
        wire = r.wire_bytes_up + r.wire_bytes_down
        paper = r.paper_bytes_up + r.paper_bytes_down
        baseline = r.baseline_bytes_up + r.baseline_bytes_down
        # a counter only grows: a negative saving (headers, signals) is counted as overhead
        for reason, saved in (("cache", baseline - paper), ("compression", paper - wire)):
            m.bytes_saved_total.labels(reason=reason).inc(max(0, saved))
            m.bytes_overhead_total.labels(reason=reason).inc(max(0, -saved))
        m.cache_hits_total.inc(r.reused)
        m.cache_misses_total.inc(r.requested)
        m.cache_version.set(r.cache_version)
        m.rounds_completed_total.inc()
        m.round_duration_seconds.observe(r.seconds)
        m.server_accuracy.set(r.server_accuracy)
        if not math.isnan(r.client_accuracy):
            m.client_accuracy.set(r.client_accuracy)
        if self.core.last_commit is not None:
            counts = Counter(int(s) for s in self.core.last_commit.signals.tolist())
            for signal in CacheSignal:
                m.cache_signals_total.labels(signal=signal.name.lower()).inc(counts[int(signal)])

    def _blob(self) -> bytes:
        p = self.progress
        extra = {
            "stage": p.stage,
            "pending_tasks": [[k, b] for k, b in p.pending_tasks],
            "ledger_up": p.ledger_up,
            "ledger_down": p.ledger_down,
            "uploads": p.uploads,
            "client_accuracies": p.client_accuracies,
            "started": p.started,
            "closing": p.closing,
            "server_model": encode_tensor_map(self.server.model.state_dict()),
        }
        return dump_aggregator(self.core, extra)

    def _save(self) -> None:
        self.store.save_aggregator(self._blob())

    def _resume(self, blob: bytes) -> None:
        labels = written = None
        version = self.store.cache_version()
        if self.core.cache is not None:
            labels, written = _dense_cache(self.store, self.config, self.num_classes)
        extra: dict[str, Any] = restore_aggregator(self.core, blob, labels, written, version)
        self.server.model.load_state_dict(decode_tensor_map(extra["server_model"]))
        self.progress = _Progress(
            stage=str(extra["stage"]),
            pending_tasks=[(int(k), bytes(b)) for k, b in extra["pending_tasks"]],
            ledger_up=dict(extra["ledger_up"]),
            ledger_down=dict(extra["ledger_down"]),
            uploads=dict(extra["uploads"]),
            client_accuracies=list(extra["client_accuracies"]),
            started=float(extra["started"]),
            closing=dict(extra["closing"]),
        )
        logger.info(
            "resume: round=%s stage=%s cache_version=%s",
            self.core.round,
            self.progress.stage,
            version,
        )
        if self.progress.stage == _STAGE_COLLECTING:
            for _, body in sorted(self.store.uploads(self.core.round).items()):
                # recorded uploads were validated before they were stored
                self.core.accept(decode_upload(body, self.limits))
            if self.progress.pending_tasks:
                self._publish_pending()


def _dense_cache(
    store: FederationStore, config: FederationConfig, num_classes: int
) -> tuple[Tensor, Tensor]:
    snap = store.cache_snapshot()
    labels = torch.zeros(config.public_size, num_classes)
    written = torch.full((config.public_size,), NEVER, dtype=torch.int64)
    if snap.indices.numel():
        labels[snap.indices] = snap.labels
        written[snap.indices] = snap.written
    return labels, written


def _empty_digest(config: FederationConfig, num_classes: int) -> str:
    from shared.cache_policy import ServerCache

    return ServerCache(config.public_size, num_classes).digest()
