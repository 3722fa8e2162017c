"""Every message is from whom it claims: per-role users against the real RabbitMQ and Redis.

One provisioned federation (``scarlet up``'s Launcher with ``provision=True``: the
services as OS processes, each with its own broker user) is attacked with client 0's
credentials from a separate pika connection, and by the admin user posing as the
aggregator and as a worker; it must finish with the results of an undisturbed embedded
run, and no secret may show in a file, environment, log, metric or results file that a
role other than its owner sees.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import tomllib
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pika
import pika.exceptions
import pytest
import redis

from scarlet.provision import broker_users, delete_users, provision
from scarlet.simulate import EmbeddedFederation
from scarlet.up import Launcher
from shared.config import FederationConfig, ServiceSettings
from shared.errors import AccessRefused
from shared.protocol import routes
from shared.protocol.cache_sync import HEADER_REQUEST_ID, CacheSyncRequest, encode_sync_request
from shared.protocol.codec import encode_task, encode_upload
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.results import RoundRecord, RunResults
from shared.rounds.setup import prepare_data
from shared.security.roles import Identities
from shared.state import open_federation_store
from shared.transport import AmqpTransport
from tests.conftest import require_rabbitmq, require_redis
from tests.system.harness import SMALL_FEDERATION, new_run_id

pytestmark = [pytest.mark.integration, pytest.mark.system]

BASE = {**SMALL_FEDERATION, "rounds": 2, "threads": 1}
ADMIN = ServiceSettings(log_level="INFO")


@dataclass
class Attacked:
    """A finished provisioned run and what was done to it."""

    config: FederationConfig
    launcher: Launcher
    records: list[RoundRecord]
    reference: EmbeddedFederation
    results_file: Path
    metrics_text: str
    env: dict[str, str]  # worker-0's environment and command line
    refused: dict[str, str] = field(default_factory=dict)  # operation -> broker reply
    forged_upload_bytes: int = 0


def _url(role_file: Path) -> str:
    doc = tomllib.loads(role_file.read_text())
    return str(doc["service"]["broker_url"])


def _password(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")


def _refusal(
    url: str, act: Callable[[pika.adapters.blocking_connection.BlockingChannel], object]
) -> str:
    """Run ``act`` on a fresh channel of ``url``; the broker's refusal ('' if none)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        try:
            act(channel)
        except pika.exceptions.ChannelClosedByBroker as e:
            return f"{e.reply_code} {e.reply_text}"
        return ""
    finally:
        if conn.is_open:
            conn.close()


def _props(user_id: str | None) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, user_id=user_id)


def _forged_upload(config: FederationConfig, client_id: int) -> bytes:
    n = config.public_per_round
    upload = SoftLabelUpload(
        run_id=config.run_id,
        round=0,
        client_id=client_id,
        indices=np.arange(n, dtype=np.int64),
        soft_labels=np.full((n, 10), 0.1, dtype=np.float32),
        train_loss=0.1,
        client_accuracy=0.99,
    )
    return encode_upload(upload, public_size=config.public_size)


def _forged_task(config: FederationConfig) -> bytes:
    task = TrainTask(
        run_id=config.run_id,
        round=1,
        client_id=0,
        request_indices=np.arange(10, dtype=np.int64),
        targets=None,
        catch_up=None,
        cache_version=0,
    )
    return encode_task(task, public_size=config.public_size)


def _attack_as_client_0(config: FederationConfig, url: str, out: Attacked) -> None:
    run = config.run_id
    me = urllib.parse.unquote(urllib.parse.urlsplit(url).username or "")
    body = _forged_upload(config, 1)
    out.forged_upload_bytes = len(body)
    own = routes.reply_queue(run, f"{me}.attacker")

    def bind_own_queue_to_rounds(ch) -> None:  # type: ignore[no-untyped-def]
        ch.queue_declare(own, auto_delete=True)  # its own reply namespace: allowed
        ch.queue_bind(own, routes.rounds_exchange(run), routes.client_routing_key(1))

    out.refused = {
        "consume the uploads queue": _refusal(
            url, lambda ch: ch.basic_get(routes.uploads_queue(run))
        ),
        "publish to the rounds exchange": _refusal(
            url,
            lambda ch: ch.basic_publish(
                routes.rounds_exchange(run), "client.1", b"x", _props(me), mandatory=True
            ),
        ),
        "bind a queue to the rounds exchange": _refusal(url, bind_own_queue_to_rounds),
        "declare a queue it does not own": _refusal(
            url, lambda ch: ch.queue_declare(f"scarlet.{run}.spy", auto_delete=True)
        ),
        "read client 1's task queue": _refusal(
            url, lambda ch: ch.basic_get(routes.client_tasks_queue(run, 1))
        ),
        "publish through the default exchange": _refusal(
            url,
            lambda ch: ch.basic_publish("", routes.uploads_queue(run), body, _props(me)),
        ),
        "publish as client 1 (user_id)": _refusal(
            url,
            lambda ch: ch.basic_publish(
                routes.uploads_exchange(run), routes.UPLOAD_KEY, body, _props(f"{me[:-1]}1")
            ),
        ),
    }
    # well-formed uploads naming client 1: the broker takes them, the aggregator must not
    for user_id in (me, None):
        accepted = _refusal(
            url,
            lambda ch, u=user_id: ch.basic_publish(  # type: ignore[misc]
                routes.uploads_exchange(run), routes.UPLOAD_KEY, body, _props(u), mandatory=True
            ),
        )
        assert accepted == "", accepted


