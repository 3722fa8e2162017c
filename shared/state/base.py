"""Store interfaces and the pieces every backend shares.

Two protocols describe durable state:

- :class:`FederationStore`: everything one federation (``run_id``) must not lose: the
  aggregator's progress blob, the uploads of the open round (idempotent on
  ``(run, round, client)``), the authoritative soft-label cache with its version, digest
  and a change log, and the finished rounds' result records.
- :class:`ClientStateStore`: pool-mode per-client state (model and cache replica), opaque
  bytes keyed by client id.

Implementations: :mod:`shared.state.memory` (in-process, per instance),
:mod:`shared.state.redis` (Redis) and, for client state, :mod:`shared.state.files`. All
of them pass ``tests/contract/test_store_contract.py``.

The helpers below (entry packing, digest, change-log merging, snapshot assembly) are
used by every backend so that they agree byte for byte. A cache entry is packed as
8-byte little-endian signed written round followed by ``C`` little-endian float32
probabilities; two entries are equal iff their packed bytes are equal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from shared.errors import StateError

__all__ = [
    "EMPTY_DIGEST",
    "CacheSnapshot",
    "CacheUpdate",
    "ChangeRecord",
    "ClientStateStore",
    "FederationStore",
    "assemble_changes",
    "assemble_snapshot",
    "cache_digest",
    "check_id",
    "check_run_id",
    "entry_size",
    "first_touches",
    "log_reaches",
    "pack_entries",
    "unpack_entries",
    "validate_update",
]

IndexArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
LabelArray = npt.NDArray[np.float32]

EMPTY_DIGEST: Final = hashlib.sha256().hexdigest()
"""Digest of a cache with no present entry (``ServerCache.digest()`` of a fresh cache)."""

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


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
    set_indices: Tensor
    set_written: Tensor
    set_labels: Tensor
    clear_indices: Tensor


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
    indices: Tensor
    written: Tensor
    labels: Tensor
    cleared: Tensor


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
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
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


def validate_update(update: CacheUpdate, num_classes: int) -> None:
    """Check a :class:`CacheUpdate` before any backend touches storage.

    Raises:
        ValueError: the first problem found (version < 1, malformed digest, wrong dtype or
            shape, negative or duplicate indices, an index both set and cleared, a written
            round < 0, non-finite labels).
    """
    if num_classes < 1:
        raise ValueError(f"commit: num_classes must be >= 1, got {num_classes}")
    if update.version < 1:
        raise ValueError(f"commit: cache version must be >= 1, got {update.version}")
    if not _DIGEST.fullmatch(update.digest):
        raise ValueError("commit: digest must be 64 lowercase hex digits")
    u = update.set_indices.shape[0] if update.set_indices.dim() == 1 else -1
    expected = {
        "set_indices": (update.set_indices, torch.int64, (u,)),
        "set_written": (update.set_written, torch.int64, (u,)),
        "set_labels": (update.set_labels, torch.float32, (u, num_classes)),
        "clear_indices": (update.clear_indices, torch.int64, (update.clear_indices.numel(),)),
    }
    for name, (tensor, dtype, shape) in expected.items():
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(
                f"commit: {name} must be {dtype} of shape {shape}, "
                f"got {tensor.dtype} {tuple(tensor.shape)}"
            )
    both = torch.cat([update.set_indices, update.clear_indices])
    if both.numel() and (int(both.min()) < 0 or torch.unique(both).numel() != both.numel()):
        raise ValueError("commit: indices must be >= 0 and appear at most once in set + clear")
    if u and int(update.set_written.min()) < 0:
        raise ValueError("commit: written rounds of set entries must be >= 0")
    if not bool(torch.isfinite(update.set_labels).all()):
        raise ValueError("commit: set_labels must be finite")


def entry_size(num_classes: int) -> int:
    """Bytes of one packed entry: 8 (written round) + 4 per class."""
    return 8 + 4 * num_classes


def _entry_dtype(num_classes: int) -> np.dtype[np.void]:
    return np.dtype([("written", "<i8"), ("labels", "<f4", (num_classes,))])


def pack_entries(written: IndexArray, labels: LabelArray) -> list[bytes]:
    """Pack (n,) written rounds and (n, C) labels into n entry values."""
    n, classes = labels.shape
    packed = np.empty(n, dtype=_entry_dtype(classes))
    packed["written"] = written
    packed["labels"] = labels
    buf, size = packed.tobytes(), entry_size(classes)
    return [buf[i * size : (i + 1) * size] for i in range(n)]


def unpack_entries(values: Sequence[bytes], num_classes: int) -> tuple[IndexArray, LabelArray]:
    """Unpack entry values into (n,) written rounds and (n, C) labels (fresh arrays).

    Raises:
        StateError: a value of the wrong length (for ``num_classes``), a negative written
            round or a non-finite label.
    """
    size = entry_size(num_classes)
    if any(len(v) != size for v in values):
        raise StateError(
            f"cache entry of the wrong length (expected {size} bytes for {num_classes} classes)"
        )
    packed = np.frombuffer(b"".join(values), dtype=_entry_dtype(num_classes))
    written = packed["written"].astype(np.int64)
    labels = np.array(packed["labels"], dtype=np.float32, order="C").reshape(
        len(values), num_classes
    )
    if written.size and int(written.min()) < 0:
        raise StateError("cache entry with a negative written round")
    if not bool(np.isfinite(labels).all()):
        raise StateError("cache entry with non-finite labels")
    return written, labels


def cache_digest(indices: IndexArray, written: IndexArray, labels: LabelArray) -> str:
    """``ServerCache.digest()`` of a cache given its present entries in ascending order."""
    h = hashlib.sha256()
    h.update(indices.astype("<i8").tobytes())
    h.update(written.astype("<i8").tobytes())
    h.update(labels.astype("<f4").tobytes())
    return h.hexdigest()


def _tensor(array: npt.NDArray[np.generic]) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def assemble_snapshot(
    version: int, digest: str, num_classes: int, indices: IndexArray, values: Sequence[bytes]
) -> CacheSnapshot:
    """Build a full snapshot from stored entries (any order) and check it.

    Raises:
        StateError: malformed entries, or entries whose digest is not ``digest``.
    """
    order = np.argsort(indices, kind="stable")
    indices = indices[order]
    written, labels = unpack_entries([values[i] for i in order], num_classes)
    if indices.size and int(indices[0]) < 0:
        raise StateError("cache entry with a negative public index")
    if cache_digest(indices, written, labels) != digest:
        raise StateError(
            f"cache entries do not match the stored digest at version {version} "
            f"({indices.size} entries)"
        )
    empty = np.empty(0, dtype=np.int64)
    return CacheSnapshot(
        version, digest, True, _tensor(indices), _tensor(written), _tensor(labels), _tensor(empty)
    )


def log_reaches(current: int, version: int, log_versions: int) -> bool:
    """Whether a log keeping the last ``log_versions`` records covers ``version+1..current``."""
    return current - version <= log_versions


def first_touches(records: Sequence[ChangeRecord]) -> tuple[IndexArray, BoolArray]:
    """Merge consecutive change records (oldest first).

    Returns:
        (touched, present_before): every index any record touched, ascending, and
        whether its entry existed before the first record (read off its first touch: a
        clear or an overwrite means it existed, a new set means it did not).
    """
    parts: list[IndexArray] = []
    flags: list[BoolArray] = []
    for record in records:
        parts += [record.set_indices, record.clear_indices]
        flags += [
            ~np.isin(record.set_indices, record.new_indices),
            np.ones(record.clear_indices.size, dtype=np.bool_),
        ]
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.bool_)
    touched, first = np.unique(np.concatenate(parts), return_index=True)
    return touched.astype(np.int64), np.concatenate(flags)[first]


def assemble_changes(
    version: int,
    digest: str,
    num_classes: int,
    touched: IndexArray,
    present_before: BoolArray,
    values: Sequence[bytes | None],
) -> CacheSnapshot:
    """Build a changes snapshot from the current values of the touched entries.

    Args:
        version: the current version.
        digest: the current digest.
        num_classes: C.
        touched: (k,) ascending indices touched since the version asked for.
        present_before: (k,) whether each existed at that version.
        values: (k,) current packed value of each touched entry, None when empty.

    Raises:
        StateError: malformed entries.
    """
    present_now = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    written, labels = unpack_entries([v for v in values if v is not None], num_classes)
    cleared = touched[~present_now & present_before]
    return CacheSnapshot(
        version,
        digest,
        False,
        _tensor(touched[present_now]),
        _tensor(written),
        _tensor(labels),
        _tensor(cleared),
    )
