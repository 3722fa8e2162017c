"""Ingest section: the aggregator's upload path against a raw pika consumer, same queue.

The aggregator's path is the collect loop's: ``get_many`` from its prefetch window,
:meth:`UploadIntake.take` (decode, sender check, classify, one Redis pipeline for the
accepted uploads, one batched ack), against the real RabbitMQ and the real Redis store.

The baseline of the goal row is the fastest consumer that keeps the same guarantee:
plain pika, ``basic_qos`` with the same window, manual acks (auto-ack would drop
at-least-once delivery, which the aggregator cannot give up) sent as
``basic_ack(multiple=True)`` every half window, exactly the batching the aggregator uses,
and nothing done with the body. So the ratio is the cost of the aggregator's own work.
A second, reported row compares with the textbook pika consumer that acks every
message on its own (the baseline issue 12 measured: 8,483 msg/s at C = 10). A third
puts the goal in proportion: the rate at which :func:`decode_upload` alone turns the same
bodies into uploads, with no broker and no Redis, over the raw rate. That is the
ceiling of any path that validates an upload before acking it.

All three drain the same quorum queue (the uploads queue is one), filled before each
trial with the same bodies; trials alternate batched raw, per-message raw, aggregator,
batched raw, ... and the rows report ratios of medians. Each aggregator trial's round is
fresh (a new core and Redis key prefix), so that every upload is accepted and recorded.

The bodies are encoded with the configuration's default uplink codec (named in the setting
column), since that is what an aggregator decodes unless told otherwise. When the default
is not ``q8+zstd`` (the default before DECISIONS §30's revision), each trial also runs the
aggregator on the same labels under ``q8+zstd``, so one table shows what the default's
smaller bodies cost in ingest rate.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pika
from prometheus_client import CollectorRegistry

from bench.load.table import Row
from services.aggregator.intake import UploadIntake
from services.aggregator.observer import MetricsObserver
from services.aggregator.progress import RoundProgress, Stage
from shared.arrays import LabelArray
from shared.config import FederationConfig, ServiceSettings
from shared.metrics import Metrics
from shared.protocol.codec import DecodeLimits, decode_upload, encode_upload
from shared.protocol.messages import SoftLabelUpload
from shared.rounds.aggregator import AggregatorCore
from shared.security.roles import Identities
from shared.state.redis import RedisFederationStore
from shared.transport import AmqpTransport, QueueSpec
from shared.transport.base import batch_size

__all__ = ["run"]

SETTINGS = ServiceSettings()
DEFAULT_CODEC = FederationConfig(run_id="bench-ingest").uplink_codec
REFERENCE_CODEC = "q8+zstd"
PREFETCH = SETTINGS.ingest_prefetch
GOAL = 0.80
# (classes, uploads per trial, logit scale): the scale sets how peaked the soft labels
# are, and so the body size (q8+zstd: about 5.4 KB at C = 10, 29 KB at C = 100)
CASES = ((10, 2000, 4.0), (100, 400, 2.65))
TRIALS, QUICK_TRIALS = 5, 3
QUICK_SHARE = 4  # quick: a quarter of the uploads per trial
_DISTINCT_LABELS = 32  # label matrices drawn per case (bodies differ by client anyway)


@dataclass(frozen=True, slots=True)
class Workload:
    """One case: the round's configuration and one encoded upload per sampled client."""

    config: FederationConfig
    classes: int
    bodies: list[bytes]

    @property
    def codec(self) -> str:
        return self.config.uplink_codec

    @property
    def mean_kb(self) -> float:
        return sum(map(len, self.bodies)) / len(self.bodies) / 1000


def run(quick: bool) -> list[Row]:
    """Measure the three rates of each case, interleaved; two ratio and three rate rows each."""
    rows: list[Row] = []
    trials = QUICK_TRIALS if quick else TRIALS
    queue = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    admin = AmqpTransport(SETTINGS.broker_url, connection_name="bench-ingest")
    admin.declare(queues=[QueueSpec(queue, quorum=True, dead_letter=False)])
    try:
        for classes, uploads, scale in CASES:
            count = uploads // QUICK_SHARE if quick else uploads
            workload = make_workload(classes, count, scale)
            reference = None
            if DEFAULT_CODEC != REFERENCE_CODEC:
                reference = make_workload(classes, count, scale, codec=REFERENCE_CODEC)
            rates = _interleaved(workload, reference, queue, trials)
            rows += _rows(workload, rates)
            if reference is not None:
                rows += _reference_rows(workload, reference, rates)
    finally:
        admin.delete_queue(queue)
        admin.close()
    return rows


