"""The aggregator's round loop over the in-memory transport and store, with a manual clock.

The "clients" here are the test itself: it reads each task from its queue and publishes
a made-up upload, so every branch of collecting (quorum, deadline, minimum, stop,
invalid bodies) can be driven exactly.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from services.aggregator.coordinator import RoundCoordinator
from services.aggregator.observer import RoundObserver
from services.aggregator.progress import Stage
from shared.config import ServiceSettings
from shared.data import FederatedData
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits, decode_task, encode_upload
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.results import RoundRecord
from shared.rounds.setup import prepare_data
from shared.state.memory import MemoryFederationStore
from shared.transport.memory import DEAD_LETTER_QUEUE, InMemoryTransport
from tests.conftest import tiny_config

CONFIG = dict(
    run_id="unit", clients=3, public_size=120, public_per_round=40, rounds=2, cache_duration=1
)


class ManualClock:
    """Monotonic seconds that move only when told, or by ``step`` on every reading."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Recorder(RoundObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def round_opened(self, round_no: int) -> None:
        self.events.append(("opened", round_no))

    def task_published(self, wire_bytes: int) -> None:
        self.events.append(("task", wire_bytes))

    def upload_counted(self, outcome: str) -> None:
        self.events.append(("upload", outcome))

    def tasks_republished(self, count: int) -> None:
        self.events.append(("republished", count))

    def upload_dead_lettered(self) -> None:
        self.events.append(("dead_letter", None))

    def round_recorded(self, record: RoundRecord, signals: np.ndarray | None) -> None:
        self.events.append(("recorded", record.round))


@pytest.fixture(scope="module")
def data() -> FederatedData:
    return prepare_data(tiny_config(**CONFIG))


class Setup:
    def __init__(self, data: FederatedData, step: float = 0.0, **settings: object) -> None:
        self.config = tiny_config(**CONFIG)
        self.settings = ServiceSettings(**settings)
        self.data = data
        self.broker = InMemoryTransport()
        self.clients = self.broker.connect()
        self.store = MemoryFederationStore(self.config.run_id)
        self.clock = ManualClock(step)
        self.observer = Recorder()
        self.limits = DecodeLimits(self.config.public_size, data.num_classes)
        self.upload_bytes: list[int] = []

    def coordinator(self) -> RoundCoordinator:
        agg = RoundCoordinator(
            self.config,
            self.settings,
            self.data,
            self.broker.connect(),
            self.store,
            clock=self.clock,
            observer=self.observer,
        )
        agg.start()
        return agg

    def task(self, client_id: int) -> TrainTask:
        queue = routes.client_tasks_queue(self.config.run_id, client_id)
        delivery = self.clients.get(queue, timeout_s=1.0)
        assert delivery is not None, f"no task for client {client_id}"
        delivery.ack()
        return decode_task(delivery.body, self.limits)

    def upload(self, task: TrainTask, accuracy: float = 0.5) -> None:
        g = torch.Generator().manual_seed(task.round * 100 + task.client_id)
        n = task.request_indices.size
        probs = torch.softmax(torch.randn(n, self.data.num_classes, generator=g) * 3, dim=1).numpy()
        upload = SoftLabelUpload(
            task.run_id, task.round, task.client_id, task.request_indices, probs, 0.1, accuracy
        )
        body = encode_upload(upload, public_size=self.config.public_size)
        self.publish(body)
        self.upload_bytes.append(len(body))

    def publish(self, body: bytes) -> None:
        queue = routes.uploads_queue(self.config.run_id)
        self.clients.publish("", queue, body, {"kind": "upload"})


def test_a_round_closes_when_every_sampled_client_uploaded_and_counts_what_arrived(data):
    # Given a coordinator and three clients that all answer
    s = Setup(data)
    agg = s.coordinator()

    def clients() -> None:
        for k in agg.core.clients:
            s.upload(s.task(k), accuracy=0.25 * (k + 1))

    # When
    record = agg.run_round(between=clients)
    # Then
    assert record is not None and record.round == 0
    assert record.uploads == {"accepted": 3}
    assert record.wire_bytes_up == sum(s.upload_bytes)
    assert record.labels_up == 3 * record.requested
    assert record.client_accuracy == pytest.approx((0.25 + 0.5 + 0.75) / 3)
    assert agg.progress.stage is Stage.IDLE and agg.core.round == 1
    assert len(s.store.results()) == 1
    assert [e for e in s.observer.events if e[0] in ("opened", "recorded")] == [
        ("opened", 0),
        ("recorded", 0),
    ]
    assert sum(1 for e in s.observer.events if e[0] == "task") == 3


