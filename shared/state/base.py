"""Store interfaces: what a backend keeps, and the argument checks every backend applies.

Two protocols describe durable state:

- :class:`FederationStore`: everything one federation (``run_id``) must not lose: the
  aggregator's progress blob, the uploads of the open round (idempotent on
  ``(run, round, client)``), the authoritative soft-label cache with its version, digest
  and a change log, and the finished rounds' result records.
- :class:`ClientStateStore`: pool-mode per-client state (model and cache replica), opaque
  bytes keyed by client id.

Implementations: :mod:`shared.state.memory` (in-process, per instance),
:mod:`shared.state.redis` (Redis) and, for client state, :mod:`shared.state.files`. All
of them pass ``tests/contract/test_store_contract.py``. The cache backends share one
packing kit (:mod:`shared.state.packing`) so that they agree byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shared.arrays import IndexArray, LabelArray
from shared.protocol.wire import is_safe_name

__all__ = [
    "CacheSnapshot",
    "CacheUpdate",
    "ChangeRecord",
    "ClientStateStore",
    "FederationStore",
    "IndexArray",
    "check_bytes",
    "check_id",
    "check_run_id",
]


@dataclass(frozen=True, slots=True)
class CacheUpdate:
    """The changes one committed round made to the global cache.

    Attributes:
        version: new cache version (previous + 1, so the first commit is 1).
        digest: ``ServerCache.digest()`` after the commit (64 lowercase hex digits).
        set_indices: (u,) int64 public indices whose entry is (re)written.
        set_written: (u,) int64 round each of those entries was written in (≥ 0).
        set_labels: (u, C) float32 their soft labels.
        clear_indices: (v,) int64 public indices whose entry is emptied.
    """

    version: int
    digest: str
    set_indices: IndexArray
    set_written: IndexArray
    set_labels: LabelArray
    clear_indices: IndexArray


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """The cache at ``version``: in full, or as the changes since an earlier version.

    Attributes:
        version: cache version the snapshot reflects (0: nothing committed yet).
        digest: ``ServerCache.digest()`` of the cache at ``version``.
        full: True: the whole cache (an index not listed is empty). False: only the
            changes since the version asked for.
        indices: (n,) int64 ascending: present entries (full) or entries set since.
        written: (n,) int64 written round of each listed entry.
        labels: (n, C) float32 soft label of each listed entry (C = 0 before the first
            commit, when the store does not know the number of classes yet).
        cleared: (m,) int64 ascending: entries emptied since the version (changes only;
            always empty for a full snapshot).
    """

    version: int
    digest: str
    full: bool
    indices: IndexArray
    written: IndexArray
    labels: LabelArray
    cleared: IndexArray


class FederationStore(Protocol):
    """Durable state of one federation (one ``run_id``).

    Every method raises :class:`~shared.errors.StoreUnavailable` when the backend cannot
    be reached (after a short bounded retry for reads; writes are never retried, so
    after a failed write its outcome is unknown and the caller re-reads) and
    :class:`~shared.errors.StateError` when what is stored is corrupt.
    """

    def load_aggregator(self) -> bytes | None:
        """The aggregator's saved state blob, or None when none was saved."""
        ...

    def save_aggregator(self, blob: bytes) -> None:
        """Replace the aggregator's state blob."""
        ...

    def record_upload(self, round_no: int, client_id: int, body: bytes) -> bool:
        """Record ``client_id``'s upload for ``round_no`` unless one is recorded already.

        Returns:
            True iff the upload was newly recorded; False for a duplicate (the first
            body is kept unchanged). The idempotency key is ``(run, round, client)``.
        """
        ...

    def record_uploads(self, uploads: Sequence[tuple[int, int, bytes]]) -> list[bool]:
        """:meth:`record_upload` for each ``(round, client id, body)``, in order, at once.

        One round trip to the backend (Redis: one pipeline). A later item with the same
        ``(round, client)`` as an earlier one is a duplicate. When it returns, every
        upload it reports recorded is durable as far as the backend makes it durable.

        Returns:
            One flag per item: True iff that upload was newly recorded.
        """
        ...

    def uploads(self, round_no: int) -> dict[int, bytes]:
        """Recorded uploads of ``round_no`` by client id (empty when none)."""
        ...

    def commit_round(
        self, round_no: int, aggregator_blob: bytes, update: CacheUpdate, num_classes: int
    ) -> None:
        """Atomically apply a round's cache update, save the aggregator and drop uploads.

        In one transaction: set and clear the cache entries, store version, digest and
        ``num_classes``, append the change-log record of ``update.version`` (dropping the
        oldest one beyond the log window), save ``aggregator_blob`` and delete the
        uploads of ``round_no``.

        Raises:
            StateError: ``update.version`` is not the stored version + 1, or
                ``num_classes`` differs from the one stored by earlier commits; nothing
                is changed.
            ValueError: a malformed update (shapes, dtypes, negative or duplicate
                indices, an index both set and cleared, non-finite labels, a bad digest).
        """
        ...

    def cache_version(self) -> int:
        """The committed cache version; 0 when nothing was committed."""
        ...

    def cache_snapshot(self) -> CacheSnapshot:
        """The whole cache as one consistent full snapshot.

        Raises:
            StateError: stored entries are malformed or do not match the stored digest.
        """
        ...

    def cache_changes_since(self, version: int) -> CacheSnapshot | None:
        """What changed since ``version``, read consistently (``full=False``).

        Applying the result to a replica at ``version`` (write ``indices``, empty
        ``cleared``) yields the cache at the returned version.

        Returns:
            The changes (empty when ``version`` is current), or None when the change log
            no longer reaches back to ``version`` (fall back to :meth:`cache_snapshot`).

        Raises:
            StateError: ``version`` is ahead of the store, or stored data is corrupt.
            ValueError: ``version`` is negative.
        """
        ...

    def append_result(self, record: str) -> None:
        """Append one finished round's JSON record."""
        ...

    def results(self) -> list[str]:
        """All result records, oldest first."""
        ...

    def delete_all(self) -> None:
        """Delete every piece of state of this run (other runs are untouched)."""
        ...