def _attack_as_admin(config: FederationConfig) -> None:
    """guest (an administrator, not the aggregator) sends a task and a cache request."""
    run = config.run_id
    conn = pika.BlockingConnection(pika.URLParameters(ADMIN.broker_url))
    try:
        deadline = time.monotonic() + 60
        while True:  # the RPC queue is the cache service's: wait until it declared it
            ch = conn.channel()
            try:
                ch.queue_declare(routes.cache_rpc_queue(run), passive=True)
                break
            except pika.exceptions.ChannelClosedByBroker:
                assert time.monotonic() < deadline, "the cache service never declared its queue"
                time.sleep(0.2)
        ch.confirm_delivery()
        ch.basic_publish(
            routes.rounds_exchange(run),
            routes.client_routing_key(0),
            _forged_task(config),
            _props("guest"),
            mandatory=True,
        )
        request = CacheSyncRequest(run, 0, uuid.uuid4().hex, None, routes.reply_queue(run, "x"))
        ch.basic_publish(
            routes.cache_rpc_exchange(run),
            routes.CACHE_RPC_KEY,
            encode_sync_request(request),
            pika.BasicProperties(
                delivery_mode=2, user_id="guest", headers={HEADER_REQUEST_ID: request.request_id}
            ),
            mandatory=True,
        )
    finally:
        conn.close()


def _free_base_port(count: int) -> int:
    for base in range(23000 + os.getpid() % 1000 * 10, 60000, 97):
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            for s in socks:
                s.close()
            return base
        except OSError:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def _scrape(ports: dict[str, int]) -> str:
    texts = []
    for port in ports.values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            texts.append(r.read().decode())
    return "\n".join(texts)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacked]:
    require_rabbitmq()
    require_redis()
    config = FederationConfig(run_id=new_run_id(), **BASE)
    reference = EmbeddedFederation(config, prepare_data(config))
    reference.run()
    run_dir = tmp_path_factory.mktemp("identity") / "run"
    settings = ADMIN.model_copy(update={"metrics_port": _free_base_port(2 + config.clients)})
    launcher = Launcher(config, settings, 1, run_dir, provision=True)
    store = open_federation_store(settings.redis_url, config.run_id)
    try:
        launcher.prepare(store)
        launcher.write_config()  # provisions: users, role files, topology
        out = Attacked(config, launcher, [], reference, run_dir / "results.json", "", {})
        _attack_as_client_0(config, _url(launcher.role_configs["client-0"]), out)
        launcher.start_all(launcher.role_configs["aggregator"])
        _attack_as_admin(config)
        worker = launcher.child("worker-0").process
        out.env = {
            "environ": Path(f"/proc/{worker.pid}/environ").read_bytes().decode(errors="replace"),
            "cmdline": Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode(errors="replace"),
        }
        deadline = time.monotonic() + 150
        scraped = False
        while len(store.results()) < config.rounds:
            for child in launcher.children:
                if child.process.poll() not in (None, 0):
                    pytest.fail(f"{child.name} exited:\n{Path(child.log.name).read_text()[-3000:]}")
            if not scraped and len(store.results()) >= 1:
                out.metrics_text, scraped = _scrape(launcher.metrics_ports()), True
            assert time.monotonic() < deadline, "the provisioned federation did not finish"
            time.sleep(0.2)
        out.records = [RoundRecord.from_json(json.loads(r)) for r in store.results()]
        results = RunResults(config=config.model_dump())
        results.rounds = out.records
        results.write(out.results_file)
        yield out
    finally:
        launcher.stop_all()  # also deletes the run's users
        launcher.fresh = True
        launcher.prepare(store)
        _delete_exchanges(config.run_id)