def make_workload(classes: int, clients: int, scale: float, codec: str = DEFAULT_CODEC) -> Workload:
    """Round 0 of a ``clients``-client federation and every client's upload under ``codec``.

    The labels depend only on the case, not on ``codec``: two workloads of one case carry
    the same soft labels in different encodings.
    """
    config = FederationConfig(
        run_id="bench-ingest",
        dataset="cifar10" if classes == 10 else "cifar100",
        clients=clients,
        samples_per_client=1,
        test_per_client=0,
        public_size=10_000,
        public_per_round=1000,
        uplink_codec=codec,
    )
    core = AggregatorCore(config, classes)
    core.open_round()
    assert core.plan is not None
    requested = core.plan.requested
    rng = np.random.default_rng(0)
    labels = [_soft_labels(rng, requested.size, classes, scale) for _ in range(_DISTINCT_LABELS)]
    bodies = [
        encode_upload(
            SoftLabelUpload(config.run_id, 0, k, requested, labels[k % _DISTINCT_LABELS], 0.5, 0.7),
            config.uplink_spec,
            public_size=config.public_size,
        )
        for k in core.clients
    ]
    return Workload(config, classes, bodies)


def _soft_labels(rng: np.random.Generator, rows: int, classes: int, scale: float) -> LabelArray:
    logits = rng.standard_normal((rows, classes)) * scale
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    labels: LabelArray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return labels


