"""Cache-sync RPC: a worker asks the cache service for the global soft-label cache.

A worker that is behind, restarted or desynchronized publishes a
:class:`CacheSyncRequest` to :func:`~shared.protocol.routes.cache_rpc_queue` and waits
on its own :func:`~shared.protocol.routes.reply_queue` for the matching
:class:`CacheSyncResponse`: the whole cache (``since_version=None``, or when the change
log no longer reaches back) or the changes since a version. The worker installs it into
its replica and checks the digest (``services.worker.resync``).

Wire format (msgpack maps opening with the envelope of :mod:`shared.protocol.wire`)::

    request:  {"v", "kind": "cache_sync_request", "run", "client", "request_id",
               "since": int | nil, "reply_to"}
    response: {"v", "kind": "cache_sync_response", "run", "request_id", "version",
               "digest", "full", "indices", "written", "labels", "cleared", "error"}

Arrays are :func:`~shared.protocol.tensors.encode_tensor` maps: ``indices``/``cleared``
``<i8`` (n,)/(m,), ``written`` ``<i8`` (n,), ``labels`` ``<f4`` (n, C).

Validation on decode (only :class:`~shared.errors.ProtocolError` subclasses escape):
size limit, schema version, kind, run id (1-128 of ``A-Za-z0-9_.-``), ``request_id``
(32 lowercase hex digits, a uuid4 hex), ``reply_to`` (exactly
``reply_queue(run, worker)`` for a sane worker id: a request can only make the service
publish to a reply queue of its own run), indices in ``[0, |P|)``, unique and
ascending, ``cleared`` disjoint from ``indices`` and empty in a full snapshot, written
rounds ≥ 0, labels finite, non-negative and summing to 1 per row within
:data:`SIMPLEX_TOLERANCE`, ``digest`` 64 lowercase hex digits.
A response with a non-empty ``error`` carries nothing else (version 0, empty digest and
tensors).

Unlike the downlink codec, labels are **never renormalized** here: a replica must hold
the authoritative entries bit for bit, or its digest cannot match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from shared.arrays import IndexArray, LabelArray
from shared.errors import DecodeError
from shared.protocol.routes import reply_queue
from shared.protocol.tensors import decode_tensor, encode_tensor
from shared.protocol.wire import (
    DecodeLimits,
    digest_field,
    envelope,
    int_field,
    is_ascending,
    is_safe_name,
    pack,
    safe_name_field,
    unpack,
)

__all__ = [
    "HEADER_REQUEST_ID",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "MAX_ERROR_CHARS",
    "SIMPLEX_TOLERANCE",
    "CacheSyncRequest",
    "CacheSyncResponse",
    "decode_sync_request",
    "decode_sync_response",
    "encode_sync_request",
    "encode_sync_response",
    "failed_response",
]

HEADER_REQUEST_ID: Final = "request-id"
"""Message header carrying ``request_id`` (on requests and replies), so that a worker can
skip a stale reply without decoding it."""
KIND_REQUEST: Final = "cache_sync_request"
KIND_RESPONSE: Final = "cache_sync_response"
MAX_ERROR_CHARS: Final = 1000
"""Longest accepted ``error`` text of a response."""
SIMPLEX_TOLERANCE: Final = 1e-3
"""Largest accepted |row sum - 1| of a soft-label row carried as a raw float32 tensor."""

_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_MAX_QUEUE_NAME = 255  # AMQP short string


@dataclass(frozen=True, slots=True)
class CacheSyncRequest:
    """Worker → cache service: send me the cache (or what changed since a version).

    Attributes:
        run_id: the federation.
        client_id: the asking client (for logs; the cache is the same for everyone).
        request_id: 32 lowercase hex digits (``uuid.uuid4().hex``), echoed in the reply.
        since_version: the version the replica holds; None asks for a full snapshot.
        reply_to: the worker's reply queue, ``reply_queue(run_id, worker_id)``.
    """

    run_id: str
    client_id: int
    request_id: str
    since_version: int | None
    reply_to: str


@dataclass(frozen=True, slots=True)
class CacheSyncResponse:
    """Cache service → worker: the cache at ``version``, in full or as changes.

    The array fields mean what they mean in ``shared.state.base.CacheSnapshot``.

    Attributes:
        run_id: the federation.
        request_id: the request's id.
        version: the cache version the response reflects (0 before the first commit).
        digest: ``ServerCache.digest()`` at ``version`` (64 hex digits; "" on error).
        full: True: the whole cache (unlisted entries are empty); False: the changes
            since the version asked for.
        indices: (n,) int64 ascending: present entries (full) or entries set since.
        written: (n,) int64 ≥ 0: written round of each listed entry.
        labels: (n, C) float32: soft label of each listed entry.
        cleared: (m,) int64 ascending: entries emptied since (always empty when full).
        error: non-empty when the service could not answer (e.g. the store is down);
            every other field is then empty.
    """

    run_id: str
    request_id: str
    version: int
    digest: str
    full: bool
    indices: IndexArray
    written: IndexArray
    labels: LabelArray
    cleared: IndexArray
    error: str = ""


def failed_response(
    run_id: str, request_id: str, error: str, num_classes: int
) -> CacheSyncResponse:
    """A response saying the service could not answer (``error`` truncated to the limit).

    Raises:
        ValueError: ``error`` is empty.
    """
    if not error:
        raise ValueError("a failed response needs an error text")
    empty = np.empty(0, dtype=np.int64)
    return CacheSyncResponse(
        run_id=run_id,
        request_id=request_id,
        version=0,
        digest="",
        full=False,
        indices=empty,
        written=empty.copy(),
        labels=np.empty((0, num_classes), dtype=np.float32),
        cleared=empty.copy(),
        error=error[:MAX_ERROR_CHARS],
    )


def encode_sync_request(request: CacheSyncRequest) -> bytes:
    """Encode a :class:`CacheSyncRequest` to bytes."""
    return pack(
        {
            **envelope(KIND_REQUEST, request.run_id),
            "client": request.client_id,
            "request_id": request.request_id,
            "since": request.since_version,
            "reply_to": request.reply_to,
        }
    )


def encode_sync_response(response: CacheSyncResponse) -> bytes:
    """Encode a :class:`CacheSyncResponse` to bytes (arrays cast to the wire dtypes)."""
    return pack(
        {
            **envelope(KIND_RESPONSE, response.run_id),
            "request_id": response.request_id,
            "version": response.version,
            "digest": response.digest,
            "full": response.full,
            "indices": encode_tensor(response.indices.astype(np.int64, copy=False)),
            "written": encode_tensor(response.written.astype(np.int64, copy=False)),
            "labels": encode_tensor(response.labels.astype(np.float32, copy=False)),
            "cleared": encode_tensor(response.cleared.astype(np.int64, copy=False)),
            "error": response.error,
        }
    )


def decode_sync_request(body: bytes, limits: DecodeLimits) -> CacheSyncRequest:
    """Decode and validate a :class:`CacheSyncRequest`.

    Raises:
        MessageTooLarge: body over ``limits.max_body_bytes``.
        UnsupportedVersion: unknown schema version.
        DecodeError: anything else that is wrong, naming the field.
    """
    msg = unpack(body, limits, kind=KIND_REQUEST)
    run_id = safe_name_field(msg.get("run"), "run")
    since = msg.get("since")
    return CacheSyncRequest(
        run_id=run_id,
        client_id=int_field(msg.get("client"), "client"),
        request_id=_request_id(msg.get("request_id")),
        since_version=None if since is None else int_field(since, "since"),
        reply_to=_reply_to(msg.get("reply_to"), run_id),
    )


def decode_sync_response(body: bytes, limits: DecodeLimits) -> CacheSyncResponse:
    """Decode and validate a :class:`CacheSyncResponse`.

    Raises:
        MessageTooLarge: body over ``limits.max_body_bytes``.
        UnsupportedVersion: unknown schema version.
        DecodeError: anything else that is wrong, naming the field.
    """
    msg = unpack(body, limits, kind=KIND_RESPONSE)
    run_id = safe_name_field(msg.get("run"), "run")
    request_id = _request_id(msg.get("request_id"))
    version = int_field(msg.get("version"), "version")
    full = msg.get("full")
    if not isinstance(full, bool):
        raise DecodeError(f"full: expected a boolean, got {type(full).__name__}")
    error = msg.get("error")
    if not isinstance(error, str) or len(error) > MAX_ERROR_CHARS:
        raise DecodeError(f"error: expected a string of at most {MAX_ERROR_CHARS} characters")
    indices, written, labels, cleared = _entries(msg, full, limits)
    if error:
        _require_empty(version, msg.get("digest"), indices, cleared)
        digest = ""
    else:
        digest = digest_field(msg.get("digest"), "digest", allow_empty=False)
    return CacheSyncResponse(
        run_id, request_id, version, digest, full, indices, written, labels, cleared, error
    )


def _request_id(value: object) -> str:
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        raise DecodeError("request_id: expected 32 lowercase hex digits")
    return value


def _reply_to(value: object, run_id: str) -> str:
    prefix = reply_queue(run_id, "")
    if (
        not isinstance(value, str)
        or len(value) > _MAX_QUEUE_NAME
        or not value.startswith(prefix)
        or not is_safe_name(value[len(prefix) :])
    ):
        raise DecodeError(f"reply_to: expected {prefix}<worker id> of at most 255 characters")
    return value


def _entries(
    msg: Mapping[str, object], full: bool, limits: DecodeLimits
) -> tuple[IndexArray, IndexArray, LabelArray, IndexArray]:
    indices = _indices(msg.get("indices"), "indices", limits)
    _require_ascending(indices, "indices")
    n = indices.size
    written = decode_tensor(msg.get("written"), "written", dtype="<i8", shape=(n,), max_elements=n)
    if written.size and int(written.min()) < 0:
        raise DecodeError("written: negative rounds")
    labels = _cache_labels(msg.get("labels"), n, limits)
    cleared = _indices(msg.get("cleared"), "cleared", limits)
    _require_ascending(cleared, "cleared")
    if full and cleared.size:
        raise DecodeError("cleared: must be empty in a full snapshot")
    if np.intersect1d(cleared, indices, assume_unique=True).size:
        raise DecodeError("cleared: indices also listed in indices")
    return indices, written, labels, cleared


def _cache_labels(obj: object, rows: int, limits: DecodeLimits) -> LabelArray:
    # validated like the downlink's labels, but never renormalized: bits must survive
    labels = decode_tensor(
        obj,
        "labels",
        dtype="<f4",
        shape=(rows, limits.num_classes),
        max_elements=limits.public_size * limits.num_classes,
    )
    if not bool(np.isfinite(labels).all()):
        raise DecodeError("labels: non-finite probabilities")
    if bool((labels < 0).any()):
        raise DecodeError("labels: negative probabilities")
    sums = labels.sum(axis=1, dtype=np.float64)
    if rows and float(np.abs(sums - 1).max()) > SIMPLEX_TOLERANCE:
        raise DecodeError(f"labels: rows do not sum to 1 (tolerance {SIMPLEX_TOLERANCE})")
    return labels


def _require_empty(version: int, digest: object, indices: IndexArray, cleared: IndexArray) -> None:
    if version != 0 or digest != "" or indices.size or cleared.size:
        raise DecodeError("error: a failed response must carry no version, digest or entries")


def _indices(obj: object, field: str, limits: DecodeLimits) -> IndexArray:
    """Decode an int64 index array (raw layout): in range and unique."""
    idx = decode_tensor(obj, field, dtype="<i8", shape=(None,), max_elements=limits.public_size)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= limits.public_size):
        raise DecodeError(f"{field}: indices outside [0, {limits.public_size})")
    if np.unique(idx).size != idx.size:
        raise DecodeError(f"{field}: indices are not unique")
    return idx


def _require_ascending(idx: IndexArray, field: str) -> None:
    if not is_ascending(idx):
        raise DecodeError(f"{field}: indices must be ascending")
