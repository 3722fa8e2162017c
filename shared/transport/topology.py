"""The broker topology of a federation, declared idempotently by whoever needs it.

Tasks are published to the rounds exchange with the client's routing key. In *pinned*
mode each client has its own durable queue bound to its key; in *pool* mode one shared
queue is bound to every client's key, so the aggregator publishes the same way in both.
"""

from __future__ import annotations

from shared.config import FederationConfig
from shared.protocol import routes
from shared.transport.base import ExchangeSpec, QueueSpec, Transport

__all__ = [
    "CACHE_RPC_MAX_LENGTH",
    "RUN_QUEUE_EXPIRES_S",
    "cache_rpc_queue_spec",
    "declare_client_queue",
    "declare_pool_queue",
    "declare_topology",
]

RUN_QUEUE_EXPIRES_S = 7 * 24 * 3600.0
"""A run's queues go away a week after their last use (no consumer, no get): a finished
or abandoned run leaves nothing behind for long; ``scarlet down RUN_ID`` removes them at
once. Every process declares them with the same arguments, or RabbitMQ refuses them."""

CACHE_RPC_MAX_LENGTH = 1_000
"""Cache-sync requests waiting at most; more are refused at publish (the worker counts
``scarlet_cache_resyncs_total{kind="refused"}`` and retries with the task), so a flood
cannot grow the queue without bound."""


def cache_rpc_queue_spec(run: str) -> QueueSpec:
    """The bounded cache-RPC queue, as the cache service declares it."""
    return QueueSpec(
        routes.cache_rpc_queue(run),
        ((routes.cache_rpc_exchange(run), routes.CACHE_RPC_KEY),),
        expires_s=RUN_QUEUE_EXPIRES_S,
        max_length=CACHE_RPC_MAX_LENGTH,
        reject_overflow=True,
    )


def declare_topology(transport: Transport, config: FederationConfig, worker_mode: str) -> None:
    """Declare the exchanges, the task queue(s) and the upload queue (bound to its exchange).

    Also the cache-rpc and replies exchanges, so that a worker that starts before the cache
    service can bind its reply queue: workers declare nothing but their reply queue.
    """
    run = config.run_id
    exchange = routes.rounds_exchange(run)
    uploads = routes.uploads_exchange(run)
    transport.declare(
        [
            ExchangeSpec(exchange),
            ExchangeSpec(uploads),
            ExchangeSpec(routes.cache_rpc_exchange(run)),
            ExchangeSpec(routes.replies_exchange(run)),
        ],
        [
            QueueSpec(
                routes.uploads_queue(run),
                ((uploads, routes.UPLOAD_KEY),),
                quorum=True,
                expires_s=RUN_QUEUE_EXPIRES_S,
            )
        ],
    )
    if worker_mode == "pool":
        declare_pool_queue(transport, config)
        return
    transport.declare(
        queues=[
            QueueSpec(
                routes.client_tasks_queue(run, k),
                bindings=((exchange, routes.client_routing_key(k)),),
                expires_s=RUN_QUEUE_EXPIRES_S,
            )
            for k in range(config.clients)
        ]
    )


def declare_pool_queue(transport: Transport, config: FederationConfig) -> None:
    """Declare the shared pool queue, with its one binding (the pool's routing key)."""
    run = config.run_id
    exchange = routes.rounds_exchange(run)
    binding = ((exchange, routes.POOL_KEY),)
    transport.declare(
        [ExchangeSpec(exchange)],
        [QueueSpec(routes.pool_tasks_queue(run), bindings=binding, expires_s=RUN_QUEUE_EXPIRES_S)],
    )


def declare_client_queue(transport: Transport, config: FederationConfig, client_id: int) -> None:
    """Declare one pinned client's queue (a worker may start before the aggregator)."""
    run = config.run_id
    exchange = routes.rounds_exchange(run)
    binding = ((exchange, routes.client_routing_key(client_id)),)
    transport.declare(
        [ExchangeSpec(exchange)],
        [
            QueueSpec(
                routes.client_tasks_queue(run, client_id), binding, expires_s=RUN_QUEUE_EXPIRES_S
            )
        ],
    )