def _interleaved(
    workload: Workload, reference: Workload | None, queue: str, trials: int
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {
        "batched": [], "single": [], "ours": [], "reference": [], "decode": []
    }  # fmt: skip
    count = len(workload.bodies)
    for _ in range(trials):
        rates["decode"].append(decode_rate(workload))
        _fill(queue, workload.bodies)
        rates["batched"].append(raw_pika_rate(queue, count, batched=True))
        _fill(queue, workload.bodies)
        rates["single"].append(raw_pika_rate(queue, count, batched=False))
        _fill(queue, workload.bodies)
        rates["ours"].append(aggregator_rate(queue, workload))
        if reference is not None:
            _fill(queue, reference.bodies)
            rates["reference"].append(aggregator_rate(queue, reference))
    return rates


def _fill(queue: str, bodies: list[bytes]) -> None:
    """Publish ``bodies`` (persistent, user_id stamped) and wait until all are queued."""
    connection = pika.BlockingConnection(pika.URLParameters(SETTINGS.broker_url))
    try:
        channel = connection.channel()
        channel.queue_purge(queue)
        properties = pika.BasicProperties(delivery_mode=2, user_id=_user())
        for body in bodies:
            channel.basic_publish("", queue, body, properties)
        deadline = time.monotonic() + 60.0
        while channel.queue_declare(queue, passive=True).method.message_count < len(bodies):
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench: {queue} did not fill within 60 s")
            connection.sleep(0.05)
    finally:
        connection.close()


def _user() -> str:
    return str(pika.URLParameters(SETTINGS.broker_url).credentials.username)


def raw_pika_rate(queue: str, count: int, *, batched: bool) -> float:
    """Messages per second a plain pika consumer drains and acks (see the module docstring).

    ``batched``: one ``basic_ack(multiple=True)`` every half window; else one per message.
    """
    connection = pika.BlockingConnection(pika.URLParameters(SETTINGS.broker_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    every = batch_size(PREFETCH) if batched else 1
    seen = 0

    def on_message(
        ch: pika.adapters.blocking_connection.BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        nonlocal seen
        seen += 1
        if seen % every == 0 or seen == count:
            ch.basic_ack(method.delivery_tag, multiple=batched)

    started = time.perf_counter()
    channel.basic_consume(queue, on_message, auto_ack=False)
    while seen < count:
        connection.process_data_events(time_limit=1.0)
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def decode_rate(workload: Workload) -> float:
    """Bodies per second :func:`decode_upload` alone turns into uploads: no broker, no Redis.

    The ceiling of any path that decodes an upload before acking it: the goal row's
    ratio cannot exceed this rate over the raw pika rate.
    """
    limits = _limits(workload)
    started = time.perf_counter()
    for body in workload.bodies:
        decode_upload(body, limits)
    return len(workload.bodies) / (time.perf_counter() - started)


def aggregator_rate(queue: str, workload: Workload) -> float:
    """Uploads per second through the aggregator's path (see the module docstring)."""
    config, count = workload.config, len(workload.bodies)
    store = RedisFederationStore(SETTINGS.redis_url, f"bench-ingest-{uuid.uuid4().hex[:8]}")
    core = AggregatorCore(config, workload.classes)
    core.open_round()
    intake = UploadIntake(
        config,
        core,
        store,
        _limits(workload),
        MetricsObserver(Metrics.create(CollectorRegistry())),
        Identities(pool=_user()),
        worker_mode="pool",
    )
    progress = RoundProgress(stage=Stage.COLLECTING, started=time.time())
    transport = AmqpTransport(SETTINGS.broker_url, prefetch=PREFETCH, connection_name="bench")
    taken = 0
    try:
        started = time.perf_counter()
        while taken < count:  # RoundCoordinator._take_batch, minus the collect rule
            deliveries = transport.get_many(queue, max_count=batch_size(PREFETCH), timeout_s=0.5)
            intake.take(deliveries, progress, transport.ack_many)
            taken += len(deliveries)
        elapsed = time.perf_counter() - started
        if dict(progress.uploads) != {"accepted": count}:
            raise RuntimeError(f"bench: uploads counted {dict(progress.uploads)}, not all accepted")
    finally:
        transport.close()
        store.delete_all()
        store.close()
    return count / elapsed


def _limits(workload: Workload) -> DecodeLimits:
    """What the aggregator allows an upload of this workload to be."""
    return DecodeLimits(workload.config.public_size, workload.classes, SETTINGS.max_message_bytes)


def _rows(workload: Workload, rates: dict[str, list[float]]) -> list[Row]:
    setting = _setting(workload)
    ours = statistics.median(rates["ours"])
    ratio = ours / statistics.median(rates["batched"])
    textbook = ours / statistics.median(rates["single"])
    ceiling = statistics.median(rates["decode"]) / statistics.median(rates["batched"])
    detail = f"{setting}; {len(rates['ours'])} interleaved trials each, medians"
    return [
        Row(
            "ingest",
            "aggregator ingest / raw pika consume rate",
            setting,
            f"{ratio:.2f}",
            f">= {GOAL:.2f}",
            ratio >= GOAL,
        ),
        Row("ingest", "aggregator ingest / raw pika, per-message acks", setting, f"{textbook:.2f}"),
        Row(
            "ingest",
            "ceiling: decode alone / raw pika (no validating path can exceed it)",
            setting,
            f"{ceiling:.2f}",
        ),
        Row("ingest", "aggregator ingest (uploads/s)", detail, _rate(rates["ours"])),
        Row("ingest", "raw pika, batched acks (msg/s)", detail, _rate(rates["batched"])),
        Row("ingest", "raw pika, per-message acks (msg/s)", detail, _rate(rates["single"])),
        Row("ingest", "decode alone (bodies/s)", detail, _rate(rates["decode"])),
    ]


def _reference_rows(
    workload: Workload, reference: Workload, rates: dict[str, list[float]]
) -> list[Row]:
    """The default codec's ingest rate against the reference codec's, same trials."""
    cost = statistics.median(rates["ours"]) / statistics.median(rates["reference"])
    size = workload.mean_kb / reference.mean_kb
    both = f"C={workload.classes}, {workload.codec} vs {reference.codec}, prefetch {PREFETCH}"
    return [
        Row(
            "ingest",
            f"aggregator ingest (uploads/s), {reference.codec} bodies",
            f"{_setting(reference)}; {len(rates['reference'])} interleaved trials, medians",
            _rate(rates["reference"]),
        ),
        Row("ingest", f"ingest rate, {workload.codec} / {reference.codec}", both, f"{cost:.2f}"),
        Row("ingest", f"body size, {workload.codec} / {reference.codec}", both, f"{size:.2f}"),
    ]


def _setting(workload: Workload) -> str:
    return (
        f"C={workload.classes}, {workload.codec}, {workload.mean_kb:.1f} KB bodies, "
        f"prefetch {PREFETCH}"
    )


def _rate(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f} (min {min(rates):,.0f}, max {max(rates):,.0f})"
