"""Selective-FD's two selectors (Shao, Wu, Zhang, Nat. Commun. 2024; PAPER.md §5).

* Client side, :func:`fit_inlier_mask`: a KuLSIF density ratio between the client's
  private images (numerator) and uniform noise in [-1, 1]^d (denominator); a public sample
  whose ratio falls below a quantile of the ratio on held-out private images is an
  outlier, and the client never predicts it.
* Server side, :func:`confident_rows`: keep an aggregated label only if its L1 distance
  to its own one-hot argmax is below a threshold.

Pure numpy, no I/O; every random draw comes from the generator the caller passes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shared.arrays import BoolArray, LabelArray
from shared.distill.kulsif import KuLSIF

__all__ = [
    "MIN_PRIVATE_SAMPLES",
    "confident_rows",
    "fit_inlier_mask",
    "inliers_above_threshold",
    "one_hot_l1",
]

_FIT_SHARE = 0.9  # of the random half of the private set; the rest sets the threshold
MIN_PRIVATE_SAMPLES = 4
"""The smallest private set with at least one fitting and one held-out image."""


def inliers_above_threshold(
    public_ratio: npt.ArrayLike, held_out_ratio: npt.ArrayLike, quantile: float
) -> BoolArray:
    """The threshold rule: inlier iff ratio >= the ``quantile`` of the held-out ratios.

    ``np.quantile`` with its default (linear) interpolation, as the authors compute it;
    a ratio strictly below the threshold is an outlier.
    """
    held = np.asarray(held_out_ratio, dtype=np.float64)
    if not held.size:
        raise ValueError("the threshold needs at least one held-out ratio")
    threshold = float(np.quantile(held, quantile))
    mask: BoolArray = np.asarray(public_ratio, dtype=np.float64) >= threshold
    return mask


def fit_inlier_mask(
    private: npt.ArrayLike,
    public: npt.ArrayLike,
    *,
    kernel_width: float,
    lambda_exponent: float,
    quantile: float,
    rng: np.random.Generator,
) -> BoolArray:
    """Fit the client-side selector once and return its (|P|,) inlier mask.

    The draws follow the authors' recipe: |D|//2 noise samples uniform in [-1, 1]^d, a
    random half of the private set of which the first 90 % fit the estimator and the rest
    set the threshold, lambda = |D| ** lambda_exponent.

    Args:
        private: (|D|, d) the client's private images, flattened and scaled to [-1, 1].
        public: (|P|, d) the public images, flattened and scaled the same way (float32
            is enough: the estimator widens it block by block).
        kernel_width: the Gaussian kernel width.
        lambda_exponent: lambda = |D| ** lambda_exponent.
        quantile: the threshold's quantile of the held-out ratios.
        rng: the source of the noise and of the private split.

    Raises:
        ValueError: fewer than :data:`MIN_PRIVATE_SAMPLES` private images, or
            dimensions that differ.
    """
    priv = np.asarray(private, dtype=np.float64)
    pub = np.asarray(public)  # |P| x d: widened to float64 block by block by the estimator
    size = priv.shape[0]
    if size < MIN_PRIVATE_SAMPLES:
        raise ValueError(
            f"the selector needs at least {MIN_PRIVATE_SAMPLES} private images, got {size}"
        )
    if pub.ndim != 2 or pub.shape[1] != priv.shape[1]:
        raise ValueError(f"public (N, {priv.shape[1]}) expected, got {pub.shape}")
    noise = rng.uniform(-1.0, 1.0, size=(size // 2, priv.shape[1]))
    half = rng.permutation(size)[: size // 2]
    cut = int(half.size * _FIT_SHARE)
    estimator = KuLSIF.fit(
        noise, priv[half[:cut]], width=kernel_width, lam=float(size) ** lambda_exponent
    )
    return inliers_above_threshold(
        estimator.ratio(pub), estimator.ratio(priv[half[cut:]]), quantile
    )


def one_hot_l1(labels: LabelArray) -> npt.NDArray[np.float64]:
    """L1 distance of each row (n, C) to the one-hot vector of its argmax: (n,) float64.

    Equals 2 (1 - max) for a probability row; summed explicitly in float64 so that the
    threshold sees the distance itself, not that identity.
    """
    rows = np.asarray(labels, dtype=np.float64)
    hard = np.zeros_like(rows)
    if rows.size:
        hard[np.arange(rows.shape[0]), rows.argmax(axis=1)] = 1.0
    distance: npt.NDArray[np.float64] = np.abs(hard - rows).sum(axis=1)
    return distance


def confident_rows(labels: LabelArray, l1_threshold: float) -> BoolArray:
    """The server-side selector: True where :func:`one_hot_l1` < ``l1_threshold``.

    Since the distance is at most 2 (1 - 1/C) < 2, the authors' threshold of 2.0 keeps
    every row (PAPER.md §5); a smaller one drops the least confident labels.
    """
    keep: BoolArray = one_hot_l1(labels) < l1_threshold
    return keep
