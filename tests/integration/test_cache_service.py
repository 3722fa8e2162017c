"""Cache-sync RPC end to end: a real Redis store, the cache service on RabbitMQ, a replica.

A ``ServerCache`` is driven through rounds and every commit goes to a Redis
``FederationStore`` exactly as the aggregator commits it. ``CacheService.serve_forever``
runs in a thread with its own AMQP connection (pika connections are per thread); the
test thread plays the worker with ``CacheResync`` on another connection. Every test uses
its own run id, dead-letter exchange and queue, and removes them afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from services.cache.__main__ import main
from services.cache.service import CacheService
from services.worker.resync import CacheResync
from shared.cache_policy import NEVER, ClientCache, ServerCache
from shared.digests import EMPTY_DIGEST
from shared.errors import CacheDesync, ScarletError, StoreUnavailable, TransportError
from shared.protocol.codec import DecodeLimits
from shared.protocol.routes import CACHE_RPC_KEY, cache_rpc_exchange, cache_rpc_queue, reply_queue
from shared.state import CacheSnapshot, CacheUpdate, FederationStore, RedisFederationStore
from shared.transport import HEADER_ORIGINAL_QUEUE, AmqpTransport, ExchangeSpec, QueueSpec
from tests.arrays import softmax_rows
from tests.conftest import AMQP_URL, require_rabbitmq, require_redis

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("SCARLET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
P, C, D = 2000, 10, 2
LIMITS = DecodeLimits(public_size=P, num_classes=C)
RPC_TIMEOUT_S = 10.0
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- federation side


@dataclass
class Federation:
    """A server cache mirrored into a real Redis store, commit by commit."""

    store: RedisFederationStore
    server: ServerCache = field(default_factory=lambda: ServerCache(P, C))
    generator: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    next_round: int = 0

    def run_rounds(self, rounds: int, drawn_per_round: int = 600) -> None:
        for _ in range(rounds):
            t = self.next_round
            drawn = self.generator.permutation(P)[:drawn_per_round]
            plan = self.server.plan_requests(drawn, now=t, duration=D)
            fresh = softmax_rows(self.generator, plan.requested.size, C, scale=3)
            before = self.server.written.copy()
            commit = self.server.commit(plan, fresh, now=t, duration=D)
            self.store.commit_round(t, b"aggregator", self._update(commit.indices, before, t), C)
            self.next_round += 1

    def _update(self, indices: np.ndarray, before: np.ndarray, t: int) -> CacheUpdate:
        indices = np.sort(indices)
        written = self.server.written[indices]
        set_indices = indices[written == t]
        cleared = indices[(written == NEVER) & (before[indices] != NEVER)]
        return CacheUpdate(
            version=self.server.version,
            digest=self.server.digest(),
            set_indices=set_indices,
            set_written=self.server.written[set_indices],
            set_labels=self.server.labels[set_indices],
            clear_indices=cleared,
        )

    def assert_replica_equal(self, cache: ClientCache) -> None:
        assert np.array_equal(cache.written, self.server.written)
        present = self.server.written != NEVER
        assert np.array_equal(cache.labels[present], self.server.labels[present])  # bit-exact
        assert not bool(cache.labels[~present].any())
        assert cache.digest() == self.server.digest()


# ---------------------------------------------------------------------- broker side


@dataclass
class Names:
    run_id: str
    dead_letter_exchange: str
    dead_letter_queue: str

    def transport(self) -> AmqpTransport:
        return AmqpTransport(
            AMQP_URL,
            dead_letter_exchange=self.dead_letter_exchange,
            dead_letter_queue=self.dead_letter_queue,
        )


class ServiceThread:
    """``CacheService.serve_forever`` in a thread that owns its own connection."""

    def __init__(self, names: Names, store: FederationStore) -> None:
        self.names, self.store = names, store
        self.stop, self.ready = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.service: CacheService | None = None
        self.thread = threading.Thread(target=self._run, name="cache-service", daemon=True)

    def start(self) -> CacheService:
        self.thread.start()
        assert self.ready.wait(10), "the cache service did not start"
        if self.error is not None:
            raise self.error
        assert self.service is not None
        return self.service

    def _run(self) -> None:
        try:
            with self.names.transport() as transport:
                self.service = CacheService(transport, self.store, self.names.run_id, LIMITS)
                self.service.declare()
                self.ready.set()
                self.service.serve_forever(self.stop)
        except BaseException as e:  # reported by close()
            self.error = e
            self.ready.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the cache service did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def names() -> Iterator[Names]:
    require_rabbitmq()
    require_redis()
    prefix = f"test-cache-{uuid.uuid4().hex[:12]}"
    names = Names(prefix, f"{prefix}.dlx", f"{prefix}.dlq")
    yield names
    with names.transport() as admin:
        for queue in (cache_rpc_queue(prefix), reply_queue(prefix, "w1"), names.dead_letter_queue):
            admin.delete_queue(queue)
        admin.delete_exchange(names.dead_letter_exchange)


@pytest.fixture
def federation(names: Names) -> Iterator[Federation]:
    store = RedisFederationStore(REDIS_URL, names.run_id, log_versions=16)
    yield Federation(store)
    store.delete_all()
    store.close()


@pytest.fixture
def start_service(names: Names) -> Iterator[Callable[[FederationStore], CacheService]]:
    started: list[ServiceThread] = []

    def start(store: FederationStore) -> CacheService:
        started.append(ServiceThread(names, store))
        return started[-1].start()

    yield start
    for service in started:
        service.close()


@pytest.fixture
def worker(names: Names) -> Iterator[tuple[AmqpTransport, CacheResync]]:
    with names.transport() as transport:
        resync = CacheResync(transport, names.run_id, 1, "w1", LIMITS, RPC_TIMEOUT_S)
        resync.declare()
        yield transport, resync


class ForgedDigestStore:
    """A store whose answers carry a digest that matches nothing."""

    def __init__(self, inner: FederationStore) -> None:
        self.inner = inner

    def cache_version(self) -> int:
        return self.inner.cache_version()

    def cache_snapshot(self) -> CacheSnapshot:
        return self._forge(self.inner.cache_snapshot())

    def cache_changes_since(self, version: int) -> CacheSnapshot | None:
        changes = self.inner.cache_changes_since(version)
        return None if changes is None else self._forge(changes)

    @staticmethod
    def _forge(snapshot: CacheSnapshot) -> CacheSnapshot:
        return CacheSnapshot(
            snapshot.version,
            "0" * 64,
            snapshot.full,
            snapshot.indices,
            snapshot.written,
            snapshot.labels,
            snapshot.cleared,
        )


class DownStore:
    """A store whose Redis is unreachable."""

    def cache_version(self) -> int:
        raise StoreUnavailable("redis at 127.0.0.1:1/0 is unreachable")

    def cache_snapshot(self) -> CacheSnapshot:
        raise StoreUnavailable("redis at 127.0.0.1:1/0 is unreachable")

    def cache_changes_since(self, version: int) -> CacheSnapshot | None:
        raise StoreUnavailable("redis at 127.0.0.1:1/0 is unreachable")


# ---------------------------------------------------------------------- tests


def _expect_stats(service: CacheService, expected: dict[str, int]) -> None:
    """The service counts a request after acking it, i.e. just after the worker has its
    reply: give its thread a moment."""
    deadline = time.monotonic() + 5
    while service.stats != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.stats == expected


def test_a_full_snapshot_installs_bit_exactly_and_verifies(federation, start_service, worker):
    # Given a store after four rounds (with expiries) and a stale, garbage replica
    federation.run_rounds(4)
    service = start_service(federation.store)
    _, resync = worker
    cache = ClientCache(P, C)
    cache.written[:5] = 99
    cache.labels[:5] = 0.2
    # When
    version = resync.resync(cache, None)
    # Then
    assert version == federation.server.version == 4
    federation.assert_replica_equal(cache)
    _expect_stats(service, {"answered": 1})


def test_changes_since_an_older_version_bring_a_replica_up_to_date(
    federation, start_service, worker
):
    # Given a replica verified at version 2, then three more rounds (entries set and cleared)
    federation.run_rounds(2)
    service = start_service(federation.store)
    _, resync = worker
    cache = ClientCache(P, C)
    assert resync.resync(cache, None) == 2
    federation.run_rounds(3)
    # When
    changes = resync.fetch(2)
    resync.install(cache, changes)
    # Then: only the changes travelled, and the replica equals the server cache
    assert not changes.full and changes.cleared.size > 0
    assert changes.indices.size < int((federation.server.written != NEVER).sum())
    assert changes.version == 5
    federation.assert_replica_equal(cache)
    _expect_stats(service, {"answered": 2})


def test_changes_applied_to_a_replica_not_at_that_version_fall_back_to_a_full_snapshot(
    federation, start_service, worker
):
    # Given an empty replica that claims to be at version 2
    federation.run_rounds(4)
    service = start_service(federation.store)
    _, resync = worker
    cache = ClientCache(P, C)
    # When
    version = resync.resync(cache, 2)
    # Then: the changes failed the digest, the full snapshot repaired it
    assert version == 4
    federation.assert_replica_equal(cache)
    _expect_stats(service, {"answered": 2})


@pytest.mark.parametrize("known_version", [None, 1])
def test_a_forged_digest_raises_cache_desync_and_leaves_the_replica_empty(
    federation, start_service, worker, known_version
):
    # Given a service whose answers carry a wrong digest
    federation.run_rounds(2)
    service = start_service(ForgedDigestStore(federation.store))
    _, resync = worker
    cache = ClientCache(P, C)
    cache.written[3] = 0
    cache.labels[3, 0] = 1.0
    # When / Then
    with pytest.raises(CacheDesync, match="replica digest .* replica emptied"):
        resync.resync(cache, known_version)
    assert bool((cache.written == NEVER).all()) and not bool(cache.labels.any())
    assert cache.digest() == EMPTY_DIGEST
    # a failed changes install is retried once with a full snapshot, never more
    _expect_stats(service, {"answered": 1 if known_version is None else 2})


def test_a_malformed_request_is_dead_lettered_and_the_service_keeps_answering(
    names, federation, start_service, worker
):
    # Given
    federation.run_rounds(1)
    service = start_service(federation.store)
    transport, resync = worker
    queue = cache_rpc_queue(names.run_id)
    # When
    transport.publish("", queue, b"\x93not a request", {"request-id": "x"})
    cache = ClientCache(P, C)
    version = resync.resync(cache, None)
    # Then
    dead = transport.get(transport.dead_letters(), timeout_s=5)
    assert dead is not None
    assert dead.body == b"\x93not a request"
    assert dead.headers[HEADER_ORIGINAL_QUEUE] == queue
    dead.ack()
    assert version == 1
    federation.assert_replica_equal(cache)
    _expect_stats(service, {"invalid": 1, "answered": 1})


def test_stale_replies_are_skipped_and_acked(federation, start_service, worker):
    # Given a reply queue holding an answer to an earlier request
    federation.run_rounds(1)
    start_service(federation.store)
    transport, resync = worker
    transport.publish("", resync.reply_queue, b"old reply", {"request-id": "f" * 32})
    # When
    cache = ClientCache(P, C)
    assert resync.resync(cache, None) == 1
    # Then
    federation.assert_replica_equal(cache)
    assert transport.purge(resync.reply_queue) == 0


def test_a_store_outage_is_answered_with_an_error_instead_of_silence(start_service, worker):
    # Given
    service = start_service(DownStore())
    _, resync = worker
    cache = ClientCache(P, C)
    # When / Then: the worker learns it at once instead of waiting out its timeout
    started = time.monotonic()
    with pytest.raises(CacheDesync, match="could not answer: store unavailable"):
        resync.resync(cache, None)
    assert time.monotonic() - started < RPC_TIMEOUT_S / 2
    _expect_stats(service, {"store_unavailable": 1})


def test_an_empty_store_is_answered_with_an_empty_snapshot(federation, start_service, worker):
    start_service(federation.store)
    _, resync = worker
    cache = ClientCache(P, C)
    assert resync.resync(cache, None) == 0
    assert cache.digest() == EMPTY_DIGEST


def test_without_a_cache_service_the_worker_gets_a_clear_transport_error(names, worker):
    transport, _ = worker
    impatient = CacheResync(transport, names.run_id, 1, "w1", LIMITS, timeout_s=0.5)
    # no RPC queue at all: the request cannot even be routed
    with pytest.raises(TransportError, match="is the cache service running"):
        impatient.fetch(None)
    # a queue but nobody serving it: the wait times out
    rpc = cache_rpc_exchange(names.run_id)
    transport.declare(
        [ExchangeSpec(rpc)], [QueueSpec(cache_rpc_queue(names.run_id), ((rpc, CACHE_RPC_KEY),))]
    )
    with pytest.raises(TransportError, match=r"no reply .* within 0.5 s"):
        impatient.fetch(None)


# ---------------------------------------------------------------------- the process


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_check_config_accepts_a_valid_file_and_rejects_an_unknown_key(tmp_path, capsys):
    good = _write(
        tmp_path / "good.toml",
        'run_id = "r1"\ndataset = "cifar100"\npublic_size = 500\npublic_per_round = 100\n'
        '[service]\nbroker_url = "amqp://guest:secret@127.0.0.1:5672/%2F"\n',
    )
    assert main(["check-config", "--config", str(good), "--rpc-timeout-s", "5"]) == 0
    out = capsys.readouterr().out
    assert '"num_classes": 100' in out and '"public_size": 500' in out
    assert "secret" not in out and '"rpc_timeout_s": 5.0' in out
    bad = _write(tmp_path / "bad.toml", 'run_id = "r1"\nbogus_key = 3\n')
    assert main(["check-config", "--config", str(bad)]) != 0
    assert "bogus_key" in capsys.readouterr().err
    assert main(["check-config", "--dataset", "imagenet"]) != 0
    bad_service = _write(tmp_path / "bad2.toml", "[service]\nbroker = 1\n")
    assert main(["check-config", "--config", str(bad_service)]) != 0


def test_the_run_command_serves_until_sigterm_and_exits_zero(names, worker):
    env = {
        **os.environ,
        "SCARLET_BROKER_URL": AMQP_URL,
        "SCARLET_REDIS_URL": REDIS_URL,
        "SCARLET_RUN_ID": names.run_id,
        "SCARLET_VERIFY_SENDERS": "false",  # the test's worker is guest, as the service
    }
    # a federation digits can hold (the configuration refuses one larger than its split)
    flags = ["--public-size", str(P), "--public-per-round", "10", "--dataset", "mnist-5k"]
    flags += ["--clients", "2", "--samples-per-client", "100"]
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cache", "run", *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _, resync = worker
        cache = ClientCache(P, C)
        deadline = time.monotonic() + 30
        while True:  # until the process has declared its queue and answers
            try:
                assert resync.resync(cache, None) == 0
                break
            except ScarletError as e:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    output, _ = process.communicate(timeout=15)
                    raise AssertionError(f"cache service: {output.decode()[-2000:]}") from e
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0, output.decode()
        assert b"guest:guest" not in output  # the effective config is logged redacted
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
