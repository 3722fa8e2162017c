"""COMET's clustered knowledge: per-sample k-means centroids and the nearest one.

The server clusters, for every public sample of the round at once, the K soft labels
the contributing clients uploaded for it into K_c groups (PAPER.md §5); the centroids
(K_c x C per sample) go down, and each client distils towards the one nearest (L2) to
what its model predicts for that sample now.

numpy, vectorised over the samples: the loops run over the clusters (K_c, 2 by default)
and Lloyd's iterations, never over the samples. Deterministic for a given generator:
k-means++ seeding draws from it, and Lloyd's iterations stop when no assignment
changes (or after ``iterations``). Centroids are means of probability rows, so they are
probability rows themselves.
"""

from __future__ import annotations

import numpy as np

from shared.arrays import LabelArray

__all__ = ["kmeans_centroids", "nearest_centroids"]

_ITERATIONS = 50


def kmeans_centroids(
    points: LabelArray,
    clusters: int,
    generator: np.random.Generator,
    *,
    iterations: int = _ITERATIONS,
) -> LabelArray:
    """K-means (k-means++ seeding, then Lloyd) of every sample's points, all at once.

    Args:
        points: (n, K, C) the K clients' soft labels of each of n samples.
        clusters: K_c >= 1 centroids per sample.
        generator: the seeding's only source of randomness.
        iterations: Lloyd's iterations at most; fewer when every assignment is stable.

    Returns:
        (n, K_c, C) float32. A sample with fewer distinct points than clusters (one
        contributing client, or clients that agree) repeats a point: a centroid that no
        point is nearest to keeps its seed, which is one of the points; never NaN.

    Raises:
        ValueError: for a points array that is not (n, K >= 1, C), or clusters < 1.
    """
    if points.ndim != 3 or points.shape[1] < 1:
        raise ValueError(f"points must be (n, K >= 1, C), got shape {points.shape}")
    if clusters < 1 or iterations < 0:
        raise ValueError(f"need clusters >= 1 and iterations >= 0, got {clusters}, {iterations}")
    x = points.astype(np.float64)
    centres = _kmeans_pp(x, clusters, generator)
    assigned: np.ndarray | None = None
    for _ in range(iterations):
        nearest = _squared_distances(x, centres).argmin(axis=2)  # (n, K); ties: lowest
        if assigned is not None and np.array_equal(nearest, assigned):
            break  # the centres are already the means of these assignments
        assigned = nearest
        members = (nearest[:, :, None] == np.arange(clusters)).astype(np.float64)  # (n, K, K_c)
        counts = members.sum(axis=1)  # (n, K_c)
        sums = np.einsum("nkj,nkc->njc", members, x)
        means = sums / np.maximum(counts, 1.0)[:, :, None]
        centres = np.where(counts[:, :, None] > 0, means, centres)
    return centres.astype(np.float32)


def nearest_centroids(own: LabelArray, centroids: LabelArray) -> LabelArray:
    """Per sample, the centroid nearest (L2) to the client's own prediction.

    Args:
        own: (n, C) the client's current predictions.
        centroids: (n, K_c, C) the server's centroids of the same samples.

    Returns:
        (n, C) float32; a tie goes to the lower centroid index (as ``np.argmin``).

    Raises:
        ValueError: on mismatched shapes.
    """
    if centroids.ndim != 3 or own.shape != (centroids.shape[0], centroids.shape[2]):
        raise ValueError(
            f"need own (n, C) and centroids (n, K_c, C), got {own.shape} and {centroids.shape}"
        )
    diff = centroids.astype(np.float64) - own.astype(np.float64)[:, None, :]
    pick = (diff * diff).sum(axis=2).argmin(axis=1)
    chosen: LabelArray = centroids[np.arange(centroids.shape[0]), pick].astype(np.float32)
    return chosen


def _kmeans_pp(x: np.ndarray, clusters: int, generator: np.random.Generator) -> np.ndarray:
    """k-means++ seeds (n, K_c, C): the first point uniform, then by squared distance."""
    n, k, _ = x.shape
    rows = np.arange(n)
    centres = np.empty((n, clusters, x.shape[2]), dtype=np.float64)
    centres[:, 0] = x[rows, generator.integers(k, size=n)]
    closest = _squared_distances(x, centres[:, :1])[:, :, 0]  # (n, K)
    for j in range(1, clusters):
        cdf = np.cumsum(closest, axis=1)
        threshold = generator.random(n) * cdf[:, -1]
        # the first point whose cumulative weight exceeds the threshold: a point with
        # weight 0 (already a seed) is never drawn while another point has weight; when
        # every point is a seed already (total 0) this repeats point 0
        pick = np.minimum((cdf <= threshold[:, None]).sum(axis=1), k - 1)
        pick = np.where(cdf[:, -1] > 0, pick, 0)
        centres[:, j] = x[rows, pick]
        closest = np.minimum(closest, _squared_distances(x, centres[:, j : j + 1])[:, :, 0])
    return centres


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, K, J) squared L2 distances of the points (n, K, C) to the centres (n, J, C).

    One centre at a time: exact differences (no |x|^2 - 2x.c + |c|^2 cancellation) with
    (n, K, C) temporaries only.
    """
    out = np.empty((x.shape[0], x.shape[1], centres.shape[1]), dtype=np.float64)
    for j in range(centres.shape[1]):
        d = x - centres[:, j : j + 1]
        out[:, :, j] = (d * d).sum(axis=2)
    return out
