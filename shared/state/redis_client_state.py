"""Pool-mode client state in Redis: one binary-safe string per client.

The key is ``scarlet:{run}:client:{k}`` (the key schema is in :mod:`shared.state.redis`);
a save is one ``SET``, so it is atomic and safe to retry.
"""

from __future__ import annotations

from typing import Unpack

from shared.state.base import check_bytes, check_id, check_run_id
from shared.state.redis_connection import ConnectionOptions, RedisConnection

__all__ = ["RedisClientStateStore"]


class RedisClientStateStore:
    """A :class:`~shared.state.base.ClientStateStore` in Redis (``scarlet:{run}:client:{k}``).

    Takes the same ``url``, ``run_id`` and :class:`ConnectionOptions` as
    :class:`~shared.state.redis.RedisFederationStore` (not ``log_versions``).

    Raises:
        ConfigError: an invalid URL.
        ValueError: an invalid run id or option.
    """

    def __init__(self, url: str, run_id: str, **options: Unpack[ConnectionOptions]) -> None:
        self.run_id = check_run_id(run_id)
        self._conn = RedisConnection(url, **options)
        self._redis = self._conn.client
        self._prefix = f"scarlet:{run_id}:client:"

    def load(self, client_id: int) -> bytes | None:
        """The state saved for ``client_id``, or None."""
        key = self._prefix + str(check_id("client id", client_id))
        return self._conn.run("load client state", lambda: self._redis.get(key), retry=True)

    def save(self, client_id: int, blob: bytes) -> None:
        """Replace the state of ``client_id`` (one SET: atomic)."""
        check_bytes("client state", blob)
        key = self._prefix + str(check_id("client id", client_id))
        self._conn.run("save client state", lambda: self._redis.set(key, blob), retry=True)

    def delete_all(self) -> None:
        """Delete every ``scarlet:{run}:client:*`` key."""
        self._conn.delete_matching("delete client states", self._prefix + "*")

    def close(self) -> None:
        """Close the connection pool's connections."""
        self._conn.close()
