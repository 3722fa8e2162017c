"""``scarlet down RUN_ID``: remove one federation's queues, exchanges and Redis keys.

What belongs to a run is a function of its run id and client count (the names come from
:mod:`shared.protocol.routes`); :func:`run_resources` lists them without I/O and
:func:`tear_down` deletes them. Only that run's names are touched: the broker's shared
dead-letter exchange and queue stay (other runs use them), and in Redis only the keys
``scarlet:<run>:*`` go (a run id holds no ``:`` or glob character, so that pattern
matches no other run's keys). A worker's reply queue is named after the worker, which
the broker cannot be asked about over AMQP: the ones named in ``reply_workers`` are
deleted, the others expire by themselves after an idle hour (``x-expires``).

Deleting a queue or an exchange that does not exist is not an error on RabbitMQ, so
``down`` can be run again, or on a run that never started.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import FederationConfig, ServiceSettings
from shared.protocol import routes
from shared.state.base import check_run_id

__all__ = ["RunResources", "run_resources", "tear_down"]


@dataclass(frozen=True, slots=True)
class RunResources:
    """The broker objects and the Redis key pattern of one run.

    Attributes:
        queues: queue names (consumers first: tasks, uploads, cache RPC, replies).
        exchanges: exchange names.
        key_pattern: the Redis SCAN pattern of the run's keys.
    """

    queues: tuple[str, ...]
    exchanges: tuple[str, ...]
    key_pattern: str


def run_resources(run_id: str, clients: int, reply_workers: tuple[str, ...] = ()) -> RunResources:
    """Everything ``scarlet down`` removes for ``run_id`` (pure: no I/O).

    Args:
        run_id: the run.
        clients: K; pinned mode has one task queue per client.
        reply_workers: worker ids whose reply queues to delete too.

    Raises:
        ValueError: an unsafe run id or a negative client count.
    """
    check_run_id(run_id)
    if clients < 0:
        raise ValueError(f"clients must be >= 0, got {clients}")
    queues = (
        *(routes.client_tasks_queue(run_id, k) for k in range(clients)),
        routes.pool_tasks_queue(run_id),
        routes.uploads_queue(run_id),
        routes.cache_rpc_queue(run_id),
        *(routes.reply_queue(run_id, w) for w in reply_workers),
    )
    exchanges = (
        routes.rounds_exchange(run_id),
        routes.uploads_exchange(run_id),
        routes.cache_rpc_exchange(run_id),
        routes.replies_exchange(run_id),
    )
    # dict.fromkeys: routes may give an exchange and a queue, or two routes, one name
    return RunResources(
        tuple(dict.fromkeys(queues)), tuple(dict.fromkeys(exchanges)), f"scarlet:{run_id}:*"
    )


def tear_down(
    config: FederationConfig,
    settings: ServiceSettings,
    reply_workers: tuple[str, ...] = (),
) -> RunResources:
    """Delete the run's queues, exchanges and Redis keys; returns what was removed.

    Raises:
        TransportUnavailable: the broker cannot be reached.
        StoreUnavailable: Redis cannot be reached.
    """
    # imported here: `scarlet --help` and the pure listing load neither pika nor redis
    from shared.state.redis import RedisFederationStore
    from shared.transport.amqp import AmqpTransport

    resources = run_resources(config.run_id, config.clients, reply_workers)
    transport = AmqpTransport(
        settings.broker_url,
        heartbeat_s=settings.heartbeat_s,
        max_message_bytes=settings.max_message_bytes,
        connection_name=f"scarlet-down/{config.run_id}",
    )
    try:
        for queue in resources.queues:
            transport.delete_queue(queue)
        for exchange in resources.exchanges:
            transport.delete_exchange(exchange)
    finally:
        transport.close()
    store = RedisFederationStore(settings.redis_url, config.run_id)
    try:
        store.delete_all()  # SCAN scarlet:<run>:* and DEL, never FLUSH
    finally:
        store.close()
    return resources
