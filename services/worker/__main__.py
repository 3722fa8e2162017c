"""``scarlet-worker``: a worker process (composition root).

Subcommands: ``run`` serves tasks until SIGTERM or SIGINT, as one client (``--client K``,
pinned) or any client (``--pool``); ``check-config`` prints the effective configuration.
Parsing, config, logging and exit status: :func:`shared.cli.run_service`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence

from services.worker.clients import PinnedClient, PoolClients
from services.worker.handler import TaskHandler
from services.worker.loop import WorkerLoop
from services.worker.resync import CacheResync
from shared import cli
from shared.config import FederationConfig, ServiceSettings
from shared.errors import AccessRefused, ConfigError, ScarletError
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits
from shared.rounds.setup import apply_threads, build_runtime, prepare_data
from shared.security.roles import sender_identities, user_from_url
from shared.state import open_client_store
from shared.transport.base import Transport
from shared.transport.topology import declare_client_queue, declare_pool_queue

__all__ = ["main", "make_parser"]

logger = logging.getLogger(__name__)


def _flags(name: str, parser: argparse.ArgumentParser) -> None:
    if name != "run":
        return
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--client", type=int, help="pinned mode: serve this client id")
    mode.add_argument("--pool", action="store_true", help="pool mode: serve any client")
    parser.add_argument(
        "--state-dir", help="pinned mode: keep this client's state here (survives restarts)"
    )
    parser.add_argument("--max-tasks", type=int, help="exit after this many tasks")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scarlet-worker`` (``python -m services.worker``)."""
    return cli.make_service_parser(
        "scarlet-worker",
        "SCARLET worker: trains clients and uploads their soft labels.",
        {"run": "serve tasks until SIGTERM/SIGINT"},
        _flags,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scarlet-worker``; returns the process exit status."""
    return cli.run_service(make_parser(), argv, _serve)


def _serve(args: argparse.Namespace, config: FederationConfig, settings: ServiceSettings) -> None:
    if args.client is not None and not 0 <= args.client < config.clients:
        raise ConfigError(f"--client {args.client} outside [0, {config.clients})")
    apply_threads(config)
    data = prepare_data(config)
    # the worker id starts with the broker user: its permissions name its reply queues
    user = user_from_url(settings.broker_url) or "worker"
    worker_id = f"{user}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    senders = sender_identities(settings)
    limits = DecodeLimits(config.public_size, data.num_classes, settings.max_message_bytes)
    with cli.serving(settings, f"scarlet-worker/{worker_id}") as serving:
        transport, run = serving.transport, config.run_id
        if args.pool:
            queue = routes.pool_tasks_queue(run)
            provider: PinnedClient | PoolClients = PoolClients(
                config, data, open_client_store(settings.state_url, run)
            )
            _declare_if_allowed(lambda: declare_pool_queue(transport, config))
            client_id = -1
        else:
            queue = routes.client_tasks_queue(run, args.client)
            _declare_if_allowed(lambda: declare_client_queue(transport, config, args.client))
            store = open_client_store(f"file://{args.state_dir}", run) if args.state_dir else None
            provider = PinnedClient(build_runtime(config, data, args.client), store)
            client_id = args.client
        resync = CacheResync(
            transport, run, client_id, worker_id, limits, settings.rpc_timeout_s, senders
        )
        resync.declare()
        serving.cleanup.callback(
            lambda: _delete_quietly(transport, routes.reply_queue(run, worker_id))
        )
        handler = TaskHandler(provider, transport, limits, resync, serving.metrics, senders)
        logger.info("worker: %s serving %s", worker_id, queue)
        WorkerLoop(handler, transport, queue).run(serving.stop, args.max_tasks)
        logger.info("worker: %s stopping", worker_id)


def _declare_if_allowed(declare: Callable[[], None]) -> None:
    # a least-privilege worker may not declare its task queue (binding it is read on the
    # rounds exchange, which would let it bind any queue to any client's tasks): then the
    # aggregator or ``scarlet provision`` declared it, and get() says so if not
    try:
        declare()
    except AccessRefused:
        logger.info("worker: not allowed to declare the task queue; using the existing one")


def _delete_quietly(transport: Transport, queue: str) -> None:
    with contextlib.suppress(ScarletError):
        transport.delete_queue(queue)


if __name__ == "__main__":
    sys.exit(main())
