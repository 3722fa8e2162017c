"""The aggregator's record of every client's replica, kept only where a client holds an entry.

:class:`~shared.cache_policy.ClientMirrors` states the rule with a dense (K, |P|) table of
written rounds: 800 MB at K = 10,000 and |P| = 10,000, zstd-compressed into the
aggregator's state at every round. Under partial participation almost all of it is
``NEVER``: a client holds entries only from the rounds it took part in. This keeps, per
client that ever received signals, the ascending public indices it holds and their
written rounds (int32: |P| and the round count stay far below 2**31), so the memory
grows with the deliveries made, not with K. The answers (:meth:`diff`) are those of the
dense table, entry for entry.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import zstandard

from shared.arrays import IndexArray
from shared.cache_policy import NEVER, CacheCommit, CatchUpDiff, ServerCache, catch_up_diff
from shared.errors import StateError

__all__ = ["SparseClientMirrors"]

_I32 = npt.NDArray[np.int32]
_EMPTY: _I32 = np.empty(0, dtype=np.int32)
_HEADER = np.dtype("<i8")


class SparseClientMirrors:
    """Which global entry (its written round) every client holds; absent means ``NEVER``.

    Args:
        num_clients: K.
        public_size: |P|.
    """

    def __init__(self, num_clients: int, public_size: int) -> None:
        if num_clients < 1 or public_size < 1:
            raise ValueError(f"need K >= 1 and |P| >= 1, got {num_clients=} {public_size=}")
        self.num_clients = num_clients
        self.public_size = public_size
        # client -> (ascending public indices, their written rounds), only non-NEVER ones
        self._held: dict[int, tuple[_I32, _I32]] = {}

    @property
    def entries(self) -> int:
        """Entries held over all clients (what the memory grows with)."""
        return sum(len(indices) for indices, _ in self._held.values())

    @property
    def clients_holding(self) -> int:
        """Clients that hold at least one entry."""
        return len(self._held)

    def held(self, client_id: int, indices: IndexArray) -> IndexArray:
        """(n,) int64 written rounds ``client_id`` holds at ``indices`` (``NEVER`` if none)."""
        own, written = self._held.get(self._check(client_id), (_EMPTY, _EMPTY))
        out = np.full(len(indices), NEVER, dtype=np.int64)
        if len(own):
            at = np.minimum(np.searchsorted(own, indices), len(own) - 1)
            hit = own[at] == indices
            out[hit] = written[at[hit]]
        return out

    def diff(self, client_id: int, commit: CacheCommit) -> CatchUpDiff:
        """What ``client_id`` must change so that its replica equals C_g before ``commit``."""
        return catch_up_diff(self.held(client_id, commit.indices), commit)

    def record_delivery(self, client_id: int, commit: CacheCommit, cache: ServerCache) -> None:
        """The client received ``commit``'s signals: it now holds C_g on those indices."""
        own, written = self._held.get(self._check(client_id), (_EMPTY, _EMPTY))
        now = cache.written[commit.indices]
        present = now != NEVER
        keep = ~np.isin(own, commit.indices)
        indices = np.concatenate([own[keep], commit.indices[present].astype(np.int32)])
        rounds = np.concatenate([written[keep], now[present].astype(np.int32)])
        if not len(indices):
            self._held.pop(client_id, None)
            return
        order = np.argsort(indices, kind="stable")
        self._held[client_id] = (indices[order], rounds[order])

    def dense(self) -> IndexArray:
        """The (K, |P|) int64 table :class:`~shared.cache_policy.ClientMirrors` would hold.

        For tests and small federations only: this is the size the class avoids.
        """
        table = np.full((self.num_clients, self.public_size), NEVER, dtype=np.int64)
        for client_id, (indices, rounds) in self._held.items():
            table[client_id, indices] = rounds
        return table

    def to_bytes(self) -> bytes:
        """The record as bytes (zstd): a compact checkpoint of the aggregator.

        Layout before compression, little-endian: (clients, entries) as int64; the client
        ids and their entry counts, then every client's indices and written rounds, int32.
        """
        ids = np.array(sorted(self._held), dtype="<i4")
        counts = np.array([len(self._held[k][0]) for k in ids], dtype="<i4")
        indices = [self._held[int(k)][0] for k in ids]
        rounds = [self._held[int(k)][1] for k in ids]
        parts = [
            np.array([len(ids), int(counts.sum())], dtype=_HEADER).tobytes(),
            ids.tobytes(),
            counts.tobytes(),
            np.concatenate([_EMPTY, *indices]).astype("<i4").tobytes(),
            np.concatenate([_EMPTY, *rounds]).astype("<i4").tobytes(),
        ]
        return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))

    @classmethod
    def from_bytes(cls, blob: bytes, num_clients: int, public_size: int) -> SparseClientMirrors:
        """Inverse of :meth:`to_bytes` for a federation of ``num_clients`` x ``public_size``.

        Raises:
            StateError: a corrupt blob, or one whose clients or indices do not fit.
        """
        mirrors = cls(num_clients, public_size)
        try:
            raw = zstandard.ZstdDecompressor().decompress(blob)
        except zstandard.ZstdError as e:
            raise StateError(f"client mirrors: not a zstd frame ({e})") from None
        if len(raw) < 16:
            raise StateError("client mirrors: truncated header")
        clients, entries = (int(v) for v in np.frombuffer(raw, dtype=_HEADER, count=2))
        if clients < 0 or entries < 0 or len(raw) != 16 + 4 * (2 * clients + 2 * entries):
            raise StateError(f"client mirrors: {len(raw)} bytes for {clients}/{entries} entries")
        body = np.frombuffer(raw, dtype="<i4", offset=16).astype(np.int32)
        ids, counts = body[:clients], body[clients : 2 * clients]
        indices, rounds = body[2 * clients : 2 * clients + entries], body[2 * clients + entries :]
        if int(counts.sum()) != entries or (counts < 1).any():
            raise StateError("client mirrors: per-client counts do not add up")
        if clients and (ids.min() < 0 or ids.max() >= num_clients):
            raise StateError(f"client mirrors: a client id outside [0, {num_clients})")
        if entries and (indices.min() < 0 or indices.max() >= public_size or rounds.min() < 0):
            raise StateError(f"client mirrors: an index outside [0, {public_size}) or a bad round")
        start = 0
        for client_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
            own = indices[start : start + count].copy()
            if (np.diff(own) <= 0).any():
                raise StateError(f"client mirrors: client {client_id}'s indices not ascending")
            mirrors._held[client_id] = (own, rounds[start : start + count].copy())
            start += count
        return mirrors

    def _check(self, client_id: int) -> int:
        if not 0 <= client_id < self.num_clients:
            raise ValueError(f"client id {client_id} outside [0, {self.num_clients})")
        return client_id
