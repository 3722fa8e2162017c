"""The aggregator's round loop: open, publish, collect, close, distil, record.

:meth:`RoundCoordinator.run_round` is the protocol of DESIGN §1 as named steps; each
step is a few lines over the collaborators that own the detail:

- :class:`~shared.rounds.aggregator.AggregatorCore`: sampling, the cache plan, the
  tasks, aggregation with (Enhanced) ERA and the cache commit (pure, no I/O);
- :mod:`services.aggregator.collect`: when a round stops collecting (quorum, deadline);
- :class:`~services.aggregator.intake.UploadIntake`: decode, classify, record, ack;
- :mod:`services.aggregator.checkpoint`: what survives a restart;
- :class:`~services.aggregator.observer.RoundObserver`: metrics, as hooks.

One implementation serves the RabbitMQ deployment and the embedded simulation: the
embedded federation runs its clients inside ``between`` (after the tasks are published,
before the uploads are collected); real workers run elsewhere meanwhile.

Durability (DESIGN §3-§4): tasks are published only after the checkpoint holding them is
saved; an upload is acked only after it is recorded in the store; the cache update, the
checkpoint and the deletion of the round's uploads are one store transaction. A restarted
aggregator resumes at the saved stage and produces the same results as an uninterrupted
one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from services.aggregator.checkpoint import cache_update, checkpoint_blob, restore_checkpoint
from services.aggregator.collect import CollectAction, CollectRule, decide
from services.aggregator.intake import UploadIntake
from services.aggregator.observer import MetricsObserver, RoundObserver
from services.aggregator.progress import ClosedRound, PendingTask, RoundProgress, Stage
from shared.arrays import IndexArray, LabelArray
from shared.config import FederationConfig, ServiceSettings
from shared.data import FederatedData
from shared.errors import TransportClosed
from shared.metrics import Metrics
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits, encode_task
from shared.results import RoundRecord
from shared.rounds.aggregator import AggregatorCore, RoundResult
from shared.rounds.server_model import ServerModel
from shared.security.roles import Identities
from shared.state.base import FederationStore
from shared.transport.base import Transport, batch_size
from shared.transport.topology import declare_topology

__all__ = ["RoundCoordinator"]

logger = logging.getLogger(__name__)

_POLL_S = 0.5  # longest single wait on the uploads queue


class RoundCoordinator:
    """Runs the aggregator's rounds.

    Args:
        config: the federation configuration.
        settings: deadlines and quorum.
        data: the split data (the aggregator uses the public set and the test split).
        transport: where tasks go and uploads come from.
        store: durable federation state.
        metrics: metric catalogue fed through a :class:`MetricsObserver` (a private
            registry when None); ignored when ``observer`` is given.
        clock: monotonic seconds (tests inject a manual clock).
        observer: the round loop's hooks (default: the metrics).
        senders: accept an upload only from the broker user of the client it names (the
            pool's in pool mode); None: no sender check (``verify_senders`` off).
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
        observer: RoundObserver | None = None,
        senders: Identities | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.transport = transport
        self.store = store
        self.clock = clock
        self.observer = observer or MetricsObserver(metrics or Metrics.create())
        self.num_classes = data.num_classes
        self.limits = DecodeLimits(config.public_size, data.num_classes, settings.max_message_bytes)
        self.core = AggregatorCore(config, data.num_classes)
        self.server = ServerModel(config, data.public, data.test, data.num_classes)
        self.intake = UploadIntake(
            config, self.core, store, self.limits, self.observer, senders, settings.worker_mode
        )
        self.progress = RoundProgress()
        self.records: list[RoundRecord] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Declare the topology and resume from the store if a previous run left state."""
        declare_topology(self.transport, self.config, self.settings.worker_mode)
        blob = self.store.load_aggregator()
        if blob is None:
            return
        self.progress = restore_checkpoint(blob, self.core, self.server.model, self.store)
        self.intake.readmit_recorded(self.progress)
        logger.info(
            "resume: round=%s stage=%s cache_version=%s",
            self.core.round,
            self.progress.stage,
            self.store.cache_version(),
        )
        self._publish_pending()

    @property
    def finished(self) -> bool:
        """True once every configured round is closed and distilled."""
        return self.core.round >= self.config.rounds and self.progress.stage is Stage.IDLE

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

    # -- one round ------------------------------------------------------------------------

    def run_round(
        self, between: Callable[[], None] | None = None, stop: Callable[[], bool] | None = None
    ) -> RoundRecord | None:
        """Advance the current round to its end; returns its record (None if stopped).

        Each step starts where a restarted aggregator left off (``progress.stage``).
        """
        if self.progress.stage is Stage.IDLE:
            self._open_round()  # sample, plan the cache, build and save the tasks
            self._publish_pending()  # downlink: one task per sampled client
        if self.progress.stage is Stage.COLLECTING:
            if between is not None:
                between()  # the embedded federation's clients run here
            if not self._collect(stop):  # uplink until quorum or deadline
                return None
            self._close_round()  # aggregate, sharpen, commit cache and checkpoint at once
        return self._distill_and_record()  # train and evaluate the server model

    def _open_round(self) -> None:
        start = self.clock()
        tasks = self.core.open_round(server_view=self._server_view)
        progress = RoundProgress(stage=Stage.COLLECTING, started=time.time())
        dsfl_previous = 0 if self.core.round == 0 else self.config.public_per_round
        # every client sampled (the authors: sample_ratio == 1): COMET's centroids / K_c
        full = len(tasks) == self.config.clients
        for task in tasks:
            body = encode_task(task, self.config.downlink_spec, public_size=self.config.public_size)
            progress.ledger.add_task(
                task,
                len(body),
                self.num_classes,
                dsfl_previous,
                self.config.public_per_round,
                full_participation=full,
            )
            progress.tasks.append(PendingTask(task.client_id, body))
        self.progress = progress
        self._save()  # the tasks are durable before any is published
        self.observer.round_opened(self.core.round)
        self.observer.phase_timed("select", self.clock() - start)
        plan = self.core.plan
        logger.info(
            "select: round=%s sampled=%s/%s requested=%s reused=%s",
            self.core.round,
            len(tasks),
            self.config.clients,
            0 if plan is None else plan.requested.size,
            0 if plan is None else plan.reused.size,
        )

    def _publish_pending(self) -> None:
        pending = self.progress.unpublished
        if not pending:
            return
        self._publish(pending)
        self.progress.published = len(self.progress.tasks)
        self._save()

    def _republish_missing(self) -> None:
        missing = set(self.core.missing())
        tasks = [t for t in self.progress.tasks if t.client_id in missing]
        logger.warning(
            "collect: round=%s deadline passed below the minimum quorum: republishing the "
            "tasks of clients %s",
            self.core.round,
            sorted(missing),
        )
        self._publish(tasks)
        self.observer.tasks_republished(len(tasks))

    def _publish(self, tasks: list[PendingTask]) -> None:
        exchange = routes.rounds_exchange(self.config.run_id)
        headers = {"kind": "train_task", "round": str(self.core.round)}
        for task in tasks:
            key = routes.task_routing_key(self.settings.worker_mode, task.client_id)
            self.transport.publish(exchange, key, task.body, headers)
            self.observer.task_published(len(task.body))

    def _collect(self, stop: Callable[[], bool] | None) -> bool:
        """Take uploads until the collect rule closes the round; False when stopped."""
        start = self.clock()
        rule = CollectRule(
            len(self.core.clients), self.settings.min_quorum, self.settings.round_timeout_s
        )
        queue = routes.uploads_queue(self.config.run_id)
        self.observer.collect_started(self._round_age)
        self.observer.clients_missing(len(self.core.missing()))
        republished = 0
        while True:
            received = len(self.core.clients) - len(self.core.missing())
            stopping = stop is not None and stop()
            action = decide(
                rule, received, self.clock() - start, stop=stopping, republished=republished
            )
            if action.closes or action is CollectAction.STOP:
                break
            if action is CollectAction.REPUBLISH:
                republished += 1
                logger.warning(
                    "collect: round=%s %s/%s uploads, minimum %s",
                    self.core.round,
                    received,
                    rule.sampled,
                    rule.needed,
                )
                self._republish_missing()
            self._take_batch(queue)
            self.observer.clients_missing(len(self.core.missing()))
        if action is CollectAction.CLOSE_AT_DEADLINE:
            logger.warning(
                "collect: round=%s deadline passed, closing with %s/%s uploads",
                self.core.round,
                received,
                rule.sampled,
            )
        self.observer.phase_timed("collect", self.clock() - start)
        return action.closes

    def _take_batch(self, queue: str) -> None:
        """Take what the prefetch window holds (waiting one poll at most for the first)."""
        deliveries = self.transport.get_many(
            queue, max_count=batch_size(self.settings.ingest_prefetch), timeout_s=_POLL_S
        )
        if not deliveries:
            return
        try:
            self.intake.take(deliveries, self.progress, self.transport.ack_many)
        except TransportClosed as e:
            # their channel went away before the ack; they are recorded (or were
            # rejected) and the broker requeued them: the redeliveries are duplicates
            logger.warning("collect: round=%s uploads come again: %s", self.core.round, e)

    def _close_round(self) -> None:
        start = self.clock()
        result = self.core.close_round()
        self.progress.stage = Stage.DISTILLING
        self.progress.closed = _closed(result)
        self.progress.tasks, self.progress.published = [], 0  # no longer needed
        update = cache_update(self.core, self.store)
        self.store.commit_round(result.round, self._blob(), update, self.num_classes)
        self.observer.phase_timed("aggregate", self.clock() - start)
        logger.info(
            "aggregate: round=%s contributors=%s cache_version=%s",
            result.round,
            len(result.contributors),
            self.core.cache_version,
        )

    def _distill_and_record(self) -> RoundRecord:
        closed = self.progress.closed
        assert closed is not None, "distilling without a closed round"
        indices, targets = self.core.server_distill_set()
        start = self.clock()
        self.server.distill(indices, targets, round_no=closed.round)
        if self.config.algorithm == "cfd":
            # CFD broadcasts the distilled server model's soft labels, not the vote shares
            self.core.replace_downlink_labels(self._server_view(indices))
        self.observer.phase_timed("distill", self.clock() - start)
        record = self._record(closed, *self.server.evaluate())
        self.progress = RoundProgress()
        self._save()
        self.store.append_result(json.dumps(record.to_json()))
        self.records.append(record)
        commit = self.core.last_commit
        self.observer.round_recorded(record, None if commit is None else commit.signals)
        logger.info("distill: round=%s server_accuracy=%.4f", closed.round, record.server_accuracy)
        return record

    # -- helpers --------------------------------------------------------------------------

    def _server_view(self, indices: IndexArray) -> LabelArray:
        return self.server.predict(indices)

    def _record(self, closed: ClosedRound, accuracy: float, top5: float) -> RoundRecord:
        p = self.progress
        up, down = p.ledger.up, p.ledger.down
        return RoundRecord(
            round=closed.round,
            server_accuracy=accuracy,
            server_top5=top5,
            client_accuracy=p.mean_client_accuracy(),
            clients=len(closed.clients),
            requested=closed.requested,
            reused=closed.reused,
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
            rejected_bytes_up=up.rejected_wire,
        )

    def _round_age(self) -> float:
        # seconds since the open round started (wall clock, survives a restart); 0 when idle
        p = self.progress
        if p.stage is Stage.IDLE or not p.started:
            return 0.0
        return max(0.0, time.time() - p.started)

    def _blob(self) -> bytes:
        return checkpoint_blob(self.core, self.progress, self.server.model)

    def _save(self) -> None:
        self.store.save_aggregator(self._blob())


def _closed(result: RoundResult) -> ClosedRound:
    return ClosedRound(
        result.round, result.clients, result.contributors, result.requested, result.reused
    )
