"""The role model (shared.security.roles) and the sender checks, in memory."""

from __future__ import annotations

import json
import re
import uuid

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from scarlet.provision import provision
from services.aggregator.coordinator import RoundCoordinator
from services.cache.service import CacheService
from services.worker.clients import PinnedClient
from services.worker.handler import TaskHandler
from shared.config import FederationConfig, ServiceSettings
from shared.data import FederatedData
from shared.metrics import Metrics
from shared.protocol import routes
from shared.protocol.cache_sync import HEADER_REQUEST_ID, CacheSyncRequest, encode_sync_request
from shared.protocol.codec import DecodeLimits, decode_task, encode_task, encode_upload
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.rounds.setup import build_runtime, prepare_data
from shared.security.roles import (
    NOTHING,
    BrokerPermissions,
    Identities,
    Role,
    broker_permissions,
    identities_of,
    plan,
    redis_rules,
)
from shared.state.memory import MemoryFederationStore
from shared.transport import HEADER_REJECT_REASON, InMemoryTransport
from shared.transport.base import QueueSpec
from shared.transport.topology import declare_topology
from tests.conftest import tiny_config

RUN = "r1"
IDS = Identities.for_run(RUN)
DLX, DLQ = "scarlet.dlx", "scarlet.dead-letters"


def may(perms: BrokerPermissions, kind: str, name: str) -> bool:
    return re.fullmatch(getattr(perms, kind), name) is not None


def client(k: int) -> BrokerPermissions:
    return broker_permissions(Role.CLIENT, RUN, IDS, k)


# ---------------------------------------------------------------- broker permissions


def test_a_client_may_publish_only_uploads_and_cache_requests():
    perms = client(0)
    assert may(perms, "write", routes.uploads_exchange(RUN))
    assert may(perms, "write", routes.cache_rpc_exchange(RUN))
    for exchange in (routes.rounds_exchange(RUN), routes.replies_exchange(RUN), "amq.default"):
        assert not may(perms, "write", exchange), exchange


def test_a_client_may_consume_only_its_own_task_queue_and_its_own_reply_queues():
    perms = client(0)
    own_reply = routes.reply_queue(RUN, f"{IDS.client(0)}.host-1-abc")
    assert may(perms, "read", routes.client_tasks_queue(RUN, 0))
    assert may(perms, "read", own_reply)
    for queue in (
        routes.client_tasks_queue(RUN, 1),
        routes.client_tasks_queue(RUN, 10),
        routes.uploads_queue(RUN),
        routes.pool_tasks_queue(RUN),
        routes.cache_rpc_queue(RUN),
        routes.reply_queue(RUN, f"{IDS.client(1)}.host-1-abc"),
        routes.reply_queue(RUN, f"{IDS.client(0)}0.host"),  # client 00 is not client 0
        DLQ,
    ):
        assert not may(perms, "read", queue), queue


def test_a_client_may_declare_only_its_reply_queues_and_bind_nothing_to_the_rounds():
    perms = client(0)
    assert may(perms, "configure", routes.reply_queue(RUN, f"{IDS.client(0)}.w"))
    for name in (
        routes.client_tasks_queue(RUN, 0),
        routes.rounds_exchange(RUN),
        routes.uploads_queue(RUN),
        DLX,
        DLQ,
    ):
        assert not may(perms, "configure", name), name
    # binding is read on the exchange: never the rounds exchange (it carries every task)
    assert not may(perms, "read", routes.rounds_exchange(RUN))
    assert may(perms, "read", routes.replies_exchange(RUN))


def test_the_aggregator_may_do_everything_its_round_needs_and_not_consume_requests():
    perms = broker_permissions(Role.AGGREGATOR, RUN, IDS)
    assert may(perms, "write", routes.rounds_exchange(RUN))
    assert may(perms, "read", routes.uploads_queue(RUN))
    assert may(perms, "configure", routes.client_tasks_queue(RUN, 12))
    assert not may(perms, "read", routes.cache_rpc_queue(RUN))
    assert not may(perms, "write", "amq.default")


def test_the_cache_service_answers_through_the_replies_exchange_only():
    perms = broker_permissions(Role.CACHE, RUN, IDS)
    assert may(perms, "read", routes.cache_rpc_queue(RUN))
    assert may(perms, "write", routes.replies_exchange(RUN))
    assert not may(perms, "write", routes.rounds_exchange(RUN))
    assert not may(perms, "read", routes.uploads_queue(RUN))


def test_monitoring_may_touch_no_resource():
    assert broker_permissions(Role.MONITORING, RUN, IDS) == BrokerPermissions(
        NOTHING, NOTHING, NOTHING
    )


def test_run_ids_are_escaped_so_a_dot_matches_only_a_dot():
    perms = broker_permissions(Role.CLIENT, "a.b", Identities.for_run("a.b"), 0)
    assert not may(perms, "read", "scarlet.aXb.client.0")


# ---------------------------------------------------------------- plan and Redis


