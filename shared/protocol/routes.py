"""Logical names of exchanges and queues, as functions of the federation's run id."""

from __future__ import annotations

__all__ = [
    "cache_rpc_queue",
    "client_routing_key",
    "client_tasks_queue",
    "pool_tasks_queue",
    "rounds_exchange",
    "reply_queue",
    "uploads_queue",
]


def rounds_exchange(run_id: str) -> str:
    """Direct exchange the aggregator publishes tasks to (routing key: the client)."""
    return f"scarlet.{run_id}.rounds"


def client_routing_key(client_id: int) -> str:
    """Routing key of one pinned client's tasks."""
    return f"client.{client_id}"


def client_tasks_queue(run_id: str, client_id: int) -> str:
    """Durable queue a pinned worker consumes its tasks from."""
    return f"scarlet.{run_id}.client.{client_id}"


def pool_tasks_queue(run_id: str) -> str:
    """Shared task queue of pool-mode workers."""
    return f"scarlet.{run_id}.tasks"


def uploads_queue(run_id: str) -> str:
    """Queue of soft-label uploads, consumed by the aggregator."""
    return f"scarlet.{run_id}.uploads"


def cache_rpc_queue(run_id: str) -> str:
    """Queue of cache-sync requests, consumed by the cache service."""
    return f"scarlet.{run_id}.cache-rpc"


def reply_queue(run_id: str, worker_id: str) -> str:
    """A worker's own queue for cache-sync replies."""
    return f"scarlet.{run_id}.reply.{worker_id}"
