"""SHA-256 digests that let two holders of a soft-label cache prove they agree.

Every digest hashes little-endian bytes (int64 for indices and rounds, float32 for labels)
and is written as 64 lowercase hex digits. Two parties compute the same digest from
different data structures (the aggregator's and clients' caches in
:mod:`shared.cache_policy`, the stores' packed entries in :mod:`shared.state`), so the
byte layout is defined here, once, with numpy and hashlib only: the stores and the
protocol can use it without importing the cache rules.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, TypeGuard

import numpy as np
import numpy.typing as npt

__all__ = [
    "EMPTY_DIGEST",
    "cache_digest",
    "is_digest",
    "targets_digest",
]

EMPTY_DIGEST: Final = hashlib.sha256().hexdigest()
"""Digest of a cache with no present entry (``ServerCache.digest()`` of a fresh cache)."""

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def cache_digest(
    indices: npt.NDArray[np.integer],
    written: npt.NDArray[np.integer],
    labels: npt.NDArray[np.floating],
) -> str:
    """Digest of a cache given its present entries, in ascending index order.

    Hashes the indices, then their written rounds, then their labels, so that a cache is
    identified by which entries are present and by the round and label of each.

    Args:
        indices: (n,) ascending public indices of the present entries.
        written: (n,) the round each entry was written in.
        labels: (n, C) each entry's soft label.

    Returns:
        64 lowercase hex digits; :data:`EMPTY_DIGEST` when n = 0.
    """
    h = hashlib.sha256()
    h.update(indices.astype("<i8").tobytes())
    h.update(written.astype("<i8").tobytes())
    h.update(labels.astype("<f4").tobytes())
    return h.hexdigest()


def targets_digest(targets: npt.NDArray[np.floating]) -> str:
    """Digest of a restored target matrix (n, C), hashed as float32 little-endian bytes.

    The aggregator sends it with each task; a client whose restored targets hash
    differently holds a desynchronized replica.
    """
    return hashlib.sha256(targets.astype("<f4").tobytes()).hexdigest()


def is_digest(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a digest's text form: a str of 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX_DIGEST.fullmatch(value) is not None
