"""Durable state: the federation store and the pool-mode client state store.

Pick an implementation by URL (only a service's ``__main__`` should)::

    open_federation_store("memory://", run_id)                 # in-process, this object only
    open_federation_store("redis://127.0.0.1:6379/0", run_id)  # Redis (key schema:
                                                               #   shared.state.redis)
    open_client_store("file:///var/lib/scarlet", run_id)       # /var/lib/scarlet/<run_id>/

Interfaces and the snapshot types are in :mod:`shared.state.base`; the entry packing and
snapshot assembly every cache backend shares is in :mod:`shared.state.packing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError
from shared.state.base import (
    CacheSnapshot,
    CacheUpdate,
    ClientStateStore,
    FederationStore,
    check_run_id,
)
from shared.state.files import FileClientStateStore
from shared.state.memory import MemoryClientStateStore, MemoryFederationStore
from shared.state.redis import RedisFederationStore
from shared.state.redis_client_state import RedisClientStateStore
from shared.state.redis_connection import ConnectionOptions

__all__ = [
    "CacheSnapshot",
    "CacheUpdate",
    "ClientStateStore",
    "ConnectionOptions",
    "FederationStore",
    "FileClientStateStore",
    "MemoryClientStateStore",
    "MemoryFederationStore",
    "RedisClientStateStore",
    "RedisFederationStore",
    "open_client_store",
    "open_federation_store",
]

_REDIS_SCHEMES = ("redis", "rediss")
_CONNECTION_OPTS = ConnectionOptions.__optional_keys__
"""Redis-only options; the in-process and file backends accept and ignore them, so a
composition root can pass one set of options whatever the URL."""


def _without(opts: dict[str, Any], ignored: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if k not in ignored}


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def open_federation_store(url: str, run_id: str, **opts: Any) -> FederationStore:
    """Open the federation store named by ``url`` for the run ``run_id``.

    Args:
        url: ``memory://`` (a new, private in-process store: share it by passing the
            object around) or ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
        run_id: the federation's name.
        **opts: backend options: ``log_versions`` (both backends); ``socket_timeout_s``,
            ``connect_timeout_s``, ``read_attempts``, ``retry_backoff_s`` (Redis; ignored
            by ``memory://``).

    Raises:
        ConfigError: an unsupported URL scheme or an invalid Redis URL.
        ValueError: an invalid run id or option value.
        TypeError: an option the backend does not know.
    """
    scheme = _scheme(url)
    if scheme == "memory":
        return MemoryFederationStore(run_id, **_without(opts, _CONNECTION_OPTS))
    if scheme in _REDIS_SCHEMES:
        return RedisFederationStore(url, run_id, **opts)
    raise ConfigError(f"unsupported federation store URL scheme {scheme!r} (memory, redis)")


def open_client_store(url: str, run_id: str, **opts: Any) -> ClientStateStore:
    """Open the pool-mode client state store named by ``url`` for the run ``run_id``.

    Args:
        url: ``memory://``, ``file:///path`` (state in ``/path/<run_id>/``) or
            ``redis://[:password@]host:port/db``.
        run_id: the federation's name.
        **opts: the options of :func:`open_federation_store`; only the Redis connection
            options matter here, the others are ignored.

    Raises:
        ConfigError: an unsupported scheme, a ``file://`` URL with a host or no path, or
            an invalid Redis URL.
        ValueError: an invalid run id.
        TypeError: an unknown option.
    """
    scheme = _scheme(url)
    unknown = set(opts) - _CONNECTION_OPTS - {"log_versions"}
    if unknown:
        raise TypeError(f"unknown client store options: {sorted(unknown)}")
    if scheme == "memory":
        check_run_id(run_id)
        return MemoryClientStateStore()
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError("a file store URL looks like file:///absolute/path")
        return FileClientStateStore(Path(unquote(parts.path)) / check_run_id(run_id))
    if scheme in _REDIS_SCHEMES:
        return RedisClientStateStore(url, run_id, **_without(opts, frozenset({"log_versions"})))
    raise ConfigError(f"unsupported client store URL scheme {scheme!r} (memory, file, redis)")
