"""The fault matrix: every fault in the middle of round 2 ends with identical results.

One undisturbed federation of real service processes (``scarlet up``'s
:class:`~scarlet.up.Launcher`: digits, 3 pinned clients, 5 rounds, heartbeat 2 s) is the
reference, shared by every case. Each case runs the same federation again, injects one
fault as soon as round 1 is recorded (round 2 under way; the last row: round 4), lets the
launcher's supervisor start crashed processes again, and compares the finished run with
the reference field by field: accuracies, label and byte counts, accepted uploads (each
client exactly once per round: none lost, none counted twice) and the final cache digest.

Broker and store restarts use PRIVATE instances on free ports (tests/integration has the
helpers); the shared RabbitMQ and Redis are never restarted. Measured times are printed
(``-s``) as one line per case: ``fault-matrix: <case> finished=... identical=... <s> s``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pika
import pytest

from scarlet.up import Launcher
from shared.config import FederationConfig, ServiceSettings
from shared.protocol import routes
from shared.protocol.codec import encode_task
from shared.protocol.messages import TrainTask
from shared.results import RoundRecord
from shared.rounds.aggregator import drawn_public_indices
from shared.state import open_federation_store
from shared.state.base import FederationStore
from shared.transport import open_transport
from shared.transport.topology import declare_topology
from tests.conftest import AMQP_URL, require_rabbitmq, require_redis, require_tool
from tests.integration.test_amqp_reconnect import (
    PrivateRabbitNode,
    _port_open,
    _wait_until,
    running_private_node,
)
from tests.integration.test_redis_durability import PrivateRedis
from tests.system.harness import SMALL_FEDERATION

pytestmark = [pytest.mark.system, pytest.mark.integration]

ROUNDS = 5
FAULT_AFTER = 2  # rounds recorded when the fault hits: round 2 is under way
HEARTBEAT_S = 2
RUN_TIMEOUT_S = 150.0
BASE: dict[str, object] = {**SMALL_FEDERATION, "rounds": ROUNDS, "threads": 1}
SETTINGS: dict[str, object] = {
    "heartbeat_s": HEARTBEAT_S,
    "log_level": "INFO",
    "round_timeout_s": 600.0,  # no deadline: a lost upload would hang, not hide
}
if "verify_senders" in ServiceSettings.model_fields:
    # guest on every node (the sender check has its own tests); the forged row is the
    # task-fit rule's
    SETTINGS["verify_senders"] = False
# wall time; the per-outcome upload counts and the bytes of bodies not aggregated honestly
# record what a fault caused (a redelivered task answered again is a duplicate); the
# accepted uploads are compared below
IGNORED = ("seconds", "phase_seconds", "uploads", "rejected_bytes_up")


def _run_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"  # same length every run: same message sizes


@dataclass
class Federation:
    """One launched federation and the store it records into."""

    launcher: Launcher
    store: FederationStore
    config_path: Path

    @property
    def config(self) -> FederationConfig:
        return self.launcher.config

    def log(self, name: str) -> str:
        return (self.launcher.run_dir / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        child = self.launcher.child(name)
        child.process.send_signal(sig)
        if sig is signal.SIGKILL:
            child.process.wait(10)


@dataclass
class Outcome:
    records: list[RoundRecord]
    digest: str
    version: int
    seconds: float
    restarts: dict[str, int]


def _launch(tmp: Path, broker_url: str = AMQP_URL, redis_url: str | None = None) -> Federation:
    config = FederationConfig(run_id=_run_id(), **BASE)  # type: ignore[arg-type]
    extra: dict[str, object] = {"broker_url": broker_url}
    if redis_url is not None:
        extra["redis_url"] = redis_url
    settings = ServiceSettings(**{**SETTINGS, **extra})  # type: ignore[arg-type]
    launcher = Launcher(config, settings, 0, tmp / "run")
    store = open_federation_store(settings.redis_url, config.run_id, retry_s=30)
    launcher.prepare(store)
    return Federation(launcher, store, launcher.write_config())


QUEUE_SETTLE_S = 8.0
"""How long a new quorum queue needs before a kill -9 of its node cannot lose it.

RabbitMQ 3.10 records a new quorum queue's Ra server in a table it writes to disk a few
seconds later; a broker killed within that window restarts with the queue in its
metadata but no Ra server behind it (every consume times out with 541 INTERNAL_ERROR
after 60 s). A real run declares its queues long before it could matter; this test's
federation reaches round 2 about two seconds after start, so the queues are declared
and left to settle first.
"""


def _settle_topology(fed: Federation, url: str) -> None:
    """Declare the run's queues as the services will, then wait ``QUEUE_SETTLE_S``."""
    transport = open_transport(url)
    try:
        declare_topology(transport, fed.launcher.config, "pinned")
    finally:
        transport.close()
    time.sleep(QUEUE_SETTLE_S)


