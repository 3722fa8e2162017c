"""Logical names of exchanges and queues, as functions of the federation's run id.

Every kind of message has an exchange of its own, so no role ever needs write permission
on the default exchange (``amq.default`` reaches every queue by name; DESIGN §10):

- ``rounds_exchange`` (key ``client_routing_key(k)``) -> ``client_tasks_queue(k)``, or
  (key :data:`POOL_KEY`, every client's tasks) -> ``pool_tasks_queue``;
- ``uploads_exchange`` (key :data:`UPLOAD_KEY`) -> ``uploads_queue``;
- ``cache_rpc_exchange`` (key :data:`CACHE_RPC_KEY`) -> ``cache_rpc_queue``;
- ``replies_exchange`` (key: the reply queue's own name) -> ``reply_queue(run, worker)``.

All four are direct exchanges.
"""

from __future__ import annotations

__all__ = [
    "CACHE_RPC_KEY",
    "POOL_KEY",
    "UPLOAD_KEY",
    "cache_rpc_exchange",
    "cache_rpc_queue",
    "client_routing_key",
    "task_routing_key",
    "client_tasks_queue",
    "pool_tasks_queue",
    "replies_exchange",
    "reply_queue",
    "rounds_exchange",
    "uploads_exchange",
    "uploads_queue",
]

UPLOAD_KEY = "upload"
"""Routing key of uploads on the uploads exchange."""

CACHE_RPC_KEY = "request"
"""Routing key of cache-sync requests on the cache-rpc exchange."""


def rounds_exchange(run_id: str) -> str:
    """Direct exchange the aggregator publishes tasks to (routing key: the client)."""
    return f"scarlet.{run_id}.rounds"


def client_routing_key(client_id: int) -> str:
    """Routing key of one pinned client's tasks."""
    return f"client.{client_id}"


POOL_KEY = "pool"
"""Routing key of every client's tasks in pool mode: the pool queue has one binding, not
one per client (10,000 bindings took 10.7 s to declare)."""


def task_routing_key(worker_mode: str, client_id: int) -> str:
    """Where the aggregator routes ``client_id``'s tasks: its own queue, or the pool's."""
    return POOL_KEY if worker_mode == "pool" else client_routing_key(client_id)


def client_tasks_queue(run_id: str, client_id: int) -> str:
    """Durable queue a pinned worker consumes its tasks from."""
    return f"scarlet.{run_id}.client.{client_id}"


def pool_tasks_queue(run_id: str) -> str:
    """Shared task queue of pool-mode workers."""
    return f"scarlet.{run_id}.tasks"


def uploads_exchange(run_id: str) -> str:
    """Direct exchange workers publish uploads to (key :data:`UPLOAD_KEY`).

    It has the uploads queue's name: exchanges and queues are separate name spaces.
    """
    return f"scarlet.{run_id}.uploads"


def uploads_queue(run_id: str) -> str:
    """Queue of soft-label uploads, consumed by the aggregator."""
    return f"scarlet.{run_id}.uploads"


def cache_rpc_exchange(run_id: str) -> str:
    """Direct exchange workers publish cache-sync requests to (key :data:`CACHE_RPC_KEY`)."""
    return f"scarlet.{run_id}.cache-rpc"


def cache_rpc_queue(run_id: str) -> str:
    """Queue of cache-sync requests, consumed by the cache service."""
    return f"scarlet.{run_id}.cache-rpc"


def replies_exchange(run_id: str) -> str:
    """Direct exchange the cache service publishes replies to (key: the reply queue)."""
    return f"scarlet.{run_id}.replies"


def reply_queue(run_id: str, worker_id: str) -> str:
    """A worker's own queue for cache-sync replies (bound with its own name as key).

    Workers start ``worker_id`` with their broker user and a dot, so a client's broker
    permissions can name its own reply queues (``shared.security.roles``).
    """
    return f"scarlet.{run_id}.reply.{worker_id}"
