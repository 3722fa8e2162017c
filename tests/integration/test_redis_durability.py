"""A commit acknowledged by the Redis store survives a hard crash of Redis.

Runs a private ``redis-server`` (own port, own ``--dir``, AOF with ``appendfsync always``)
so that killing it never touches the shared instance. Also checks that an unreachable or
unresponsive Redis turns into ``StoreUnavailable`` quickly and without leaking the
password.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from shared.cache_policy import ServerCache
from shared.errors import StoreUnavailable
from shared.state import CacheUpdate, RedisFederationStore
from tests.arrays import softmax_rows
from tests.conftest import require_tool

pytestmark = pytest.mark.integration

START_WAIT_S = 10.0
P, C, D = 30, 4, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server child process on a free port with its own data folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.folder),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + START_WAIT_S
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:  # refused, or still loading the AOF
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                        pytest.fail(f"private redis-server did not start:\n{log}")
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no final AOF rewrite."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    require_tool("redis-server", "apt-get install redis-server")
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def _commits(rounds: int) -> list[CacheUpdate]:
    g = np.random.default_rng(11)
    cache = ServerCache(P, C)
    out = []
    for t in range(rounds):
        before = cache.written.copy()
        plan = cache.plan_requests(g.permutation(P)[:12], now=t, duration=D)
        fresh = softmax_rows(g, plan.requested.size, C)
        cache.commit(plan, fresh, now=t, duration=D)
        set_idx = np.flatnonzero(cache.written != before)
        set_idx = set_idx[cache.written[set_idx] == t]
        clear_idx = np.flatnonzero((before >= 0) & (cache.written < 0))
        update = CacheUpdate(
            cache.version,
            cache.digest(),
            set_idx,
            cache.written[set_idx],
            cache.labels[set_idx],
            clear_idx,
        )
        out.append(update)
    return out


def test_committed_state_survives_a_sigkill_of_redis(private_redis: PrivateRedis):
    # Given: two committed rounds and an upload of the third, acknowledged by the store
    private_redis.start()
    store = RedisFederationStore(
        private_redis.url, f"dur-{uuid.uuid4().hex}", read_attempts=2, retry_backoff_s=0.01
    )
    try:
        commits = _commits(2)
        for round_no, update in enumerate(commits):
            store.commit_round(round_no, b"aggregator after round %d" % round_no, update, C)
        assert store.record_upload(2, 5, b"\x00upload\xff")
        before = store.cache_snapshot()
        # When: Redis dies hard
        private_redis.kill()
        probe = RedisFederationStore(private_redis.url, store.run_id, read_attempts=2, retry_s=0)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            probe.cache_version()  # another store: `store` keeps its now stale socket
        assert time.monotonic() - started < 5.0
        probe.close()
        # ... and comes back on the same folder
        private_redis.start()
        # Then: the same store object reconnects (a write first: no stale pooled socket)
        assert store.record_upload(2, 6, b"after the restart")
        # ... and everything acknowledged before the crash is there
        after = store.cache_snapshot()
        assert after.version == store.cache_version() == 2
        assert after.digest == before.digest == commits[-1].digest
        assert np.array_equal(after.indices, before.indices)
        assert np.array_equal(after.written, before.written)
        assert np.array_equal(after.labels, before.labels)
        assert store.load_aggregator() == b"aggregator after round 1"
        assert store.uploads(2) == {5: b"\x00upload\xff", 6: b"after the restart"}
        changes = store.cache_changes_since(0)
        assert changes is not None and np.array_equal(changes.indices, after.indices)
    finally:
        if private_redis.process is not None and private_redis.process.poll() is None:
            store.delete_all()
        store.close()


def test_a_dead_port_raises_store_unavailable_quickly_without_the_password():
    # Given: nothing listens on the port
    port = _free_port()
    store = RedisFederationStore(
        f"redis://:s3cret-pw@127.0.0.1:{port}/0", "dead", connect_timeout_s=0.5, retry_s=0
    )
    try:
        for call in (
            store.cache_version,
            store.cache_snapshot,
            lambda: store.record_upload(0, 0, b"x"),
        ):
            # When
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                call()
            # Then
            assert time.monotonic() - started < 3.0
            assert f"127.0.0.1:{port}" in str(raised.value)
            assert "s3cret" not in str(raised.value)
    finally:
        store.close()


def test_a_server_that_never_answers_raises_store_unavailable_within_the_timeouts():
    # Given: a socket that accepts connections (kernel backlog) but never replies
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = RedisFederationStore(
            f"redis://127.0.0.1:{port}/0",
            "mute",
            socket_timeout_s=0.3,
            connect_timeout_s=0.3,
            read_attempts=2,
            retry_backoff_s=0.01,
            retry_s=0,
        )
        try:
            # When
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.load_aggregator()
            # Then: two attempts of one timeout each, plus slack
            assert time.monotonic() - started < 2.0
        finally:
            store.close()


def test_every_store_call_rides_out_a_redis_restart_within_the_retry_budget(
    private_redis: PrivateRedis,
):
    # Given: a store with a record acknowledged just before Redis is killed hard
    private_redis.start()
    store = RedisFederationStore(
        private_redis.url, f"out-{uuid.uuid4().hex}", retry_s=20, retry_backoff_s=0.02
    )
    try:
        assert store.record_upload(0, 1, b"acked before the crash")
        private_redis.kill()
        # When: Redis is down for about a second while a read and writes are in flight
        restart = threading.Timer(1.0, private_redis.start)
        restart.start()
        started = time.monotonic()
        try:
            uploads = store.uploads(0)  # a read: retried
            added = store.record_upload(0, 2, b"after")  # HSETNX: waits for PING, sent once
            store.append_result('{"round": 0}')  # RPUSH: the same
            store.save_aggregator(b"blob")  # SET: retried
        finally:
            restart.join()
        # Then: no StoreUnavailable, nothing lost, nothing applied twice
        assert 0.5 < time.monotonic() - started < 15.0
        assert uploads == {1: b"acked before the crash"}
        assert added
        assert store.uploads(0) == {1: b"acked before the crash", 2: b"after"}
        assert store.results() == ['{"round": 0}']
        assert store.load_aggregator() == b"blob"
    finally:
        if private_redis.process is not None and private_redis.process.poll() is None:
            store.delete_all()
        store.close()


def test_a_store_gives_up_with_store_unavailable_when_the_budget_is_spent(
    private_redis: PrivateRedis,
):
    # Given: a store with a short budget and a Redis that does not come back
    private_redis.start()
    store = RedisFederationStore(private_redis.url, "gone", retry_s=0.5, retry_backoff_s=0.02)
    try:
        store.cache_version()
        private_redis.kill()
        # When
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable for 0.5 s"):
            store.record_upload(0, 0, b"x")
        # Then: it waited for the budget, not much longer
        assert 0.4 < time.monotonic() - started < 5.0
    finally:
        store.close()
