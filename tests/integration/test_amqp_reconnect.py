"""AMQP connection behaviour: broker restart, heartbeats, thread confinement.

The restart test runs a PRIVATE RabbitMQ node on free ports with its own directories
(DESIGN §7); the shared node on 5672 is never stopped. The other tests use the shared
node, whose only effect on us is closing our own connection.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from shared.errors import TransportClosed, TransportError, TransportUnavailable
from shared.transport import HEADER_ORIGINAL_QUEUE, HEADER_REJECT_REASON, AmqpTransport, QueueSpec
from tests.conftest import AMQP_URL, require_rabbitmq, skip_or_fail

pytestmark = pytest.mark.integration

NODE_BOOT_S = 60.0  # a cold node needs ~6 s on these 2-core machines; CI may be slower
NODE_STOP_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until(predicate: object, timeout_s: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.2)


@dataclass
class PrivateRabbitNode:
    """A throw-away RabbitMQ node: own name, ports and directories, same Erlang cookie."""

    name: str
    port: int
    dist_port: int
    base: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def pid_file(self) -> Path:
        return self.base / "mnesia" / f"{self.name}.pid"

    def env(self) -> dict[str, str]:
        # the Debian config pins listeners.tcp.local to 5672: our own config file overrides it
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
        }

    def prepare(self) -> None:
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        if os.geteuid() == 0:  # the server drops to user rabbitmq, which must write here
            user = pwd.getpwnam("rabbitmq")
            for path in (self.base, *self.base.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.base.chmod(0o755)

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self.env(),
            check=True,
            timeout=30,
            capture_output=True,
        )
        # rabbitmqctl await_startup fails while the node is still booting: port first
        _wait_until(lambda: _port_open(self.port), NODE_BOOT_S, f"{self.name} listening")
        self._ctl("await_startup", "--timeout", str(int(NODE_BOOT_S)))

    def stop(self) -> None:
        pid = self._pid()
        self._ctl("stop", timeout_s=NODE_STOP_S)
        _wait_until(lambda: not _port_open(self.port), NODE_STOP_S, f"{self.name} closed")
        if pid is not None:  # the same directories are reused: the old VM must be gone
            _wait_until(lambda: not _alive(pid), NODE_STOP_S, f"{self.name} VM exited")

    def destroy(self) -> None:
        """Stop the node however it is doing, then remove its directories."""
        pid = self._pid()
        with contextlib.suppress(Exception):
            self.stop()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)  # our own node's VM, by its pid file
        shutil.rmtree(self.base, ignore_errors=True)

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _ctl(self, *args: str, timeout_s: float = NODE_BOOT_S + 10) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args],
            check=True,
            timeout=timeout_s,
            capture_output=True,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _can_run_private_node() -> str:
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        return "rabbitmq-server is not installed"
    try:
        rabbit_uid = pwd.getpwnam("rabbitmq").pw_uid
    except KeyError:
        return "there is no rabbitmq user"
    if os.geteuid() not in (0, rabbit_uid):
        return "only root or rabbitmq can start a RabbitMQ node"
    return ""


@contextlib.contextmanager
def running_private_node(prefix: str) -> Iterator[PrivateRabbitNode]:
    """A started private RabbitMQ node on free ports, destroyed afterwards.

    Skips locally and fails in CI when this machine cannot run one.
    """
    if reason := _can_run_private_node():
        skip_or_fail(f"cannot start a private RabbitMQ node: {reason}")
    node = PrivateRabbitNode(
        name=f"{prefix}-{uuid.uuid4().hex[:8]}@localhost",
        port=_free_port(),
        dist_port=_free_port(),
        base=Path(tempfile.mkdtemp(prefix="scarlet-rmq-")),
    )
    try:
        node.prepare()
        node.start()
        yield node
    finally:
        node.destroy()


@pytest.fixture
def private_rabbitmq() -> Iterator[PrivateRabbitNode]:
    with running_private_node("scarlet-test") as node:
        yield node


def _drain(transport: AmqpTransport, queue: str, timeout_s: float = 1.0) -> list[bytes]:
    bodies = []
    while (delivery := transport.get(queue, timeout_s=timeout_s)) is not None:
        bodies.append(delivery.body)
        delivery.ack()
    return bodies


def test_messages_survive_a_broker_restart_and_a_connected_client_reconnects(
    private_rabbitmq: PrivateRabbitNode,
):
    # Given persistent messages on a classic and a quorum queue, one of them taken
    node = private_rabbitmq
    client = AmqpTransport(
        node.url, reconnect_attempts=60, reconnect_base_delay_s=0.1, reconnect_max_delay_s=1.0
    )
    impatient = AmqpTransport(node.url, reconnect_attempts=2, reconnect_base_delay_s=0.05)
    classic, quorum = "restart.classic", "restart.quorum"
    client.declare(queues=[QueueSpec(classic), QueueSpec(quorum, quorum=True)])
    bodies = [f"upload-{i}".encode() for i in range(20)]
    for body in bodies:
        client.publish("", classic, body, {"kind": "upload"})
        client.publish("", quorum, body)
    taken = client.get(classic, timeout_s=5.0)
    assert taken is not None

    # When the broker goes down ...
    node.stop()
    # ... a client with a small retry budget gives up, naming the URL without password
    with pytest.raises(TransportUnavailable) as refused:
        impatient.publish("", classic, b"lost?")
    assert f"guest:***@127.0.0.1:{node.port}" in str(refused.value)
    assert "guest:guest" not in str(refused.value)
    # ... and comes back with the same directories
    node.start()

    # Then the client that was connected before reconnects by itself on its next call
    assert _drain(client, classic) == bodies
    assert _drain(client, quorum) == bodies
    assert client.reconnect_count >= 1
    with pytest.raises(TransportClosed):
        taken.ack()  # its channel died with the old connection; it was redelivered above
    client.publish("", classic, b"after restart")
    assert _drain(client, classic) == [b"after restart"]
    client.close()
    impatient.close()


# --- against the shared node ---------------------------------------------------------


@dataclass
class SharedNodeNames:
    """Unique queue and dead-letter names on the shared node, deleted after the test."""

    queue: str
    dead_letter_exchange: str
    dead_letter_queue: str

    def open(self, heartbeat_s: int = 30) -> AmqpTransport:
        return AmqpTransport(
            AMQP_URL,
            heartbeat_s=heartbeat_s,
            dead_letter_exchange=self.dead_letter_exchange,
            dead_letter_queue=self.dead_letter_queue,
        )


@pytest.fixture
def shared_node() -> Iterator[SharedNodeNames]:
    require_rabbitmq()
    prefix = f"test.{uuid.uuid4().hex[:12]}"
    names = SharedNodeNames(f"{prefix}.q", f"{prefix}.dlx", f"{prefix}.dlq")
    yield names
    with names.open() as admin:
        admin.delete_queue(names.queue)
        admin.delete_queue(names.dead_letter_queue)
        admin.delete_exchange(names.dead_letter_exchange)


def test_process_events_keeps_an_idle_connection_alive(shared_node: SharedNodeNames):
    transport = shared_node.open(heartbeat_s=1)
    queue = shared_node.queue
    transport.declare(queues=[QueueSpec(queue)])
    # When idle for 4 heartbeat intervals while serving events
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        transport.process_events(0.5)
    # Then the connection was never lost
    transport.publish("", queue, b"alive")
    assert _drain(transport, queue) == [b"alive"]
    assert transport.reconnect_count == 0
    transport.close()


def test_a_connection_starved_of_heartbeats_is_restored_on_next_use(
    shared_node: SharedNodeNames,
):
    transport = shared_node.open(heartbeat_s=1)
    queue = shared_node.queue
    transport.declare(queues=[QueueSpec(queue)])
    # When the owner blocks without serving events (what training on it would do)
    time.sleep(4.0)  # with heartbeat 1 s the broker drops a silent client within ~3 s
    # Then the broker dropped us, and the next call reconnects and succeeds
    transport.publish("", queue, b"back")
    assert _drain(transport, queue) == [b"back"]
    assert transport.reconnect_count == 1
    transport.close()


def test_only_the_owner_thread_may_use_the_connection(shared_node: SharedNodeNames):
    transport = shared_node.open()
    queue = shared_node.queue
    transport.declare(queues=[QueueSpec(queue)])
    errors: list[BaseException] = []

    def publish_from_elsewhere() -> None:
        try:
            transport.publish("", queue, b"x")
        except TransportError as e:
            errors.append(e)

    worker = threading.Thread(target=publish_from_elsewhere)
    worker.start()
    worker.join()
    assert len(errors) == 1 and "thread" in str(errors[0])
    assert _drain(transport, queue, timeout_s=0.2) == []
    transport.close()


def test_messages_the_broker_dead_letters_carry_the_same_headers(shared_node: SharedNodeNames):
    # Given a queue declared by us, and a foreign client (plain pika) that rejects
    transport = shared_node.open()
    queue = shared_node.queue
    transport.declare(queues=[QueueSpec(queue)])
    transport.publish("", queue, b"foreign reject", {"kind": "task"})
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    method, _, _ = channel.basic_get(queue)
    # When the broker dead-letters it through the queue's x-dead-letter-exchange
    channel.basic_reject(method.delivery_tag, requeue=False)
    connection.close()
    # Then the dead letter exposes the origin under our header names
    dead = transport.get(transport.dead_letters(), timeout_s=2.0)
    assert dead is not None
    assert dead.headers["kind"] == "task"
    assert dead.headers[HEADER_ORIGINAL_QUEUE] == queue
    assert dead.headers[HEADER_REJECT_REASON] == "rejected"
    dead.ack()
    transport.close()
