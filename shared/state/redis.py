"""Redis federation store: the durable federation state, committed by one Lua script.

Key schema (``{run}`` is the run id, ``{t}`` a round, ``{k}`` a client id, ``{v}`` a
cache version; all values are binary-safe bytes)::

    scarlet:{run}:aggregator            string  aggregator state blob
    scarlet:{run}:round:{t}:uploads     hash    client id -> encoded upload body (HSETNX)
    scarlet:{run}:cache:entries         hash    public index (decimal) -> 8-byte LE signed
                                                written round + C float32 LE probabilities
    scarlet:{run}:cache:meta            hash    version, digest, classes (decimal / hex)
    scarlet:{run}:cache:log:{v}         string  msgpack {"set": [...], "clear": [...],
                                                "new": [...]}: indices whose entry version
                                                v changed, removed, and created (new is a
                                                subset of set); the last ``log_versions``
                                                records are kept, older ones are deleted
                                                by the commit that makes them too old
    scarlet:{run}:results               list    JSON round records, oldest first
    scarlet:{run}:client:{k}            string  pool-mode client state blob

A round is committed by one Lua script (:data:`_COMMIT_LUA`, kept in this module so
that it ships with the wheel without package-data configuration): it checks the
version and the number of classes, applies the entries, writes meta and the change-log
record, saves the aggregator blob and deletes the round's uploads, or changes nothing.
Redis replicates and appends a script's effects as one ``MULTI``/``EXEC`` block, so
the commit is atomic in the AOF too. Reads that must be consistent across keys run in
one ``MULTI`` pipeline.

Outages are ridden out by the connection (:mod:`shared.state.redis_connection`):
repeatable calls are retried, the others are sent once after Redis answers ``PING``.
Pool-mode client state is :mod:`shared.state.redis_client_state`.

Durability: "recorded before acked" holds across a Redis crash only with AOF and
``appendfsync always`` (each write is on disk before Redis replies) or with ``WAIT`` for
a replica; the default ``everysec`` may lose the last second. The test instances that
claim durability and ``deploy/kubernetes/backing/redis.yaml`` run ``appendonly yes``
and ``appendfsync always``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final, Unpack

import msgpack
import numpy as np

from shared.digests import EMPTY_DIGEST
from shared.errors import StateError
from shared.state import packing
from shared.state.base import (
    CacheSnapshot,
    CacheUpdate,
    ChangeRecord,
    IndexArray,
    check_bytes,
    check_id,
    check_run_id,
)
from shared.state.redis_connection import CHUNK, ConnectionOptions, RedisConnection

__all__ = ["RedisFederationStore"]

_CONSISTENT_READ_ATTEMPTS: Final = 5

logger = logging.getLogger(__name__)

_COMMIT_LUA: Final = """
-- KEYS: meta, entries, log:{v}, log:{v - log_versions}, aggregator, round:{t}:uploads
-- ARGV: version, digest, classes, n_set, aggregator blob,
--       then n_set pairs (index, packed entry), then the indices to clear
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[6]}) do
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= 'hash' then return {-3, key} end
end
local version = tonumber(ARGV[1])
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if stored == nil then return {-4, 0} end
if version ~= stored + 1 then return {-1, stored} end
local classes = redis.call('HGET', KEYS[1], 'classes')
if classes and classes ~= ARGV[3] then return {-2, classes} end
local set, new, clear = {}, {}, {}
local n_set = tonumber(ARGV[4])
for i = 6, 4 + 2 * n_set, 2 do
  local old = redis.call('HGET', KEYS[2], ARGV[i])
  if old ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    set[#set + 1] = tonumber(ARGV[i])
    if not old then new[#new + 1] = tonumber(ARGV[i]) end
  end
end
for i = 6 + 2 * n_set, #ARGV do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then clear[#clear + 1] = tonumber(ARGV[i]) end
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'digest', ARGV[2], 'classes', ARGV[3])
redis.call('SET', KEYS[3], cmsgpack.pack({set = set, clear = clear, new = new}))
redis.call('DEL', KEYS[4])
redis.call('SET', KEYS[5], ARGV[5])
redis.call('DEL', KEYS[6])
return {1, version}
"""


def _parse_int(what: str, raw: bytes | None, default: int | None = None) -> int:
    if raw is None:
        if default is None:
            raise StateError(f"stored {what} is missing")
        return default
    try:
        return int(raw)
    except ValueError:
        raise StateError(f"stored {what} is not an integer: {raw[:32]!r}") from None


def _parse_meta(meta: dict[bytes, bytes]) -> tuple[int, str, int]:
    """(version, digest, classes) of a meta hash; an empty hash is version 0."""
    if not meta:
        return 0, EMPTY_DIGEST, 0
    version = _parse_int("cache version", meta.get(b"version"))
    classes = _parse_int("number of classes", meta.get(b"classes"))
    digest = meta.get(b"digest", b"").decode("ascii", "replace")
    if version < 1 or classes < 1 or len(digest) != 64:
        raise StateError(f"corrupt cache meta: version={version} classes={classes}")
    return version, digest, classes


def _parse_indices(fields: Iterable[bytes], count: int) -> IndexArray:
    try:
        return np.fromiter(map(int, fields), dtype=np.int64, count=count)
    except ValueError:
        raise StateError("cache entry with a non-integer public index") from None


def _decode_record(version: int, blob: bytes) -> ChangeRecord:
    try:
        raw = msgpack.unpackb(blob, raw=False)
        parts = [np.array(raw[name], dtype=np.int64) for name in ("set", "clear", "new")]
    except (ValueError, TypeError, KeyError, OverflowError, msgpack.UnpackException):
        raise StateError(f"corrupt cache change-log record of version {version}") from None
    if any(p.ndim != 1 for p in parts):
        raise StateError(f"corrupt cache change-log record of version {version}")
    return ChangeRecord(*parts)


class RedisFederationStore:
    """A :class:`~shared.state.base.FederationStore` in Redis (key schema above).

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``).
        run_id: the federation's name, the key prefix ``scarlet:{run_id}:``.
        log_versions: change-log records kept (≥ 1); ``cache_changes_since`` answers
            for versions at most this far behind.
        **options: the :class:`ConnectionOptions`.

    Raises:
        ConfigError: an invalid URL.
        ValueError: an invalid run id or option.
    """

    def __init__(
        self, url: str, run_id: str, *, log_versions: int = 64, **options: Unpack[ConnectionOptions]
    ) -> None:
        if log_versions < 1:
            raise ValueError(f"log_versions must be >= 1, got {log_versions}")
        self.run_id = check_run_id(run_id)
        self._log_versions = log_versions
        self._conn = RedisConnection(url, **options)
        self._redis = self._conn.client
        self._prefix = f"scarlet:{run_id}:"
        self._meta = self._prefix + "cache:meta"
        self._entries = self._prefix + "cache:entries"
        self._aggregator = self._prefix + "aggregator"
        self._results = self._prefix + "results"
        self._commit_script = self._redis.register_script(_COMMIT_LUA)

    def _uploads_key(self, round_no: int) -> str:
        return f"{self._prefix}round:{round_no}:uploads"

    def _log_key(self, version: int) -> str:
        return f"{self._prefix}cache:log:{version}"

    def load_aggregator(self) -> bytes | None:
        """The aggregator's saved state blob, or None."""
        return self._conn.run(
            "load aggregator", lambda: self._redis.get(self._aggregator), retry=True
        )

    def save_aggregator(self, blob: bytes) -> None:
        """Replace the aggregator's state blob."""
        check_bytes("aggregator blob", blob)
        self._conn.run(
            "save aggregator", lambda: self._redis.set(self._aggregator, blob), retry=True
        )

    def record_upload(self, round_no: int, client_id: int, body: bytes) -> bool:
        """Record an upload unless ``(round_no, client_id)`` has one (HSETNX); True iff new."""
        check_bytes("upload body", body)
        key = self._uploads_key(check_id("round", round_no))
        field = str(check_id("client id", client_id))
        added = self._conn.run(
            "record upload", lambda: self._redis.hsetnx(key, field, body), retry=False
        )
        return bool(added)

    def record_uploads(self, uploads: Sequence[tuple[int, int, bytes]]) -> list[bool]:
        """:meth:`record_upload` for each ``(round, client id, body)``: HSETNXs in one pipeline.

        Not a transaction: each HSETNX is idempotent on its own key. Sent once after
        ``PING`` like a single HSETNX; a connection lost during it leaves the outcome
        unknown (StoreUnavailable), and nothing is acked then, so the redeliveries
        find what was recorded.
        """
        fields = []
        for round_no, client_id, body in uploads:
            check_bytes("upload body", body)
            key = self._uploads_key(check_id("round", round_no))
            fields.append((key, str(check_id("client id", client_id)), body))
        if not fields:
            return []

        def record() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, field, body in fields:
                    pipe.hsetnx(key, field, body)
                return pipe.execute()

        return [bool(added) for added in self._conn.run("record uploads", record, retry=False)]

    def uploads(self, round_no: int) -> dict[int, bytes]:
        """Recorded uploads of ``round_no`` by client id."""
        key = self._uploads_key(check_id("round", round_no))
        raw = self._conn.run("uploads", lambda: self._redis.hgetall(key), retry=True)
        return {_parse_int("upload client id", k): v for k, v in raw.items()}

    def commit_round(
        self, round_no: int, aggregator_blob: bytes, update: CacheUpdate, num_classes: int
    ) -> None:
        """Apply a round's cache update atomically (one Lua script); see the protocol.

        Raises:
            StateError: the version does not follow the stored one, ``num_classes``
                changed, or a key has the wrong type; nothing is changed.
            StoreUnavailable: Redis is unreachable (the outcome is unknown: re-read
                :meth:`cache_version`).
            ValueError: a malformed update.
        """
        check_bytes("aggregator blob", aggregator_blob)
        round_no = check_id("round", round_no)
        entries = packing.pack_update(update, num_classes)
        pairs: list[bytes] = []
        for index, value in entries:
            pairs += [str(index).encode(), value]
        args: list[bytes | str | int] = [
            update.version,
            update.digest,
            num_classes,
            len(entries),
            aggregator_blob,
            *pairs,
            *(str(i).encode() for i in update.clear_indices.tolist()),
        ]
        oldest = max(update.version - self._log_versions, 0)
        keys = [
            self._meta,
            self._entries,
            self._log_key(update.version),
            self._log_key(oldest),
            self._aggregator,
            self._uploads_key(round_no),
        ]
        result = self._conn.run(
            "commit", lambda: self._commit_script(keys=keys, args=args), retry=False
        )
        _check_commit_result(result, update.version, num_classes)

    def cache_version(self) -> int:
        """The committed cache version (0 when nothing was committed)."""
        raw = self._conn.run(
            "cache version", lambda: self._redis.hget(self._meta, "version"), retry=True
        )
        return _parse_int("cache version", raw, default=0)

    def cache_snapshot(self) -> CacheSnapshot:
        """The whole cache, read in one MULTI (meta and entries together).

        Raises:
            StateError: malformed entries or entries not matching the stored digest.
        """

        def read() -> list[Any]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._meta)
                pipe.hgetall(self._entries)
                return pipe.execute()

        meta, entries = self._conn.run("snapshot", read, retry=True)
        version, digest, classes = _parse_meta(meta)
        indices = _parse_indices(entries.keys(), len(entries))
        return packing.assemble_snapshot(version, digest, classes, indices, list(entries.values()))

    def cache_changes_since(self, version: int) -> CacheSnapshot | None:
        """Changes since ``version``, or None when the log does not reach back that far.

        Reads optimistically: the log records and then the touched entries, each in a
        MULTI together with the meta version; if a commit slips in between, it reads
        again (bounded).

        Raises:
            StateError: ``version`` is ahead of the store, the store keeps changing
                faster than it can be read, or stored data is corrupt.
            ValueError: ``version`` < 0.
        """
        if version < 0:
            raise ValueError(f"changes: version must be >= 0, got {version}")
        for _ in range(_CONSISTENT_READ_ATTEMPTS):
            current = self.cache_version()
            versions = packing.log_window(version, current, self._log_versions)
            if versions is None:
                return None
            meta, blobs = self._read_with_meta("changes", "mget", versions)
            if _parse_meta(meta)[0] != current:
                continue  # a commit slipped in: start again
            records: list[ChangeRecord] = []
            for v, blob in zip(versions, blobs, strict=True):
                if blob is None:
                    return None  # a record inside the window is gone: fall back
                records.append(_decode_record(v, blob))
            touched, present_before = packing.first_touches(records)
            meta, values = self._read_with_meta("changes", "hmget", touched.tolist())
            now, digest, classes = _parse_meta(meta)
            if now != current:
                continue
            return packing.assemble_changes(
                current, digest, classes, touched, present_before, values
            )
        raise StateError("changes: the cache changed under every read attempt")

    def _read_with_meta(
        self, op: str, kind: str, items: Iterable[int]
    ) -> tuple[dict[bytes, bytes], list[bytes | None]]:
        """One MULTI: the meta hash and, in chunks, log records (mget) or entries (hmget)."""
        items = list(items)

        def read() -> list[Any]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._meta)
                for start in range(0, len(items), CHUNK):
                    chunk = items[start : start + CHUNK]
                    if kind == "mget":
                        pipe.mget([self._log_key(v) for v in chunk])
                    else:
                        pipe.hmget(self._entries, [str(i) for i in chunk])
                return pipe.execute()

        replies = self._conn.run(op, read, retry=True)
        values: list[bytes | None] = [v for reply in replies[1:] for v in reply]
        return replies[0], values

    def append_result(self, record: str) -> None:
        """Append one finished round's JSON record (RPUSH)."""
        if not isinstance(record, str):
            raise TypeError(f"result record must be str, got {type(record).__name__}")
        data = record.encode()
        self._conn.run("append result", lambda: self._redis.rpush(self._results, data), retry=False)

    def results(self) -> list[str]:
        """All result records, oldest first."""
        raw = self._conn.run(
            "results", lambda: self._redis.lrange(self._results, 0, -1), retry=True
        )
        try:
            return [r.decode() for r in raw]
        except UnicodeDecodeError:
            raise StateError("a stored result record is not UTF-8") from None

    def delete_all(self) -> None:
        """Delete every key ``scarlet:{run}:*`` (SCAN and DEL, never FLUSH)."""
        self._conn.delete_matching("delete run", self._prefix + "*")

    def close(self) -> None:
        """Close the connection pool's connections (a later call reconnects)."""
        self._conn.close()


def _check_commit_result(result: Any, version: int, num_classes: int) -> None:
    code, detail = int(result[0]), result[1]
    if code == 1:
        return
    if code == -1:
        raise StateError(f"commit: cache version {version} does not follow stored version {detail}")
    if code == -2:
        raise StateError(
            f"commit: {num_classes} classes, but the cache holds {int(detail)} classes"
        )
    if code == -3:
        raise StateError(f"commit: key {detail!r} has the wrong type")
    raise StateError("commit: corrupt cache meta (version is not an integer)")