def _delete_exchanges(run: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(ADMIN.broker_url))
    try:
        ch = conn.channel()
        for name in (
            routes.rounds_exchange(run),
            routes.uploads_exchange(run),
            routes.cache_rpc_exchange(run),
            routes.replies_exchange(run),
        ):
            ch.exchange_delete(name)
    finally:
        conn.close()


def test_client_0_cannot_consume_uploads_publish_or_bind_to_rounds_or_read_client_1(attacked):
    # Given client 0's credentials on a separate connection (done in the fixture)
    # Then the broker refused every operation outside client 0's role
    refused = attacked.refused
    print("refused by the broker:", json.dumps(refused, indent=1))
    assert all(reply.startswith(("403", "406")) for reply in refused.values()), refused
    assert refused["publish as client 1 (user_id)"].startswith("406")
    assert len(refused) == 7


def test_uploads_naming_another_client_are_dead_lettered_and_the_results_are_undisturbed(attacked):
    # Given two well-formed uploads for client 1 published before any real one, one with
    # client 0's user_id and one without a user_id
    got, want = attacked.records, attacked.reference.results.rounds
    # Then both were refused as forged, and the run equals the undisturbed one field by field
    assert got[0].uploads.get("forged") == 2
    assert [r.round for r in got] == [r.round for r in want]
    for g, w in zip(got, want, strict=True):
        g_uploads = {k: v for k, v in g.uploads.items() if k != "forged"}
        assert g_uploads == w.uploads
        assert g.server_accuracy == pytest.approx(w.server_accuracy, abs=1e-9)
        assert g.client_accuracy == pytest.approx(w.client_accuracy, abs=1e-9, nan_ok=True)
        forged_wire = 2 * attacked.forged_upload_bytes if g.round == 0 else 0
        assert g.wire_bytes_up == w.wire_bytes_up  # refused bodies are counted apart
        assert g.rejected_bytes_up == w.rejected_bytes_up + forged_wire
        for name in (
            "clients",
            "requested",
            "reused",
            "labels_up",
            "labels_down",
            "wire_bytes_down",
            "paper_bytes_up",
            "paper_bytes_down",
            "baseline_bytes_up",
            "baseline_bytes_down",
            "cache_version",
        ):
            assert getattr(g, name) == getattr(w, name), name
    aggregator_log = (attacked.launcher.run_dir / "aggregator.log").read_text()
    assert aggregator_log.count("dead-lettering an upload for client 1 sent by") == 2


def test_a_worker_dead_letters_a_task_not_sent_by_the_aggregator(attacked):
    # Given a well-formed task for client 0 published by guest (an administrator)
    log = (attacked.launcher.run_dir / "worker-0.log").read_text()
    # Then worker 0 refused it, and still did every real round (results above)
    assert log.count("dead-lettering a task sent by 'guest'") == 1
    assert 'outcome="forged"' in attacked.metrics_text
    # And the cache service refused guest's cache-sync request
    cache_log = (attacked.launcher.run_dir / "cache.log").read_text()
    assert cache_log.count("dead-lettering a request sent by 'guest'") == 1


def test_a_pinned_worker_holds_no_redis_url_and_no_other_roles_secret(attacked):
    files = attacked.launcher.role_configs
    passwords = {name: _password(_url(path)) for name, path in files.items()}
    for name, path in files.items():
        # Then every role file is private
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        text = path.read_text()
        others = [other for other, pw in passwords.items() if other != name and pw in text]
        assert others == [], f"{name} holds the secrets of {others}"
        if name.startswith("client-"):
            assert "redis" not in text.lower(), name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # And worker 0's environment and command line hold no Redis URL and no password
    seen = attacked.env["environ"] + attacked.env["cmdline"]
    assert "redis://" not in seen
    assert not [name for name, pw in passwords.items() if pw in seen]
    assert "guest" not in files["client-0"].read_text()


