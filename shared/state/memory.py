"""In-process stores with the semantics of :mod:`shared.state.redis`.

Everything is per instance: two ``MemoryFederationStore()`` objects never share state;
components that must see the same state are handed the same object (as the embedded
simulation does). Each store guards its state with one lock, so a reader never sees half
a commit. Entries are kept packed exactly as Redis keeps them and go through the same
helpers (:mod:`shared.state.packing`), so both backends return identical snapshots and
change sets and pass the same contract tests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from shared.digests import EMPTY_DIGEST
from shared.errors import StateError
from shared.state import packing
from shared.state.base import (
    CacheSnapshot,
    CacheUpdate,
    ChangeRecord,
    check_bytes,
    check_id,
    check_run_id,
)

__all__ = ["MemoryClientStateStore", "MemoryFederationStore"]


class MemoryFederationStore:
    """A :class:`~shared.state.base.FederationStore` held in this process's memory.

    Args:
        run_id: the federation's name (validated like the Redis key prefix).
        log_versions: how many change-log records to keep (≥ 1).

    Raises:
        ValueError: an invalid run id or ``log_versions`` < 1.
    """

    def __init__(self, run_id: str = "run", *, log_versions: int = 64) -> None:
        if log_versions < 1:
            raise ValueError(f"log_versions must be >= 1, got {log_versions}")
        self.run_id = check_run_id(run_id)
        self._log_versions = log_versions
        self._lock = threading.Lock()
        self._aggregator: bytes | None = None
        self._uploads: dict[int, dict[int, bytes]] = {}
        self._entries: dict[int, bytes] = {}
        self._version = 0
        self._digest = EMPTY_DIGEST
        self._classes = 0
        self._log: dict[int, ChangeRecord] = {}
        self._results: list[str] = []

    def load_aggregator(self) -> bytes | None:
        """The aggregator's saved state blob, or None."""
        with self._lock:
            return self._aggregator

    def save_aggregator(self, blob: bytes) -> None:
        """Replace the aggregator's state blob."""
        check_bytes("aggregator blob", blob)
        with self._lock:
            self._aggregator = blob

    def record_upload(self, round_no: int, client_id: int, body: bytes) -> bool:
        """Record an upload unless ``(round_no, client_id)`` has one; True iff recorded."""
        check_bytes("upload body", body)
        round_no, client_id = check_id("round", round_no), check_id("client id", client_id)
        with self._lock:
            bodies = self._uploads.setdefault(round_no, {})
            if client_id in bodies:
                return False
            bodies[client_id] = body
            return True

    def record_uploads(self, uploads: Sequence[tuple[int, int, bytes]]) -> list[bool]:
        """:meth:`record_upload` for each ``(round, client id, body)``, under one lock."""
        checked = []
        for round_no, client_id, body in uploads:
            check_bytes("upload body", body)
            checked.append((check_id("round", round_no), check_id("client id", client_id), body))
        added: list[bool] = []
        with self._lock:
            for round_no, client_id, body in checked:
                bodies = self._uploads.setdefault(round_no, {})
                added.append(client_id not in bodies)
                bodies.setdefault(client_id, body)
        return added

    def uploads(self, round_no: int) -> dict[int, bytes]:
        """Recorded uploads of ``round_no`` by client id."""
        round_no = check_id("round", round_no)
        with self._lock:
            return dict(self._uploads.get(round_no, {}))

    def commit_round(
        self, round_no: int, aggregator_blob: bytes, update: CacheUpdate, num_classes: int
    ) -> None:
        """Apply a round's cache update, save the aggregator and drop the round's uploads.

        Raises:
            StateError: version is not the stored one + 1, or ``num_classes`` changed.
            ValueError: a malformed update.
        """
        check_bytes("aggregator blob", aggregator_blob)
        round_no = check_id("round", round_no)
        entries = packing.pack_update(update, num_classes)
        with self._lock:
            self._check_commit(update.version, num_classes)
            changed: list[int] = []
            new: list[int] = []
            for index, value in entries:
                old = self._entries.get(index)
                if old != value:
                    self._entries[index] = value
                    changed.append(index)
                    if old is None:
                        new.append(index)
            cleared = [
                i for i in update.clear_indices.tolist() if self._entries.pop(i, None) is not None
            ]
            self._version, self._digest, self._classes = update.version, update.digest, num_classes
            self._log[update.version] = ChangeRecord(
                np.array(changed, dtype=np.int64),
                np.array(cleared, dtype=np.int64),
                np.array(new, dtype=np.int64),
            )
            self._log.pop(update.version - self._log_versions, None)
            self._aggregator = aggregator_blob
            self._uploads.pop(round_no, None)

    def _check_commit(self, version: int, num_classes: int) -> None:
        if version != self._version + 1:
            raise StateError(
                f"commit: cache version {version} does not follow stored version {self._version}"
            )
        if self._classes and num_classes != self._classes:
            raise StateError(
                f"commit: {num_classes} classes, but the cache holds {self._classes} classes"
            )

    def cache_version(self) -> int:
        """The committed cache version (0 when nothing was committed)."""
        with self._lock:
            return self._version

    def cache_snapshot(self) -> CacheSnapshot:
        """The whole cache (full snapshot).

        Raises:
            StateError: entries do not match the stored digest.
        """
        with self._lock:
            indices = np.fromiter(self._entries, dtype=np.int64, count=len(self._entries))
            values = list(self._entries.values())
            version, digest, classes = self._version, self._digest, self._classes
        return packing.assemble_snapshot(version, digest, classes, indices, values)

    def cache_changes_since(self, version: int) -> CacheSnapshot | None:
        """Changes since ``version``, or None when the log does not reach back that far.

        Raises:
            StateError: ``version`` is ahead of the store.
            ValueError: ``version`` < 0.
        """
        if version < 0:
            raise ValueError(f"changes: version must be >= 0, got {version}")
        with self._lock:
            current = self._version
            versions = packing.log_window(version, current, self._log_versions)
            if versions is None:
                return None
            records = [self._log.get(v) for v in versions]
            if any(r is None for r in records):
                return None
            touched, present_before = packing.first_touches([r for r in records if r is not None])
            values = [self._entries.get(i) for i in touched.tolist()]
            digest, classes = self._digest, self._classes
        return packing.assemble_changes(current, digest, classes, touched, present_before, values)

    def append_result(self, record: str) -> None:
        """Append one finished round's JSON record."""
        if not isinstance(record, str):
            raise TypeError(f"result record must be str, got {type(record).__name__}")
        with self._lock:
            self._results.append(record)

    def results(self) -> list[str]:
        """All result records, oldest first."""
        with self._lock:
            return list(self._results)

    def delete_all(self) -> None:
        """Forget everything of this run."""
        with self._lock:
            self._aggregator = None
            self._uploads.clear()
            self._entries.clear()
            self._version, self._digest, self._classes = 0, EMPTY_DIGEST, 0
            self._log.clear()
            self._results.clear()

    def close(self) -> None:
        """Nothing to release (symmetry with the Redis store)."""


class MemoryClientStateStore:
    """A :class:`~shared.state.base.ClientStateStore` held in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[int, bytes] = {}

    def load(self, client_id: int) -> bytes | None:
        """The state saved for ``client_id``, or None."""
        client_id = check_id("client id", client_id)
        with self._lock:
            return self._blobs.get(client_id)

    def save(self, client_id: int, blob: bytes) -> None:
        """Replace the state of ``client_id``."""
        check_bytes("client state", blob)
        client_id = check_id("client id", client_id)
        with self._lock:
            self._blobs[client_id] = blob

    def delete_all(self) -> None:
        """Forget every client's state."""
        with self._lock:
            self._blobs.clear()

    def close(self) -> None:
        """Nothing to release (symmetry with the Redis store)."""