class ClientStateStore(Protocol):
    """Pool-mode per-client state (model and cache replica) as opaque bytes.

    Methods raise :class:`~shared.errors.StoreUnavailable` when the backend cannot be
    reached and :class:`~shared.errors.StateError` on other storage failures.
    """

    def load(self, client_id: int) -> bytes | None:
        """The state saved for ``client_id``, or None."""
        ...

    def save(self, client_id: int, blob: bytes) -> None:
        """Atomically replace the state of ``client_id``."""
        ...

    def delete_all(self) -> None:
        """Delete the state of every client of this run."""
        ...


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """Change-log record of one cache version (backend helper).

    Attributes:
        set_indices: indices whose stored entry changed (written or overwritten).
        clear_indices: indices whose entry existed and was removed.
        new_indices: the subset of ``set_indices`` that was empty before the version.
    """

    set_indices: IndexArray
    clear_indices: IndexArray
    new_indices: IndexArray


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe key component.

    Raises:
        ValueError: unless it is 1-128 characters of ``A-Za-z0-9_.-`` starting with a
            letter or digit (no ``:`` or glob characters, so one run's key pattern can
            never match another run's keys).
    """
    if not is_safe_name(run_id):
        raise ValueError(f"invalid run id {run_id!r}: use 1-128 characters of A-Za-z0-9_.-")
    return run_id


def check_id(what: str, value: int) -> int:
    """Return ``value`` if it is a valid round number or client id (an int ≥ 0).

    Raises:
        ValueError: a negative number or a non-int (bool included).
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return int(value)


def check_bytes(what: str, blob: bytes) -> None:
    """Check that a blob handed to a store is ``bytes`` (stores keep bytes only).

    Raises:
        TypeError: ``blob`` is not ``bytes`` (a ``bytearray`` or ``str`` included).
    """
    if not isinstance(blob, bytes):
        raise TypeError(f"{what} must be bytes, got {type(blob).__name__}")
