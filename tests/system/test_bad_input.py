"""The bad-input campaign: 1,000+ hostile messages into a live federation change nothing.

A federation of real services on threads (tests/system/harness.py) over the shared
RabbitMQ and Redis. Before the workers start, a separate connection publishes hostile
bodies of 21 kinds into the uploads exchange, the rounds exchange (client task queues)
and the cache-RPC exchange. Every message must end dead-lettered (its kind is in a header
the dead letter keeps) or, for a well-formed upload of a wrong run, round or client,
acked and counted by outcome; no service thread may exit; the results must equal the
embedded run's. Budget: under 2 min (about 20 s here, plus the lock wait).
"""

from __future__ import annotations

import collections
import random

import msgpack
import numpy as np
import pytest

from scarlet.simulate import EmbeddedFederation
from shared.config import FederationConfig
from shared.protocol import routes
from shared.protocol.cache_sync import CacheSyncRequest, encode_sync_request
from shared.protocol.codec import encode_task, encode_upload
from shared.protocol.indexsets import encode_index_set
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.rounds.setup import prepare_data
from tests.conftest import require_rabbitmq, require_redis
from tests.system.harness import SMALL_FEDERATION, federation, new_run_id
from tests.system.test_services import _assert_same_federation

pytestmark = [pytest.mark.system, pytest.mark.integration]

KIND_HEADER = "x-campaign-kind"
COPIES = 50  # per kind; 21 kinds (18 into uploads and cache RPC, 2 task kinds, a replay): 1,050
# well-formed uploads the aggregator acks and counts (never aggregated) instead of
# dead-lettering: a wrong run, a round not open, a client not sampled
COUNTED = {"upload-wrong-run": "rejected", "upload-wrong-round": "rejected"}
COUNTED |= {"upload-wrong-client": "rejected", "upload-replay": "rejected"}


@pytest.fixture(scope="module")
def data():
    require_rabbitmq()
    require_redis()
    return prepare_data(FederationConfig(**SMALL_FEDERATION))


def _upload(config: FederationConfig, **change: object) -> bytes:
    fields: dict[str, object] = {
        "run_id": config.run_id,
        "round": 999,
        "client_id": 0,
        "indices": np.arange(5, dtype=np.int64),
        "soft_labels": np.full((5, 10), 0.1, dtype=np.float32),
        "train_loss": 0.1,
        "client_accuracy": 0.5,
    }
    fields |= change
    return encode_upload(SoftLabelUpload(**fields), public_size=config.public_size)  # type: ignore[arg-type]


def _mutate(body: bytes, change: dict[str, object], labels: dict[str, object] | None = None):
    msg = msgpack.unpackb(body, raw=False)
    msg |= change
    if labels is not None:
        msg["labels"] = msg["labels"] | labels
    return msgpack.packb(msg, use_bin_type=True)


def _raw_rows(values: list[float]) -> dict[str, object]:
    rows = np.array([values] * 5, dtype="<f4")
    return {"spec": "f32", "n": 5, "c": 10, "layout": "raw", "data": rows.tobytes()}


