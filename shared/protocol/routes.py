"""Logical names of exchanges and queues, as functions of the federation's run id."""

from __future__ import annotations

__all__ = [
    "client_routing_key",
    "client_tasks_queue",
    "pool_tasks_queue",
    "rounds_exchange",
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
