"""The Redis connection both stores share: pool, TLS, error boundary and outage retries.

Outages: connection and timeout errors are ridden out for ``retry_s`` seconds (the
``store_retry_s`` setting, default 60) with a capped exponential backoff, so a Redis
restart pauses the services instead of ending them. Calls that are safe to repeat (reads,
``SET``) are simply retried. The others (``HSETNX``, ``RPUSH``, the commit script) would
change their answer or their effect if repeated after a lost reply, so they first wait
until Redis answers ``PING`` and are then sent once; only a connection that drops
during the command itself leaves the outcome unknown. When the budget is spent, the
error becomes :class:`~shared.errors.StoreUnavailable` (naming ``host:port/db``, never
the URL, so a password cannot leak). Other Redis errors become
:class:`~shared.errors.StateError`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Final, TypedDict, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import ConfigError, StateError, StoreUnavailable
from shared.security.tls import TlsOptions, client_context, split_tls_query

__all__ = ["CHUNK", "ConnectionOptions", "RedisConnection", "retry_delay_s"]

_T = TypeVar("_T")
CHUNK: Final = 2000  # fields per HMGET / keys per MGET or DEL
_RETRY_DELAY_MAX_S: Final = 1.0  # a restarted Redis is noticed within a second

logger = logging.getLogger(__name__)


class ConnectionOptions(TypedDict, total=False):
    """Connection options both Redis stores accept (all optional; defaults in brackets).

    Attributes:
        socket_timeout_s: per-command socket timeout [5.0].
        connect_timeout_s: connection timeout [2.0].
        read_attempts: tries of a repeatable call at least, even past ``retry_s`` (≥ 1) [3].
        retry_backoff_s: first backoff between tries (doubles each time, at most 1 s) [0.05].
        retry_s: how long an outage is ridden out before StoreUnavailable (≥ 0) [60.0].
    """

    socket_timeout_s: float
    connect_timeout_s: float
    read_attempts: int
    retry_backoff_s: float
    retry_s: float


def _ssl_kwargs(tls: TlsOptions | None) -> dict[str, Any]:
    """redis-py's SSL connection options for ``rediss://`` (none for ``redis://``)."""
    if tls is None:
        return {}
    client_context(tls)  # a missing or unreadable file fails here, as ConfigError
    # redis-py builds its own context from these; host names are checked explicitly
    # because redis-py 5 does not by default
    return {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "required" if tls.verify else "none",
        "ssl_check_hostname": tls.verify,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }


class RedisConnection:
    """A connection pool plus the error boundary and the read-retry policy."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        read_attempts: int = 3,
        retry_backoff_s: float = 0.05,
        retry_s: float = 60.0,
    ) -> None:
        if read_attempts < 1:
            raise ValueError(f"read_attempts must be >= 1, got {read_attempts}")
        if retry_s < 0:
            raise ValueError(f"retry_s must be >= 0, got {retry_s}")
        url, tls = split_tls_query(url, ("rediss",))
        try:
            self.pool = redis.ConnectionPool.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
                **_ssl_kwargs(tls),
            )
        except ValueError:
            raise ConfigError("invalid Redis URL (expected redis://host:port/db)") from None
        kwargs = self.pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ConfigError("the Redis URL must not set decode_responses (values are bytes)")
        self._secret = str(kwargs.get("password") or "")
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self.where = f"{where}/{kwargs.get('db', 0)}"
        self.client: redis.Redis[bytes] = redis.Redis(connection_pool=self.pool)
        self._read_attempts = read_attempts
        self._backoff_s = retry_backoff_s
        self._retry_s = retry_s

    def _redact(self, error: Exception) -> str:
        text = f"{type(error).__name__}: {error}"
        return text.replace(self._secret, "***") if self._secret else text

    def run(self, op: str, fn: Callable[[], _T], *, retry: bool) -> _T:
        """Call ``fn``, riding out an outage of up to ``retry_s`` seconds.

        Args:
            op: named in errors and logs.
            fn: the Redis call.
            retry: ``fn`` may be repeated (a read, a ``SET``): it is retried on
                connection errors. Otherwise Redis must first answer ``PING`` (retried)
                and ``fn`` is sent once.

        Raises:
            StoreUnavailable: Redis stayed unreachable for the whole budget, or the
                connection dropped during a call that is not repeated.
            StateError: any other Redis error.
        """
        if retry:
            return self._retrying(op, fn)
        self._retrying(op, self.client.ping)
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailable(
                f"{op}: Redis at {self.where} dropped the connection during the call"
                f" (outcome unknown; {self._redact(e)})"
            ) from e
        except redis.RedisError as e:
            raise StateError(f"{op}: Redis at {self.where} failed ({self._redact(e)})") from e

    def _retrying(self, op: str, fn: Callable[[], _T]) -> _T:
        deadline = time.monotonic() + self._retry_s
        attempt = 0
        while True:
            try:
                result = fn()
                if attempt:
                    logger.info("store: %s: Redis at %s answers again", op, self.where)
                return result
            except (redis.ConnectionError, redis.TimeoutError) as e:
                attempt += 1
                if attempt >= self._read_attempts and time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"{op}: Redis at {self.where} unavailable for {self._retry_s:g} s"
                        f" ({self._redact(e)})"
                    ) from e
                if attempt == 1:
                    logger.warning(
                        "store: %s: Redis at %s unavailable (%s); retrying for up to %g s",
                        op,
                        self.where,
                        type(e).__name__,
                        self._retry_s,
                    )
                time.sleep(retry_delay_s(attempt, self._backoff_s))
            except redis.RedisError as e:
                raise StateError(f"{op}: Redis at {self.where} failed ({self._redact(e)})") from e

    def delete_matching(self, op: str, pattern: str) -> None:
        """Delete every key matching ``pattern`` (SCAN, never FLUSH); retried."""

        def delete() -> None:
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= CHUNK:
                    self.client.delete(*batch)
                    batch.clear()
            if batch:
                self.client.delete(*batch)

        self.run(op, delete, retry=True)

    def close(self) -> None:
        """Disconnect the pool's connections (a later call reconnects)."""
        self.pool.disconnect()


def retry_delay_s(attempt: int, base_s: float, cap_s: float = _RETRY_DELAY_MAX_S) -> float:
    """The wait after the ``attempt``-th failed try (1-based): ``base_s`` doubling, capped."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return float(min(cap_s, base_s * 2.0 ** min(attempt - 1, 30)))
