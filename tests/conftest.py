"""Shared pytest helpers and fixtures. Each block below has an owner; append, don't mix."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Unpack

import pytest

from shared.config import FederationConfig
from shared.errors import ScarletError
from shared.transport import AmqpTransport, InMemoryTransport, Transport, TransportOptions

# ======================================================================================
# Real servers (owner: shared.transport). Tests that need RabbitMQ or Redis call these
# first: locally they skip when the server is down, in CI (env CI set) they fail.
# ======================================================================================

SERVICE_WAIT_S = 10.0
AMQP_URL = os.environ.get("SCARLET_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@functools.cache
def _port_open(host: str, port: int, wait_s: float) -> bool:
    """Poll a TCP port for up to ``wait_s`` (cached: a down server costs one wait per run)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)


def running_in_ci() -> bool:
    """True when the env var CI is set to something other than empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_service(name: str, host: str, port: int, wait_s: float, start_hint: str) -> None:
    if _port_open(host, port, wait_s):
        return
    message = (
        f"{name} is not reachable on {host}:{port} after waiting {wait_s:.0f} s;"
        f" start it with: {start_hint}"
    )
    if running_in_ci():
        pytest.fail(f"{message} (CI is set: a missing server is a failure)", pytrace=False)
    pytest.skip(message)


def skip_or_fail(message: str) -> None:
    """Skip locally, fail in CI: what the test needs is missing on this machine."""
    if running_in_ci():
        pytest.fail(f"{message} (CI is set: a missing prerequisite is a failure)", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, install_hint: str) -> str:
    """The path of executable ``name``; :func:`skip_or_fail` when it is not installed."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed: {install_hint}")
    assert path is not None
    return path


def require_rabbitmq(host: str = "127.0.0.1", port: int = 5672) -> None:
    """Skip (locally) or fail (in CI) unless RabbitMQ accepts connections."""
    _require_service("RabbitMQ", host, port, SERVICE_WAIT_S, "rabbitmq-server -detached")


def require_redis(host: str = "127.0.0.1", port: int = 6379) -> None:
    """Skip (locally) or fail (in CI) unless Redis accepts connections."""
    _require_service(
        "Redis", host, port, SERVICE_WAIT_S, "redis-server --daemonize yes (see DESIGN §7)"
    )


# ======================================================================================
# Transport fixtures (owner: shared.transport)
# ======================================================================================


class TransportFactory:
    """Opens clients of one backend that share a broker; names are unique per test.

    Every client gets a dead-letter exchange and queue private to the test, so dead
    letters of concurrent test runs never mix. ``cleanup`` closes the clients and, on
    AMQP, deletes every queue and exchange named through this factory.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        # how long a test watches for "nothing arrives": memory is synchronous, a broker
        # hands over a queued message within milliseconds
        self.quiet_s = 0.2 if kind == "amqp" else 0.02
        self.prefix = f"test.{uuid.uuid4().hex[:12]}"
        self.dead_letter_exchange = f"{self.prefix}.dlx"
        self.dead_letter_queue = f"{self.prefix}.dlq"
        self._queues: list[str] = [self.dead_letter_queue]
        self._exchanges: list[str] = [self.dead_letter_exchange]
        self._opened: list[Transport] = []
        self._memory_root: InMemoryTransport | None = None

    def __call__(self, **opts: Unpack[TransportOptions]) -> Transport:
        transport = self._open(**opts)
        self._opened.append(transport)
        return transport

    def queue_name(self, what: str = "q") -> str:
        name = f"{self.prefix}.{what}.{len(self._queues)}"
        self._queues.append(name)
        return name

    def exchange_name(self, what: str = "x") -> str:
        name = f"{self.prefix}.{what}.{len(self._exchanges)}"
        self._exchanges.append(name)
        return name

    def _open(self, **opts: Unpack[TransportOptions]) -> Transport:
        if self.kind == "amqp":
            options: TransportOptions = {
                "dead_letter_exchange": self.dead_letter_exchange,
                "dead_letter_queue": self.dead_letter_queue,
                **opts,
            }
            return AmqpTransport(AMQP_URL, **options)
        if self._memory_root is None:
            self._memory_root = InMemoryTransport(
                dead_letter_exchange=self.dead_letter_exchange,
                dead_letter_queue=self.dead_letter_queue,
            )
        return self._memory_root.connect(
            prefetch=opts.get("prefetch"), max_message_bytes=opts.get("max_message_bytes")
        )

    def cleanup(self) -> None:
        for transport in self._opened:
            # a test may have broken a client on purpose; the deletion below still runs
            with contextlib.suppress(ScarletError):
                transport.close()
        if self.kind != "amqp":
            return
        with AmqpTransport(
            AMQP_URL,
            dead_letter_exchange=self.dead_letter_exchange,
            dead_letter_queue=self.dead_letter_queue,
        ) as admin:
            for queue in self._queues:
                admin.delete_queue(queue)
            for exchange in self._exchanges:
                admin.delete_exchange(exchange)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.integration)])
def transport_factory(request: pytest.FixtureRequest) -> Iterator[TransportFactory]:
    """A ``TransportFactory`` per backend; the AMQP case needs the local RabbitMQ."""
    kind: str = request.param
    if kind == "amqp":
        require_rabbitmq()
    factory = TransportFactory(kind)
    yield factory
    factory.cleanup()


# ======================================================================================
# Process-wide torch settings (owner: the federation tests). A test that changes torch's
# thread count (the experiments harness, threads=... configs) must not leak it into the
# next test: float results depend on it.
# ======================================================================================


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ======================================================================================
# Tiny federations for unit tests of the services' logic (owner: tests/unit)
# ======================================================================================

TINY_FEDERATION: dict[str, object] = dict(
    dataset="digits",
    model="mlp",
    samples_per_client=60,
    test_per_client=10,
    local_epochs=1,
    distill_epochs=1,
    server_distill_epochs=1,
    threads=1,
)
"""Digits with an MLP and one epoch of everything: a round takes well under a second."""


def tiny_config(**overrides: object) -> FederationConfig:
    """A :data:`TINY_FEDERATION` configuration with ``overrides`` applied."""
    return FederationConfig(**{**TINY_FEDERATION, **overrides})