def test_a_pinned_plan_has_one_user_per_client_and_no_redis_for_clients_or_monitoring():
    # When
    grants = plan(RUN, 3, "pinned")
    # Then
    names = [g.name for g in grants]
    assert names == ["aggregator", "cache", "client-0", "client-1", "client-2", "monitoring"]
    assert len({g.user for g in grants}) == len(grants)
    for g in grants:
        holds_redis = g.role in (Role.AGGREGATOR, Role.CACHE)
        assert (g.redis is not None) is holds_redis, g.name
        assert ("redis_url" in g.config_keys) is holds_redis, g.name
        assert "state_url" not in g.config_keys or g.role is Role.POOL


def test_a_pool_user_may_touch_client_state_keys_only_and_enumerate_none():
    rules = redis_rules(Role.POOL, RUN, "pool")
    assert rules is not None
    assert f"~scarlet:{RUN}:client:*" in rules
    assert not [r for r in rules if r.startswith("~") and "client" not in r]
    assert {"-scan", "-keys", "-randomkey"} <= set(rules)
    assert redis_rules(Role.POOL, RUN, "pinned") is None
    assert redis_rules(Role.CLIENT, RUN, "pinned") is None


# ---------------------------------------------------------------- sender rules


def test_an_upload_is_from_the_client_it_names_or_the_pool_and_never_anonymous():
    ids = Identities()
    assert ids.upload_sender_ok("scarlet-client-1", 1, "pinned")
    assert not ids.upload_sender_ok("scarlet-client-0", 1, "pinned")
    assert not ids.upload_sender_ok("scarlet-pool", 1, "pinned")
    assert ids.upload_sender_ok("scarlet-pool", 1, "pool")
    assert not ids.upload_sender_ok("scarlet-client-1", 1, "pool")
    assert not ids.upload_sender_ok(None, 1, "pinned")
    assert ids.client_of("scarlet-client-01") is None
    assert ids.requester_ok("scarlet-client-2", 3, "pinned")
    assert not ids.requester_ok("scarlet-client-3", 3, "pinned")
    assert not ids.requester_ok("guest", 3, "pinned")


def test_settings_name_the_identities_and_verify_senders_by_default():
    settings = ServiceSettings(aggregator_user="agg", client_user_prefix="c")
    ids = identities_of(settings)
    assert settings.verify_senders is True
    assert (ids.aggregator, ids.client(4)) == ("agg", "c4")


# ---------------------------------------------------------------- checks in memory

CONFIG = tiny_config(
    run_id="roles-test",
    clients=2,
    samples_per_client=40,
    public_size=30,
    public_per_round=12,
    rounds=2,
)
SENDERS = Identities()


@pytest.fixture(scope="module")
def data() -> FederatedData:
    return prepare_data(CONFIG)


def _task(client_id: int) -> TrainTask:
    return TrainTask(
        run_id=CONFIG.run_id,
        round=0,
        client_id=client_id,
        request_indices=np.arange(6, dtype=np.int64),
        targets=None,
        catch_up=None,
        cache_version=0,
    )


def test_a_worker_dead_letters_a_task_not_from_the_aggregator_and_its_state_is_unchanged(data):
    # Given client 1's worker and a well-formed task published by client 0's identity
    broker = InMemoryTransport(user=SENDERS.aggregator)
    declare_topology(broker, CONFIG, "pinned")
    runtime = build_runtime(CONFIG, data, 1)
    before = {k: v.clone() for k, v in runtime.model.state_dict().items()}
    done, last = runtime.completed_round, runtime.last_upload
    metrics = Metrics.create(CollectorRegistry())
    limits = DecodeLimits(CONFIG.public_size, data.num_classes)
    handler = TaskHandler(
        PinnedClient(runtime),
        broker.connect(user=SENDERS.client(1)),
        limits,
        None,
        metrics,
        SENDERS,
    )
    body = encode_task(_task(1), public_size=CONFIG.public_size)
    forger = broker.connect(user=SENDERS.client(0))
    forger.publish(routes.rounds_exchange(CONFIG.run_id), routes.client_routing_key(1), body)
    # When
    delivery = broker.get(routes.client_tasks_queue(CONFIG.run_id, 1), timeout_s=1)
    assert delivery is not None and delivery.user_id == SENDERS.client(0)
    assert handler.handle(delivery) is None
    # Then it was dead-lettered with the reason, counted, and nothing was uploaded
    dead = broker.get(broker.dead_letters(), timeout_s=0)
    assert dead is not None and dead.headers[HEADER_REJECT_REASON].startswith("forged")
    sample = metrics.registry.get_sample_value
    assert sample("scarlet_worker_tasks_total", {"outcome": "forged"}) == 1
    assert broker.get(routes.uploads_queue(CONFIG.run_id), timeout_s=0) is None
    # And the client's state is what it was
    assert (runtime.completed_round, runtime.last_upload) == (done, last)
    after = runtime.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_aggregator_never_records_an_upload_from_another_clients_identity(data):
    # Given an aggregator that checks senders, and a well-formed upload for client 1
    # published by client 0 before client 1's own
    config: FederationConfig = CONFIG
    broker = InMemoryTransport(user=SENDERS.aggregator)
    store = MemoryFederationStore(config.run_id)
    settings = ServiceSettings()
    agg = RoundCoordinator(config, settings, data, broker, store, senders=SENDERS)
    agg.start()
    limits = DecodeLimits(config.public_size, data.num_classes)

    def clients() -> None:
        tasks = {}
        for k in agg.core.clients:
            handle = broker.connect(user=SENDERS.client(k))
            delivery = handle.get(routes.client_tasks_queue(config.run_id, k), timeout_s=1)
            assert delivery is not None and delivery.user_id == SENDERS.aggregator
            delivery.ack()
            tasks[k] = decode_task(delivery.body, limits)
        forger = broker.connect(user=SENDERS.client(0))
        for sender, k in (
            (forger, 1),
            *((broker.connect(user=SENDERS.client(k)), k) for k in tasks),
        ):
            task = tasks[k]
            n = task.request_indices.size
            upload = SoftLabelUpload(
                config.run_id,
                task.round,
                k,
                task.request_indices,
                np.full((n, data.num_classes), 1.0 / data.num_classes, dtype=np.float32),
                0.1,
                0.5,
            )
            body = encode_upload(upload, public_size=config.public_size)
            sender.publish(routes.uploads_exchange(config.run_id), routes.UPLOAD_KEY, body)

    # When
    record = agg.run_round(between=clients)
    # Then the forged one was refused and the genuine one accepted
    assert record is not None
    assert record.uploads == {"accepted": record.clients, "forged": 1}