def _campaign(config: FederationConfig) -> list[tuple[str, str, str, bytes]]:
    """(kind, exchange, routing key, body) for every hostile message."""
    rng = random.Random(11)
    run = config.run_id
    up = (routes.uploads_exchange(run), routes.UPLOAD_KEY)
    rpc = (routes.cache_rpc_exchange(run), routes.CACHE_RPC_KEY)
    valid = _upload(config, round=0)
    deep = b"\x91" * 100_000 + b"\xc0"  # an array in an array ... 100,000 deep
    bomb = b"\xdf\x7f\xff\xff\xff"  # a map declaring 2**31 - 1 entries, then nothing
    big_n = _mutate(valid, {}, {"n": 10**9})
    wide = encode_index_set(np.array([config.public_size + 3]), config.public_size + 10)
    kinds: dict[str, tuple[tuple[str, str], object]] = {
        "garbage": (up, lambda: rng.randbytes(rng.randint(1, 3000))),
        "truncated": (up, lambda: valid[: rng.randint(1, len(valid) - 1)]),
        "oversize-rows": (up, lambda: big_n),
        "wrong-version": (up, lambda: _mutate(valid, {"v": 99})),
        "wrong-kind": (up, lambda: _mutate(valid, {"kind": "train_task"})),
        "upload-wrong-run": (up, lambda: _upload(config, run_id="someone-else", round=0)),
        "upload-wrong-round": (up, lambda: _upload(config, round=999)),
        "upload-wrong-client": (up, lambda: _upload(config, round=0, client_id=77)),
        "nan": (up, lambda: _mutate(valid, {"labels": _raw_rows([float("nan")] * 10)})),
        "inf": (up, lambda: _mutate(valid, {"labels": _raw_rows([float("inf")] + [0.0] * 9)})),
        "negative": (up, lambda: _mutate(valid, {"labels": _raw_rows([-0.1, 0.2] + [0.1125] * 8)})),
        "off-simplex": (up, lambda: _mutate(valid, {"labels": _raw_rows([0.2] * 10)})),
        "bad-indices": (up, lambda: _mutate(valid, {"indices": rng.randbytes(12)})),
        "out-of-range-index": (up, lambda: _mutate(valid, {"indices": wide})),
        "msgpack-bomb": (up, lambda: bomb),
        "deep-nesting": (up, lambda: deep),
        "cache-rpc-garbage": (rpc, lambda: rng.randbytes(rng.randint(1, 500))),
        "cache-rpc-wrong-run": (
            rpc,
            lambda: encode_sync_request(
                CacheSyncRequest("someone-else", 0, rng.randbytes(16).hex(), None, "nowhere")
            ),
        ),
    }
    messages: list[tuple[str, str, str, bytes]] = []
    for kind, ((exchange, key), make) in kinds.items():
        for _ in range(COPIES):
            messages.append((kind, exchange, key, make()))  # type: ignore[operator]
    # a replay: the same well-formed, unaggregatable upload again and again
    replay = _upload(config, round=0, client_id=77)
    messages += [("upload-replay", *up, replay)] * COPIES
    # forged and broken tasks, spread over every client's task queue
    for i in range(COPIES):
        k = i % config.clients
        key = routes.client_routing_key(k)
        task = TrainTask(run, 999, k, np.arange(3), None, None, 0, "")
        body = encode_task(task, public_size=config.public_size)
        messages.append(("forged-task", routes.rounds_exchange(run), key, body))
        messages.append(("task-garbage", routes.rounds_exchange(run), key, rng.randbytes(99)))
    rng.shuffle(messages)
    return messages


def test_a_thousand_hostile_messages_are_refused_and_counted_and_change_nothing(data):
    # Given an undisturbed reference and a live federation whose queues exist
    config = FederationConfig(run_id=new_run_id(), **SMALL_FEDERATION)
    expected = EmbeddedFederation(config, data)
    expected.run()
    with federation(config, data) as fed:
        fed.start_cache_service()
        fed.start_aggregator()
        attacker = fed.transport()
        try:
            # When: the campaign is published before any worker starts
            messages = _campaign(config)
            for kind, exchange, key, body in messages:
                attacker.publish(exchange, key, body, {KIND_HEADER: kind})
            for k in range(config.clients):
                fed.start_worker(k)
            fed.wait(120)
            # Then: no thread died (wait() raises), and the results are the undisturbed ones
            _assert_same_federation(fed, expected)
            # and every message was dead-lettered, or acked and counted as refused
            dead: collections.Counter[str] = collections.Counter()
            while (letter := attacker.get(fed.dead_letter_queue, timeout_s=2)) is not None:
                dead[letter.headers.get(KIND_HEADER, "?")] += 1
                letter.ack()
        finally:
            attacker.close()
    sent = collections.Counter(kind for kind, *_ in messages)
    assert len(messages) >= 1000 and len(sent) >= 15
    assert fed.aggregator is not None
    counted: collections.Counter[str] = collections.Counter()
    for record in fed.aggregator.records:
        counted.update(record.uploads)
    refused_uploads = sum(n for kind, n in sent.items() if kind in COUNTED)
    assert counted["rejected"] == refused_uploads
    assert counted["accepted"] == config.clients * config.rounds
    for kind, n in sorted(sent.items()):
        print(f"| {kind} | {n} | {dead.get(kind, 0)} | {n if kind in COUNTED else 0} |")
        if kind in COUNTED:
            assert dead.get(kind, 0) == 0, kind
        else:
            assert dead.get(kind, 0) == n, kind
    assert dead.get("?", 0) == 0