def _run(fed: Federation, fault: Callable[[Federation], None] | None, at: int) -> Outcome:
    """Start every service, inject ``fault`` once ``at`` rounds are recorded, finish."""
    started = time.monotonic()
    fed.launcher.start_all(fed.config_path)
    injected = fault is None
    try:
        while True:
            done = len(fed.store.results())
            if done >= ROUNDS:
                break
            if not injected and done >= at:
                injected = True
                assert fault is not None
                fault(fed)
            failed = fed.launcher.supervise()  # starts crashed children again
            if failed is not None:
                tail = fed.log(failed.name)[-3000:]
                pytest.fail(f"{failed.name} exited with {failed.process.returncode}:\n{tail}")
            assert time.monotonic() - started < RUN_TIMEOUT_S, f"stuck after {done} rounds"
            time.sleep(0.1)
        restarts = {c.name: c.restarts for c in fed.launcher.children if c.restarts}
        records = [RoundRecord.from_json(json.loads(r)) for r in fed.store.results()]
        snapshot = fed.store.cache_snapshot()
        return Outcome(
            records, snapshot.digest, snapshot.version, time.monotonic() - started, restarts
        )
    finally:
        fed.launcher.stop_all()


def _cleanup(fed: Federation) -> None:
    fed.launcher.fresh = True
    fed.launcher.prepare(fed.store)  # deletes the run's keys, queues and state dirs


def _differences(got: Outcome, want: Outcome, clients: int) -> list[str]:
    """Every field that differs from the reference (empty: identical)."""
    diffs = []
    if len(got.records) != len(want.records):
        diffs.append(f"{len(got.records)} rounds, reference {len(want.records)}")
    for g, w in zip(got.records, want.records, strict=False):
        grow, wrow = g.to_json(), w.to_json()
        for key in wrow:
            if key not in IGNORED and grow.get(key) != wrow[key]:
                diffs.append(f"round {w.round} {key}: {grow.get(key)!r} != {wrow[key]!r}")
        # every client exactly once: nothing lost, nothing counted twice
        if g.uploads.get("accepted") != clients:
            diffs.append(f"round {w.round} accepted uploads {g.uploads}")
    if (got.digest, got.version) != (want.digest, want.version):
        diffs.append(f"cache {got.version}/{got.digest} != {want.version}/{want.digest}")
    return diffs


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    require_rabbitmq()
    require_redis()
    fed = _launch(tmp_path_factory.mktemp("reference"))
    try:
        outcome = _run(fed, None, 0)
        print(f"\nfault-matrix: undisturbed finished=True {outcome.seconds:.1f} s")
        yield outcome
    finally:
        _cleanup(fed)


def _check(name: str, got: Outcome, want: Outcome, clients: int) -> None:
    diffs = _differences(got, want, clients)
    duplicates = [r.uploads.get("duplicate", 0) for r in got.records]
    print(
        f"\nfault-matrix: {name} finished=True identical={not diffs} "
        f"{got.seconds:.1f} s restarts={got.restarts} duplicates per round={duplicates}"
    )
    assert diffs == []


# ------------------------------------------------------------------ faults


def _kill(name: str) -> Callable[[Federation], None]:
    def fault(fed: Federation) -> None:
        time.sleep(0.3)  # well inside round 2: tasks out, training under way
        fed.kill(name)

    return fault


def _pause_worker(fed: Federation) -> None:
    # longer than the heartbeat timeout: the broker drops the frozen worker's connection
    fed.kill("worker-1", signal.SIGSTOP)
    time.sleep(HEARTBEAT_S * 3 + 1)
    fed.kill("worker-1", signal.SIGCONT)


def _forge_task(fed: Federation) -> None:
    # a separate connection, as an intruder on the broker would publish it
    config = fed.config
    task = TrainTask(
        run_id=config.run_id,
        round=999,
        client_id=0,
        request_indices=np.sort(drawn_public_indices(config, 0)[:5]),
        targets=None,
        catch_up=None,
        cache_version=0,
    )
    body = encode_task(task, config.downlink_spec, public_size=config.public_size)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.basic_publish(
            routes.rounds_exchange(config.run_id),
            routes.client_routing_key(0),
            body,
            pika.BasicProperties(delivery_mode=2, headers={"kind": "train_task"}),
        )
    finally:
        connection.close()


