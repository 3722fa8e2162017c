"""``scarlet down`` removes one run's queues, exchanges and Redis keys, and nothing else.

Real RabbitMQ and Redis (the shared instances; run ids are unique per test and the other
run is removed in teardown). Budget: under 5 s.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest
import redis
from pika.exceptions import ChannelClosedByBroker

from scarlet.cli import main
from scarlet.down import run_resources, tear_down
from shared.config import FederationConfig, ServiceSettings
from shared.protocol import routes
from shared.transport.amqp import AmqpTransport
from shared.transport.base import DEAD_LETTER_QUEUE
from shared.transport.topology import declare_topology
from tests.conftest import require_rabbitmq, require_redis

SETTINGS = ServiceSettings()
SIZES = {
    "dataset": "digits",
    "clients": 3,
    "public_size": 100,
    "public_per_round": 20,
    "samples_per_client": 50,
}


def _config(run_id: str) -> FederationConfig:
    return FederationConfig(run_id=run_id, **SIZES)  # type: ignore[arg-type]


def _exists(kind: str, name: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(SETTINGS.broker_url))
    try:
        channel = connection.channel()
        if kind == "queue":
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, passive=True)
        return True
    except ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False
    finally:
        connection.close()


def _set_up(run_id: str, keys: redis.Redis) -> None:
    transport = AmqpTransport(SETTINGS.broker_url, connection_name="test-down")
    try:
        declare_topology(transport, _config(run_id), "pinned")
    finally:
        transport.close()
    keys.set(f"scarlet:{run_id}:aggregator", b"state")
    keys.hset(f"scarlet:{run_id}:round:0:uploads", "1", b"body")


@pytest.fixture
def two_runs() -> Iterator[tuple[str, str, redis.Redis]]:
    require_rabbitmq()
    require_redis()
    gone, kept = f"down-{uuid.uuid4().hex[:8]}", f"down-{uuid.uuid4().hex[:8]}"
    keys = redis.Redis.from_url(SETTINGS.redis_url)
    _set_up(gone, keys)
    _set_up(kept, keys)
    # a key of a run whose id extends the removed one's must survive
    keys.set(f"scarlet:{gone}x:aggregator", b"other")
    yield gone, kept, keys
    tear_down(_config(kept), SETTINGS)
    keys.delete(f"scarlet:{gone}x:aggregator")
    keys.close()


def test_the_listing_names_every_queue_and_exchange_of_the_run_and_only_its_keys():
    # Given / When
    resources = run_resources("r1", 2, ("w1",))
    # Then
    assert set(resources.queues) == {
        "scarlet.r1.client.0",
        "scarlet.r1.client.1",
        "scarlet.r1.tasks",
        "scarlet.r1.uploads",
        "scarlet.r1.cache-rpc",
        "scarlet.r1.reply.w1",
    }
    assert set(resources.exchanges) >= {"scarlet.r1.rounds", "scarlet.r1.replies"}
    assert resources.key_pattern == "scarlet:r1:*"
    assert DEAD_LETTER_QUEUE not in resources.queues


def test_an_unsafe_run_id_is_refused_before_anything_is_deleted():
    # Given / When / Then: a glob would match other runs' keys
    with pytest.raises(ValueError):
        run_resources("r*", 1)


def test_down_removes_the_runs_queues_exchanges_and_keys_and_leaves_the_other_run(two_runs):
    # Given
    gone, kept, keys = two_runs
    assert _exists("queue", routes.uploads_queue(gone))
    # When
    status = main(["down", gone, *_flags()])
    # Then
    assert status == 0
    for queue in run_resources(gone, 3).queues:
        assert not _exists("queue", queue), queue
    for exchange in run_resources(gone, 3).exchanges:
        assert not _exists("exchange", exchange), exchange
    assert list(keys.scan_iter(match=f"scarlet:{gone}:*")) == []
    # and the other run, the longer id and the shared dead letters are untouched
    assert _exists("queue", routes.uploads_queue(kept))
    assert _exists("queue", routes.client_tasks_queue(kept, 2))
    assert _exists("exchange", routes.rounds_exchange(kept))
    assert keys.get(f"scarlet:{kept}:aggregator") == b"state"
    assert keys.get(f"scarlet:{gone}x:aggregator") == b"other"
    assert _exists("queue", DEAD_LETTER_QUEUE)


def test_down_is_idempotent(two_runs):
    # Given
    gone, _, _ = two_runs
    assert main(["down", gone, *_flags()]) == 0
    # When / Then: nothing left to delete is not an error
    assert main(["down", gone, *_flags()]) == 0


def _flags() -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in SIZES.items()]
