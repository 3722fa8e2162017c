"""Batched ingest against the real RabbitMQ and Redis: recorded before acked, counted once.

An aggregator with a prefetch window takes a round's uploads in one batch, records
them in Redis (one pipeline) and dies before its batched ack. The broker delivers them
again; the restarted aggregator counts each upload once, from the store.

Budget: about 5 s.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence

import pytest

from scarlet.down import tear_down
from services.aggregator.coordinator import RoundCoordinator
from shared.data import FederatedData
from shared.protocol import routes
from shared.rounds.setup import prepare_data
from shared.state.redis import RedisFederationStore
from shared.transport import AmqpTransport, Delivery
from tests.conftest import AMQP_URL, require_rabbitmq, require_redis, tiny_config
from tests.unit.aggregator.test_coordinator import CONFIG, Setup

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("SCARLET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFETCH = 16


class Crash(Exception):
    """The aggregator process dies here."""


@pytest.fixture(scope="module")
def data() -> FederatedData:
    return prepare_data(tiny_config(**CONFIG))


@pytest.fixture
def real(data: FederatedData) -> Iterator[tuple[Setup, list[AmqpTransport]]]:
    require_rabbitmq()
    require_redis()
    run = f"test-ingest-{uuid.uuid4().hex[:10]}"
    s = Setup(data, ingest_prefetch=PREFETCH, broker_url=AMQP_URL, redis_url=REDIS_URL)
    s.config = s.config.model_copy(update={"run_id": run})
    dlx, dlq = f"{run}.dlx", f"{run}.dlq"
    opened: list[AmqpTransport] = []

    def transport(prefetch: int = 1) -> AmqpTransport:
        t = AmqpTransport(
            AMQP_URL, prefetch=prefetch, dead_letter_exchange=dlx, dead_letter_queue=dlq
        )
        opened.append(t)
        return t

    s.clients = transport()  # type: ignore[assignment]
    s.store = RedisFederationStore(REDIS_URL, run)  # type: ignore[assignment]
    s.open = transport  # type: ignore[attr-defined]
    yield s, opened
    for t in opened:
        with contextlib.suppress(Exception):
            t.close()
    tear_down(s.config, s.settings)
    with transport() as admin:
        admin.delete_queue(dlq)
        admin.delete_exchange(dlx)


def _coordinator(s: Setup, transport: AmqpTransport) -> RoundCoordinator:
    agg = RoundCoordinator(
        s.config, s.settings, s.data, transport, s.store, clock=s.clock, observer=s.observer
    )
    agg.start()
    return agg


def test_a_batch_recorded_in_redis_but_not_acked_comes_again_and_counts_once(real):
    s, _ = real
    first = s.open(prefetch=PREFETCH)
    sizes: list[int] = []

    def crash(deliveries: Sequence[Delivery]) -> None:
        sizes.append(len(deliveries))
        first.close()  # the connection goes with the process: the broker requeues
        raise Crash

    get_many = first.get_many

    def whole_round(queue: str, *, max_count: int, timeout_s: float) -> list[Delivery]:
        # the three may reach the window a few milliseconds apart: take them as one batch
        taken: list[Delivery] = []
        while len(taken) < 3:
            taken += get_many(queue, max_count=max_count, timeout_s=2.0)
        return taken

    first.ack_many = crash  # type: ignore[method-assign]
    first.get_many = whole_round  # type: ignore[method-assign]
    agg = _coordinator(s, first)

    def clients() -> None:
        for task in [s.task(k) for k in agg.core.clients]:
            s.upload(task)

    # When the aggregator dies between the Redis write and the ack
    with pytest.raises(Crash):
        agg.run_round(between=clients)
    assert sizes == [3]
    assert sorted(s.store.uploads(0)) == sorted(agg.core.clients)
    # Then a restarted aggregator counts each upload once
    again = _coordinator(s, s.open(prefetch=PREFETCH))
    record = again.run_round()
    assert record is not None and record.uploads == {"accepted": 3}
    assert record.wire_bytes_up == sum(s.upload_bytes)
    # and the broker still holds the three bodies, marked redelivered
    queue = routes.uploads_queue(s.config.run_id)
    back = []
    while (d := s.clients.get(queue, timeout_s=0.5)) is not None:
        back.append(d.redelivered)
        d.ack()
    assert back == [True, True, True]