def _kill_everything(fed: Federation) -> None:
    time.sleep(0.3)
    for child in list(fed.launcher.children):
        fed.kill(child.name)


@pytest.mark.parametrize(
    ("name", "fault", "at"),
    [
        ("kill -9 aggregator", _kill("aggregator"), FAULT_AFTER),
        ("kill -9 cache service", _kill("cache"), FAULT_AFTER),
        ("kill -9 worker", _kill("worker-1"), FAULT_AFTER),
        ("worker SIGSTOP past the heartbeat", _pause_worker, FAULT_AFTER),
        ("forged task round 999", _forge_task, FAULT_AFTER),
        ("kill -9 every child in the last round", _kill_everything, ROUNDS - 1),
    ],
)
def test_a_fault_in_the_middle_of_a_round_ends_with_the_undisturbed_results(
    tmp_path: Path, reference: Outcome, name: str, fault: Callable[[Federation], None], at: int
):
    # Given the federation of the reference run
    fed = _launch(tmp_path)
    try:
        # When the fault hits mid-round and the supervisor restarts what died
        got = _run(fed, fault, at)
        # Then it finished with the undisturbed run's results
        _check(name, got, reference, fed.config.clients)
        if name.startswith("worker SIGSTOP"):
            assert "reconnected to" in fed.log("worker-1")
        if name.startswith("forged"):
            assert "dead-lettering round=999 client=0" in fed.log("worker-0")
        if name.startswith("kill -9 worker"):
            assert "resumed after round" in fed.log("worker-1")
    finally:
        _cleanup(fed)


# ------------------------------------------------------------------ private servers


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbitNode]:
    with running_private_node("scarlet-fm") as node:
        yield node


def test_a_rabbitmq_restart_mid_round_ends_with_the_undisturbed_results(
    tmp_path: Path, reference: Outcome, private_rabbitmq: PrivateRabbitNode
):
    # Given the federation on a private broker node
    fed = _launch(tmp_path, broker_url=private_rabbitmq.url)
    _settle_topology(fed, private_rabbitmq.url)
    restarted = threading.Event()
    killed_in_round: list[int] = []

    def restart(_: Federation) -> None:
        # kill -9 of the broker's VM: instant (a graceful stop takes seconds, the round
        # would be over), and harsher: only what the broker confirmed is on disk
        pid = private_rabbitmq._pid()
        assert pid is not None
        killed_in_round.append(len(fed.store.results()))
        os.kill(pid, signal.SIGKILL)
        down = time.monotonic()
        _wait_until(lambda: not _port_open(private_rabbitmq.port), 30, "broker down")
        print(f"\nfault-matrix: broker port closed {time.monotonic() - down:.2f} s after kill")

        def start() -> None:
            private_rabbitmq.start()
            restarted.set()

        threading.Thread(target=start, daemon=True).start()

    try:
        # When the broker stops in the middle of round 2 and starts again
        got = _run(fed, restart, FAULT_AFTER)
        # Then every process reconnected and the results are the undisturbed ones
        assert restarted.is_set() and killed_in_round == [FAULT_AFTER]
        _check("RabbitMQ kill -9 + restart", got, reference, fed.config.clients)
        assert got.restarts == {}  # nobody exited for it
    finally:
        if not restarted.wait(60):
            pytest.fail("the private broker did not come back")
        _cleanup(fed)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    require_tool("redis-server", "apt-get install redis-server")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)  # AOF, appendfsync always
    try:
        server.start()
        yield server
    finally:
        server.kill()


def test_a_redis_kill_and_restart_with_aof_mid_round_ends_with_the_undisturbed_results(
    tmp_path: Path, reference: Outcome, private_redis: PrivateRedis
):
    # Given the federation on a private Redis with AOF and appendfsync always
    fed = _launch(tmp_path, redis_url=private_redis.url)

    def crash(_: Federation) -> None:
        time.sleep(0.3)
        private_redis.kill()  # SIGKILL: only what the AOF holds survives
        threading.Timer(3.0, private_redis.start).start()

    try:
        # When Redis dies in the middle of round 2 and is back 3 s later
        got = _run(fed, crash, FAULT_AFTER)
        # Then the services waited for it and the results are the undisturbed ones
        _check("Redis kill -9 + restart (AOF)", got, reference, fed.config.clients)
        assert got.restarts == {}
        # ... and it was felt: the aggregator waited for the store rather than missing it
        assert "unavailable (ConnectionError); retrying for up to" in fed.log("aggregator")
    finally:
        _cleanup(fed)
