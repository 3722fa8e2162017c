"""The cache backends' packing kit: entries as bytes, updates checked, snapshots built.

Every :class:`~shared.state.base.FederationStore` backend stores and reads the cache
through these helpers, so that the in-process and the Redis store return identical
snapshots and change sets. A cache entry is packed as an 8-byte little-endian signed
written round followed by ``C`` little-endian float32 probabilities; two entries are
equal iff their packed bytes are equal. A snapshot is checked against the stored digest
(:func:`shared.digests.cache_digest`) before it is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.arrays import AnyArray, BoolArray, IndexArray, LabelArray
from shared.digests import cache_digest, is_digest
from shared.errors import StateError
from shared.state.base import CacheSnapshot, CacheUpdate, ChangeRecord

__all__ = [
    "BoolArray",
    "LabelArray",
    "assemble_changes",
    "assemble_snapshot",
    "entry_size",
    "first_touches",
    "log_window",
    "pack_entries",
    "pack_update",
    "unpack_entries",
    "validate_update",
]


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
    if not is_digest(update.digest):
        raise ValueError("commit: digest must be 64 lowercase hex digits")
    fields = (update.set_indices, update.set_written, update.set_labels, update.clear_indices)
    if not all(isinstance(array, np.ndarray) for array in fields):
        raise ValueError("commit: the update's indices, rounds and labels must be numpy arrays")
    u = update.set_indices.shape[0] if update.set_indices.ndim == 1 else -1
    expected: dict[str, tuple[AnyArray, type[np.generic], tuple[int, ...]]] = {
        "set_indices": (update.set_indices, np.int64, (u,)),
        "set_written": (update.set_written, np.int64, (u,)),
        "set_labels": (update.set_labels, np.float32, (u, num_classes)),
        "clear_indices": (update.clear_indices, np.int64, (update.clear_indices.size,)),
    }
    for name, (array, dtype, shape) in expected.items():
        if array.dtype != dtype or tuple(array.shape) != shape:
            raise ValueError(
                f"commit: {name} must be {np.dtype(dtype)} of shape {shape}, "
                f"got {array.dtype} {tuple(array.shape)}"
            )
    both = np.concatenate([update.set_indices, update.clear_indices])
    if both.size and (int(both.min()) < 0 or np.unique(both).size != both.size):
        raise ValueError("commit: indices must be >= 0 and appear at most once in set + clear")
    if u and int(update.set_written.min()) < 0:
        raise ValueError("commit: written rounds of set entries must be >= 0")
    if not bool(np.isfinite(update.set_labels).all()):
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


def pack_update(update: CacheUpdate, num_classes: int) -> list[tuple[int, bytes]]:
    """Validate ``update`` and pack its set entries, ready to store.

    Returns:
        One (public index, packed entry) pair per row of ``update.set_indices``, in order.

    Raises:
        ValueError: see :func:`validate_update`.
    """
    validate_update(update, num_classes)
    values = pack_entries(update.set_written, update.set_labels)
    return list(zip(update.set_indices.tolist(), values, strict=True))


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
    return CacheSnapshot(version, digest, True, indices, written, labels, empty)


def log_window(version: int, current: int, log_versions: int) -> range | None:
    """The versions whose change records lead from ``version`` to ``current``.

    Args:
        version: the version a replica holds (≥ 0).
        current: the store's version.
        log_versions: how many of the newest change records the store keeps.

    Returns:
        ``range(version + 1, current + 1)`` (empty when ``version`` is current), or None
        when the kept records no longer reach back to ``version``.

    Raises:
        StateError: ``version`` is ahead of ``current``.
    """
    if version > current:
        raise StateError(f"changes: version {version} is ahead of the cache ({current})")
    if current - version > log_versions:
        return None
    return range(version + 1, current + 1)


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
    return CacheSnapshot(version, digest, False, touched[present_now], written, labels, cleared)