def test_at_the_deadline_the_round_closes_with_the_minimum_quorum(data, caplog):
    # Given a minimum quorum of half the clients and a clock that moves 100 s a reading
    s = Setup(data, step=100.0, min_quorum=0.5, round_timeout_s=250.0)
    agg = s.coordinator()

    def two_clients() -> None:
        for k in agg.core.clients[:2]:
            s.upload(s.task(k))

    # When only two of three answer
    with caplog.at_level(logging.WARNING):
        record = agg.run_round(between=two_clients)
    # Then the round closes at the deadline with them
    assert record is not None
    assert record.uploads == {"accepted": 2}
    assert "deadline passed, closing with 2/3 uploads" in caplog.text


def test_below_the_minimum_at_the_deadline_missing_tasks_are_republished_and_stop_keeps_round(
    data, caplog
):
    # Given a full minimum quorum, two of three uploads and a deadline 50 s after the start
    # (the clock moves 100 s a reading: every loop pass is one more deadline period)
    s = Setup(data, step=100.0, min_quorum=1.0, round_timeout_s=50.0)
    agg = s.coordinator()
    tasks: dict[int, TrainTask] = {}

    def two_clients() -> None:
        tasks.update({k: s.task(k) for k in agg.core.clients})
        for k in agg.core.clients[:2]:
            s.upload(tasks[k])

    polls = iter(range(4))

    def stop() -> bool:
        return next(polls, 99) >= 3

    # When the loop runs three passes and is then asked to stop
    with caplog.at_level(logging.WARNING):
        assert agg.run_round(between=two_clients, stop=stop) is None
    # Then it republished the missing clients' tasks and left the round open for a restart
    missing = agg.core.clients[2]
    assert caplog.text.count(f"republishing the tasks of clients [{missing}]") >= 1
    again_task = s.task(missing)
    assert again_task.round == 0 and np.array_equal(
        again_task.request_indices, tasks[missing].request_indices
    )
    assert ("republished", 1) in s.observer.events
    assert agg.progress.stage is Stage.COLLECTING
    assert sorted(s.store.uploads(0)) == sorted(agg.core.clients[:2])

    # When a new coordinator resumes and the last client answers
    again = s.coordinator()
    s.upload(tasks[missing])
    record = again.run_round()
    # Then the round closes with all three, the first two taken from the store and counted
    assert record is not None and record.uploads == {"accepted": 3}
    assert again.core.round == 1 and record.labels_up == 3 * record.requested
    assert record.wire_bytes_up == sum(s.upload_bytes)


def test_an_invalid_body_is_dead_lettered_counted_and_adds_only_wire_bytes(data):
    # Given
    s = Setup(data)
    agg = s.coordinator()

    def clients() -> None:
        s.publish(b"\x93not an upload")
        for k in agg.core.clients:
            s.upload(s.task(k))

    # When
    record = agg.run_round(between=clients)
    # Then
    assert record is not None
    assert record.uploads == {"accepted": 3, "invalid": 1}
    assert record.wire_bytes_up == sum(s.upload_bytes)  # accepted bodies only
    assert record.rejected_bytes_up == len(b"\x93not an upload")
    assert record.labels_up == 3 * record.requested
    assert ("dead_letter", None) in s.observer.events
    dead = s.clients.get(DEAD_LETTER_QUEUE, timeout_s=0.1)
    assert dead is not None and dead.body == b"\x93not an upload"
    assert "x-reject-reason" in dead.headers


def test_a_duplicate_upload_is_counted_once(data):
    s = Setup(data)
    agg = s.coordinator()

    def clients() -> None:
        tasks = [s.task(k) for k in agg.core.clients]
        s.upload(tasks[0])
        s.upload(tasks[0])
        for t in tasks[1:]:
            s.upload(t)

    record = agg.run_round(between=clients)
    assert record is not None
    assert record.uploads == {"accepted": 3, "duplicate": 1}
    assert record.labels_up == 3 * record.requested


def test_a_restart_after_the_commit_distils_again_and_records_the_same_round(data):
    # Given an uninterrupted reference round
    ref = Setup(data)
    reference = ref.coordinator()
    reference.run_round(between=lambda: [ref.upload(ref.task(k)) for k in reference.core.clients])
    expected = reference.records[0]

    # And a coordinator that dies between the cache commit and the server's distillation
    s = Setup(data)
    agg = s.coordinator()

    def crash(*_: object, **__: object) -> float:
        raise RuntimeError("killed")

    agg.server.distill = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        agg.run_round(between=lambda: [s.upload(s.task(k)) for k in agg.core.clients])
    assert agg.progress.stage is Stage.DISTILLING

    # When a new coordinator resumes
    again = s.coordinator()
    assert again.progress.stage is Stage.DISTILLING
    record = again.run_round()
    # Then it records the same round as the uninterrupted one
    assert record is not None
    for name in ("server_accuracy", "wire_bytes_up", "wire_bytes_down", "paper_bytes_up"):
        assert getattr(record, name) == getattr(expected, name), name
    assert record.uploads == expected.uploads and record.cache_version == expected.cache_version
    assert math.isclose(record.client_accuracy, expected.client_accuracy)
    assert np.array_equal(again.core.cache.labels, reference.core.cache.labels)  # type: ignore[union-attr]
