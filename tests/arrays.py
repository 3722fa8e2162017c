"""numpy test data for the torch-free layers (protocol, state stores, cache rules)."""

from __future__ import annotations

import numpy as np

__all__ = ["softmax", "softmax_rows"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax over the last axis, as a model's output layer computes it."""
    x = np.asarray(logits, dtype=np.float32)
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def softmax_rows(rng: np.random.Generator, n: int, c: int, scale: float = 1.0) -> np.ndarray:
    """(n, c) float32 rows on the simplex: the softmax of ``scale`` times normal logits."""
    return softmax(rng.standard_normal((n, c)) * scale)
