"""The task-fit rule (``judge_task``) and what the handler does with a misfit.

Pure rule first, then one handler round trip over the in-memory transport: a forged
round-999 task is dead-lettered, leaves the client's state alone, and the real tasks
after it are trained and uploaded (never acked as "redelivered").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.worker.admission import Fit, judge_task
from services.worker.clients import PinnedClient
from services.worker.handler import TaskHandler
from shared.data import dataset_classes
from shared.metrics import Metrics
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits, decode_upload, encode_task
from shared.protocol.messages import DistillTargets, TrainTask
from shared.rounds.aggregator import drawn_public_indices, sampled_clients
from shared.rounds.setup import build_runtime, prepare_data
from shared.transport import HEADER_REJECT_REASON, InMemoryTransport
from shared.transport.topology import declare_topology
from tests.conftest import tiny_config

CONFIG = tiny_config(
    run_id="admission-test",
    clients=4,
    samples_per_client=40,
    public_size=30,
    public_per_round=12,
    rounds=5,
)
HALF = CONFIG.model_copy(update={"sample_ratio": 0.5})


def task(round_no: int, client_id: int = 0, **changes: object) -> TrainTask:
    """A task as the aggregator would send it (no cache signals: fresh labels only)."""
    classes = dataset_classes(CONFIG.dataset)
    targets = None
    if round_no > 0:
        indices = np.sort(drawn_public_indices(CONFIG, round_no - 1)[:4])
        labels = np.full((4, classes), 1 / classes, dtype=np.float32)
        targets = DistillTargets(round_no - 1, indices, None, labels)
    base = TrainTask(
        run_id=CONFIG.run_id,
        round=round_no,
        client_id=client_id,
        request_indices=np.sort(drawn_public_indices(CONFIG, round_no)[:5]),
        targets=targets,
        catch_up=None,
        cache_version=round_no,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_next_round_of_a_sampled_client_is_new():
    # Given client 0 finished round 1
    # When round 2 arrives
    verdict = judge_task(task(2), CONFIG, completed_round=1)
    # Then
    assert verdict.fit is Fit.NEW and verdict.reason == ""


def test_a_round_at_or_before_the_completed_one_is_a_redelivery():
    # Given client 0 finished round 2
    # When rounds 2 and 1 come again
    # Then both are redeliveries (the handler republishes only round 2's bytes)
    assert judge_task(task(2), CONFIG, completed_round=2).fit is Fit.REDELIVERY
    assert judge_task(task(1), CONFIG, completed_round=2).fit is Fit.REDELIVERY


def test_a_round_ahead_is_new_because_a_client_may_skip_rounds():
    # Given client 0 finished round 0 and missed rounds 1-2 (deadline, partial participation)
    # When round 3 arrives
    # Then it is work to do, not a misfit
    assert judge_task(task(3), CONFIG, completed_round=0).fit is Fit.NEW


@pytest.mark.parametrize(
    ("forged", "reason"),
    [
        (task(4, round=999), "round 999 outside the run's rounds [0, 5)"),
        (task(0, round=-1), "round -1 outside"),
        (task(1, run_id="other-run"), "task of run 'other-run'"),
        (task(1, cache_version=2), "cache version 2 does not fit round 1"),
        (task(1, cache_version=-1), "cache version -1 does not fit round 1"),
        (task(2, targets=None), "round 2 carries targets of round None"),
        (task(0, targets=task(3).targets), "round 0 carries targets of round 2"),
        (task(1, request_indices=np.arange(30)), "requests public indices that were not drawn"),
    ],
)
def test_a_task_the_aggregator_could_not_have_sent_is_a_misfit(forged: TrainTask, reason: str):
    # Given a client that finished round 0
    # When a task that does not fit arrives
    verdict = judge_task(forged, CONFIG, completed_round=0)
    # Then it is a misfit, with a reason naming what does not fit
    assert verdict.fit is Fit.MISFIT
    assert reason in verdict.reason


def test_a_forged_round_999_is_a_misfit_even_for_a_client_far_along():
    # Given a client that finished every round but the last
    # When round 999 arrives
    # Then it is not mistaken for work or for a redelivery
    assert judge_task(task(4, round=999), CONFIG, completed_round=3).fit is Fit.MISFIT


def test_a_task_for_a_client_the_round_did_not_sample_is_a_misfit():
    # Given half the clients sampled per round
    round_no = 1
    sampled = set(sampled_clients(HALF, round_no))
    outsider = next(k for k in range(HALF.clients) if k not in sampled)
    insider = next(iter(sampled))
    # When a task for each arrives
    out = judge_task(task(round_no, outsider), HALF, completed_round=0)
    inside = judge_task(task(round_no, insider), HALF, completed_round=0)
    # Then only the sampled client's task is work
    assert out.fit is Fit.MISFIT and "was not sampled in round 1" in out.reason
    assert inside.fit is Fit.NEW


def test_a_forged_task_is_dead_lettered_and_later_real_tasks_are_trained_and_uploaded():
    # Given a pinned worker of client 0 on an in-memory broker
    config = CONFIG.model_copy(update={"cache_duration": 0})  # fresh labels only
    data = prepare_data(config)
    broker = InMemoryTransport()
    declare_topology(broker, config, "pinned")
    runtime = build_runtime(config, data, 0)
    limits = DecodeLimits(config.public_size, data.num_classes)
    metrics = Metrics.create(CollectorRegistry())
    handler = TaskHandler(PinnedClient(runtime), broker.connect(), limits, None, metrics)
    tasks_queue = routes.client_tasks_queue(config.run_id, 0)
    dead_letters = broker.dead_letters()

    def send(t: TrainTask) -> None:
        body = encode_task(t, config.downlink_spec, public_size=config.public_size)
        broker.publish("", tasks_queue, body, {"kind": "task"})
        delivery = broker.get(tasks_queue, timeout_s=0)
        assert delivery is not None
        handler.handle(delivery)

    # When a forged round 999 arrives between the real rounds 0 and 1
    send(task(0))
    state_before = runtime.state_dict()
    send(task(4, round=999))
    # Then it is dead-lettered and the client's state is untouched
    assert runtime.completed_round == 0
    after = runtime.state_dict()
    assert all(np.array_equal(state_before[k], after[k]) for k in state_before)
    dead = broker.get(dead_letters, timeout_s=0)
    assert dead is not None and dead.headers[HEADER_REJECT_REASON].startswith("misfit: round 999")
    # ... and the next real task is trained and uploaded, not acked as a redelivery
    send(task(1))
    uploads = routes.uploads_queue(config.run_id)
    rounds = []
    while (delivery := broker.get(uploads, timeout_s=0)) is not None:
        rounds.append(decode_upload(delivery.body, limits).round)
        delivery.ack()
    assert rounds == [0, 1]
    sample = metrics.registry.get_sample_value
    assert sample("scarlet_worker_tasks_total", {"outcome": "misfit"}) == 1
    assert sample("scarlet_worker_tasks_total", {"outcome": "done"}) == 2
    assert sample("scarlet_worker_tasks_total", {"outcome": "redelivered"}) == 0
    broker.close()
