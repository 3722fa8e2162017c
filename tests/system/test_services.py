"""The services over the real RabbitMQ and Redis equal the embedded federation."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import pytest

from scarlet.simulate import EmbeddedFederation
from services.worker.handler import TaskHandler
from shared.cache_policy import NEVER
from shared.config import FederationConfig
from shared.protocol import routes
from shared.protocol.messages import TrainTask
from shared.rounds.setup import prepare_data
from shared.state import open_client_store
from shared.transport.base import HEADER_ORIGINAL_QUEUE, Delivery, Transport
from tests.conftest import require_rabbitmq, require_redis
from tests.system.harness import REDIS, SMALL_FEDERATION, federation, new_run_id

pytestmark = [pytest.mark.system, pytest.mark.integration]

BASE = {**SMALL_FEDERATION}


@pytest.fixture(scope="module")
def data():
    require_rabbitmq()
    require_redis()
    return prepare_data(FederationConfig(**BASE))


def _embedded(config, data) -> EmbeddedFederation:
    fed = EmbeddedFederation(config, data)
    fed.run()
    return fed


def _assert_same_federation(fed, expected: EmbeddedFederation) -> None:
    labels, written = fed.global_labels()
    cache = expected.aggregator.core.cache
    if cache is not None:
        assert np.array_equal(written, cache.written)
        assert np.allclose(labels, cache.labels, atol=1e-6)
    else:
        # no cache (COMET, Selective-FD): nothing is stored; the last downlink (rows or
        # centroids) and the server's distillation targets must agree
        assert (written == NEVER).all()
        assert fed.aggregator is not None
        sent, want = fed.aggregator.core.downlink_targets, expected.aggregator.core.downlink_targets
        assert sent is not None and want is not None
        assert sent.clusters == want.clusters
        assert np.array_equal(sent.indices, want.indices)
        assert np.allclose(sent.fresh_labels, want.fresh_labels, atol=1e-6)
        got_set = fed.aggregator.core.server_distill_set()
        want_set = expected.aggregator.core.server_distill_set()
        assert np.array_equal(got_set[0], want_set[0])
        assert np.allclose(got_set[1], want_set[1], atol=1e-6)
    got = fed.aggregator.records
    want = expected.results.rounds
    assert [r.round for r in got] == [r.round for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.server_accuracy == pytest.approx(w.server_accuracy, abs=1e-9)
        for key in (
            "labels_up",
            "labels_down",
            "paper_bytes_up",
            "paper_bytes_down",
            "baseline_bytes_up",
            "baseline_bytes_down",
            "wire_bytes_down",
        ):
            assert getattr(g, key) == getattr(w, key), (g.round, key)


# the sliding cache's window draw and refresh-in-place commits, over the real services;
# COMET's centroid downlink (k-means on the aggregator, nearest centroid on the workers)
SLIDING = {"cache_policy": "sliding", "refresh_share": 0.4, "cache_duration": 2}
# Selective-FD: every client uploads its own subset of the request (DECISIONS §35)
SELECTIVE_FD = {"algorithm": "selective_fd"}
VARIANTS = [
    pytest.param({}, id="fixed"),
    pytest.param(SLIDING, id="sliding"),
    pytest.param(SELECTIVE_FD, id="selective_fd"),
    # augmentation draws per client, round and sample: every process draws the same
    pytest.param({"augment": True}, id="augmented"),
    # cache_ratio's seeded draw of what a round caches, the same in every replica
    pytest.param({"cache_ratio": 0.5}, id="cache_ratio"),
    pytest.param({"algorithm": "comet"}, id="comet"),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pinned_workers_over_rabbitmq_and_redis_match_the_embedded_run(data, variant):
    # Given one federation run in-process and the same one as services
    config = FederationConfig(run_id=new_run_id(), **{**BASE, **variant})
    expected = _embedded(config, data)
    with federation(config, data) as fed:
        fed.start_cache_service()
        fed.start_aggregator()
        for k in range(config.clients):
            fed.start_worker(k)
        # When it runs to the end
        fed.wait(180)
        # Then global soft labels, accuracies and byte counts are the same
        _assert_same_federation(fed, expected)
        assert fed.aggregator is not None
        assert all(
            r.wire_bytes_up == w.wire_bytes_up
            for r, w in zip(fed.aggregator.records, expected.results.rounds, strict=True)
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_pool_of_two_workers_serving_three_clients_matches_the_embedded_run(data, variant):
    config = FederationConfig(run_id=new_run_id(), **{**BASE, **variant})
    expected = _embedded(config, data)
    with federation(config, data) as fed:
        fed.settings = fed.settings.model_copy(update={"worker_mode": "pool"})
        store = open_client_store(REDIS, config.run_id)
        try:
            fed.start_cache_service()
            fed.start_aggregator()
            fed.start_worker(None, client_store=store)
            fed.start_worker(None, client_store=store)
            fed.wait(180)
            _assert_same_federation(fed, expected)
        finally:
            store.delete_all()


class _PublishTwice(TaskHandler):
    """A worker that sends every upload of client 0 twice (a network-level duplicate)."""

    def _publish(self, task: TrainTask, body: bytes) -> None:
        super()._publish(task, body)
        if task.client_id == 0:
            super()._publish(task, body)


class _AckRequeues:
    """A delivery whose ack puts the message back, as if the aggregator crashed after
    recording the upload and before acking it."""

    def __init__(self, inner: Delivery) -> None:
        self.inner = inner
        self.body, self.headers = inner.body, inner.headers
        self.redelivered, self.queue = inner.redelivered, inner.queue
        self.user_id = inner.user_id

    def ack(self) -> None:
        self.inner.reject(requeue=True)

    def reject(self, *, requeue: bool, reason: str = "") -> None:
        self.inner.reject(requeue=requeue, reason=reason)


class _RedeliverFirstUpload:
    """Wraps the aggregator's transport so that its first upload is delivered twice.

    The aggregator takes uploads in batches (``get_many``) and settles them with one
    ``ack_many``; the wrapped delivery's "ack" is a requeue instead.
    """

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.done = False
        self.redelivered = 0

    def get_many(self, queue: str, *, max_count: int, timeout_s: float) -> list[Delivery]:
        batch = list(self.inner.get_many(queue, max_count=max_count, timeout_s=timeout_s))
        if self.done or not queue.endswith(".uploads"):
            return batch
        for i, delivery in enumerate(batch):
            if len(delivery.body) >= 64:  # a real upload, not the malformed probe
                self.done = True
                batch[i] = _AckRequeues(delivery)
                break
        return batch

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        plain = [d for d in deliveries if not isinstance(d, _AckRequeues)]
        for d in deliveries:
            if isinstance(d, _AckRequeues):
                self.redelivered += 1
                d.ack()
        self.inner.ack_many(plain)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_duplicates_redeliveries_and_malformed_uploads_are_counted_once_and_change_nothing(data):
    config = FederationConfig(run_id=new_run_id(), **BASE)
    expected = _embedded(config, data)
    with federation(config, data) as fed, contextlib.ExitStack() as cleanup:
        fed.start_cache_service()
        wrappers: list[_RedeliverFirstUpload] = []

        def wrap(inner: Transport) -> Transport:
            wrappers.append(_RedeliverFirstUpload(inner))
            return wrappers[-1]  # type: ignore[return-value]

        fed.start_aggregator(wrap=wrap)
        # Given a malformed body waiting in the upload queue
        probe = fed.transport()
        cleanup.callback(probe.close)
        probe.publish("", routes.uploads_queue(config.run_id), b"\x82\xa1v\x01\xa4kind\xa6upload")
        for k in range(config.clients):
            fed.start_worker(k, handler_class=_PublishTwice)
        fed.wait(180)
        # Then every round accepted each client exactly once and the results are unchanged
        assert fed.aggregator is not None
        records = fed.aggregator.records
        assert all(r.uploads.get("accepted") == config.clients for r in records)
        outcomes: dict[str, int] = {}
        for r in records:
            for key, value in r.uploads.items():
                outcomes[key] = outcomes.get(key, 0) + value
        # the first upload was recorded, requeued instead of acked and read again, and
        # client 0 sent each round's upload twice: each extra copy is a "duplicate" while
        # its round is open, "late" once it closed (which depends on the arrival order);
        # the last round's copy may never be read before the run ends
        assert [w.redelivered for w in wrappers] == [1]
        extra = outcomes.get("duplicate", 0) + outcomes.get("late", 0)
        assert config.rounds <= extra <= config.rounds + 1
        assert outcomes["invalid"] == 1
        _assert_same_federation(fed, expected)
        # and the malformed body was dead-lettered with its origin
        dead = probe.get(fed.dead_letter_queue, timeout_s=5)
        assert dead is not None and dead.headers[HEADER_ORIGINAL_QUEUE] == routes.uploads_queue(
            config.run_id
        )
        dead.ack()
        value = fed.metrics.registry.get_sample_value(
            "scarlet_uploads_total", {"outcome": "invalid"}
        )
        assert value == 1