# ---------------------------------------------------------------- provisioning, printed


def test_provision_print_writes_private_role_files_and_a_pinned_client_gets_no_redis(tmp_path):
    # Given a pinned federation of two clients and the operator's admin settings
    config = tiny_config(
        run_id="printed", clients=2, samples_per_client=40, public_size=30, public_per_round=12
    )
    settings = ServiceSettings(redis_url="redis://127.0.0.1:6379/0")
    # When it is provisioned in print mode (nothing runs)
    made = provision(config, settings, tmp_path / "secrets", apply=False)
    # Then there is one 0600 file per role and the commands an operator runs
    assert sorted(made.files) == ["aggregator", "cache", "client-0", "client-1", "monitoring"]
    assert oct((tmp_path / "secrets").stat().st_mode & 0o777) == "0o700"
    for path in made.files.values():
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    client0 = made.files["client-0"].read_text()
    assert "redis" not in client0.lower()
    assert "printed-client-0:" in client0 and "guest" not in client0
    assert "verify_senders = true" in client0
    assert "printed-aggregator:" in made.files["aggregator"].read_text().split("redis_url")[1]
    # one import_definitions here-document for the broker (tests/unit/test_provision.py)
    perms = json.loads(made.commands[0].split("\n", 1)[1].rsplit("\n", 1)[0])["permissions"]
    assert len(perms) == 5
    assert any(c.startswith("redis-cli ACL SETUSER printed-cache reset") for c in made.commands)
    assert not any("printed-client" in c for c in made.commands if c.startswith("redis-cli"))


def test_the_cache_service_answers_clients_of_the_run_and_dead_letters_anyone_else():
    # Given a cache service that answers only the clients of a 2-client run
    run = "rpc-roles"
    broker = InMemoryTransport(user=SENDERS.cache)
    metrics = Metrics.create(CollectorRegistry())
    service = CacheService(
        broker,
        MemoryFederationStore(run),
        run,
        DecodeLimits(30, 10),
        metrics,
        requesters=lambda user: SENDERS.requester_ok(user, 2, "pinned"),
    )
    service.declare()
    reply = routes.reply_queue(run, "w")
    broker.declare(queues=[QueueSpec(reply, ((routes.replies_exchange(run), reply),))])
    # When client 1 and then a stranger ask
    for user in (SENDERS.client(1), "stranger"):
        request = CacheSyncRequest(run, 1, uuid.uuid4().hex, None, reply)
        broker.connect(user=user).publish(
            routes.cache_rpc_exchange(run),
            routes.CACHE_RPC_KEY,
            encode_sync_request(request),
            {HEADER_REQUEST_ID: request.request_id},
        )
    while service.serve_once(0.01):
        pass
    # Then only client 1 got an answer, stamped with the cache service's identity
    assert dict(service.stats) == {"answered": 1, "forged": 1}
    answer = broker.get(reply, timeout_s=0)
    assert answer is not None and answer.user_id == SENDERS.cache
    assert broker.get(reply, timeout_s=0) is None
    dead = broker.get(broker.dead_letters(), timeout_s=0)
    assert dead is not None and dead.user_id == SENDERS.cache  # dead-lettered by it
    assert dead.headers[HEADER_REJECT_REASON] == "forged: request sent by 'stranger'"