def test_no_password_appears_in_logs_metrics_or_results(attacked):
    passwords = [_password(_url(p)) for p in attacked.launcher.role_configs.values()]
    assert all(len(pw) >= 24 for pw in passwords)
    logs = "".join(p.read_text() for p in attacked.launcher.run_dir.glob("*.log"))
    assert "scarlet_uploads_total" in attacked.metrics_text  # the scrape reached them
    for where, text in (
        ("logs", logs),
        ("metrics", attacked.metrics_text),
        ("results", attacked.results_file.read_text()),
    ):
        assert not [pw for pw in passwords if pw in text], where


def test_one_broker_user_per_role_and_redis_users_for_the_servers_only(attacked):
    # Given the provisioned run (the launcher deletes these users when it stops; deleting
    # is checked in the pool test below)
    users = broker_users(attacked.config.run_id)
    # Then aggregator, cache, each client and monitoring have a broker user
    assert len(users) == attacked.config.clients + 3
    # And only the aggregator and the cache service have a Redis user
    acl = redis.Redis.from_url(ADMIN.redis_url).acl_users()
    names = sorted(u.decode() if isinstance(u, bytes) else u for u in acl)
    run = attacked.config.run_id
    assert [u for u in names if u.startswith(run)] == [f"{run}-aggregator", f"{run}-cache"]


def test_amqp_deliveries_carry_the_sender_and_a_refusal_is_a_typed_error(attacked):
    files, run = attacked.launcher.role_configs, attacked.config.run_id
    ids = Identities.for_run(run)
    # Given client 0's transport: the broker refuses the rounds exchange as AccessRefused
    with AmqpTransport(_url(files["client-0"]), reconnect_attempts=1) as client0:
        with pytest.raises(AccessRefused):
            client0.publish(routes.rounds_exchange(run), "client.1", b"x")
        # When it publishes a probe to the uploads exchange (the run is over)
        client0.publish(routes.uploads_exchange(run), routes.UPLOAD_KEY, b"probe")
    # Then the aggregator's user receives it stamped with client 0's identity
    with AmqpTransport(_url(files["aggregator"]), reconnect_attempts=1) as aggregator:
        while (delivery := aggregator.get(routes.uploads_queue(run), timeout_s=5)) is not None:
            delivery.ack()
            if delivery.body == b"probe":
                break
        assert delivery is not None and delivery.user_id == ids.client(0)


def test_pool_provisioning_confines_the_pool_to_client_keys_and_delete_removes_every_user(
    tmp_path,
):
    require_rabbitmq()
    require_redis()
    # Given a pool-mode federation whose client state lives in Redis
    run = new_run_id()
    config = FederationConfig(run_id=run, **{**BASE, "clients": 2})
    settings = ADMIN.model_copy(update={"worker_mode": "pool", "state_url": ADMIN.redis_url})
    try:
        # When it is provisioned
        made = provision(config, settings, tmp_path / "secrets", declare=False)

        def redis_as(role: str, key: str) -> redis.Redis:
            doc = tomllib.loads(made.files[role].read_text())
            return redis.Redis.from_url(str(doc["service"][key]))

        pool = redis_as("pool", "state_url")
        aggregator = redis_as("aggregator", "redis_url")
        # Then the pool user reaches client state and nothing else, and enumerates nothing
        pool.set(f"scarlet:{run}:client:0", b"state")
        assert pool.get(f"scarlet:{run}:client:0") == b"state"
        refused = 0
        for attempt in (
            lambda: pool.get(f"scarlet:{run}:aggregator"),
            lambda: pool.hgetall(f"scarlet:{run}:cache:entries"),
            lambda: pool.scan(0),
            lambda: pool.keys("*"),
            lambda: pool.randomkey(),
            lambda: pool.flushall(),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
            refused += 1
        assert refused == 6
        assert "redis_url" not in made.files["pool"].read_text()
        # And the aggregator reaches the run's keys only
        aggregator.set(f"scarlet:{run}:aggregator", b"blob")
        with pytest.raises(redis.exceptions.NoPermissionError):
            aggregator.get("scarlet:another-run:aggregator")
        pool.close()
        aggregator.close()
    finally:
        # When the run's users are deleted
        deleted = delete_users(run, settings)
        admin = redis.Redis.from_url(ADMIN.redis_url)
        admin.delete(f"scarlet:{run}:client:0", f"scarlet:{run}:aggregator")
    # Then no broker or Redis user of the run is left
    assert len(deleted) == 4 + 3  # aggregator, cache, pool, monitoring; 3 Redis users
    assert broker_users(run, ("rabbitmqctl",)) == []
    left = [u.decode() if isinstance(u, bytes) else u for u in admin.acl_users()]
    assert not [u for u in left if u.startswith(run)]
