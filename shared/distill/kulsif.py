"""KuLSIF: kernel unconstrained least-squares density-ratio estimation (numpy, float64).

Kanamori, Suzuki, Sugiyama, "Statistical analysis of kernel-based least-squares
density-ratio estimation" (Machine Learning, 2012), in the form Selective-FD's authors
use (PAPER.md §5): with ``n`` samples ``x`` of the denominator density, ``m`` samples
``y`` of the numerator and a Gaussian kernel ``k``,

    alpha = (K_xx / n + lambda I)^-1 (-K_xy 1_m / (n m lambda))      (n,)
    w(z)  = k(z, x) alpha + mean_j k(z, y_j) / lambda

``w(z)`` estimates p_numerator(z) / p_denominator(z) up to the regularisation: large
where numerator samples crowd, small far from them. Pure math, no I/O, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["KuLSIF", "gaussian_kernel"]

Float64Array = npt.NDArray[np.float64]

_BATCH = 1000  # rows of z per kernel block: (1000, n) float64 blocks, not (|P|, n) at once


def gaussian_kernel(a: Float64Array, b: Float64Array, width: float) -> Float64Array:
    """exp(-||a_i - b_j||^2 / (2 width^2)) for every row pair: (len(a), len(b)) float64.

    Squared distances come from ||a||^2 + ||b||^2 - 2 a.b (one matrix product, not an
    (N, M, d) difference tensor); rounding can make that slightly negative, so it is
    clipped at 0.
    """
    a2 = np.einsum("ij,ij->i", a, a)
    b2 = np.einsum("ij,ij->i", b, b)
    squared = np.maximum(a2[:, None] + b2[None, :] - 2.0 * (a @ b.T), 0.0)
    kernel: Float64Array = np.exp(-squared / (2.0 * width * width))
    return kernel


@dataclass(frozen=True, slots=True)
class KuLSIF:
    """A fitted estimator: the denominator and numerator samples and the weights alpha."""

    x: Float64Array  # (n, d) denominator samples
    y: Float64Array  # (m, d) numerator samples
    alpha: Float64Array  # (n,)
    width: float
    lam: float

    @classmethod
    def fit(cls, x: npt.ArrayLike, y: npt.ArrayLike, *, width: float, lam: float) -> KuLSIF:
        """Solve for alpha (one dense (n, n) linear system).

        Args:
            x: (n, d) samples of the denominator density (Selective-FD: uniform noise).
            y: (m, d) samples of the numerator density (the client's private images).
            width: the Gaussian kernel width (sigma).
            lam: the regularisation lambda > 0.

        Raises:
            ValueError: empty samples, mismatched dimensions, width or lam not positive.
        """
        xs = np.asarray(x, dtype=np.float64)
        ys = np.asarray(y, dtype=np.float64)
        if xs.ndim != 2 or ys.ndim != 2 or xs.shape[1] != ys.shape[1]:
            raise ValueError(f"x (n, d) and y (m, d) expected, got {xs.shape} and {ys.shape}")
        if not xs.shape[0] or not ys.shape[0]:
            raise ValueError("KuLSIF needs at least one sample of each density")
        if width <= 0 or lam <= 0:
            raise ValueError(f"width and lam must be positive, got {width} and {lam}")
        n, m = xs.shape[0], ys.shape[0]
        lhs = gaussian_kernel(xs, xs, width) / n + lam * np.eye(n)
        rhs = -gaussian_kernel(xs, ys, width).sum(axis=1) / (n * m * lam)
        # lhs is symmetric positive definite (a kernel Gram matrix plus lam I): solve,
        # never invert; the authors' pinv fallback is never needed
        alpha: Float64Array = np.linalg.solve(lhs, rhs)
        return cls(xs, ys, alpha, float(width), float(lam))

    def ratio(self, z: npt.ArrayLike) -> Float64Array:
        """The estimated density ratio w(z) of each row of ``z`` ((N, d)): (N,) float64."""
        zs = np.asarray(z)  # float32 rows are widened block by block, not all at once
        if zs.ndim != 2 or zs.shape[1] != self.x.shape[1]:
            raise ValueError(f"z must be (N, {self.x.shape[1]}), got {zs.shape}")
        out = np.empty(zs.shape[0], dtype=np.float64)
        for start in range(0, zs.shape[0], _BATCH):
            block = zs[start : start + _BATCH].astype(np.float64)
            left = gaussian_kernel(block, self.x, self.width) @ self.alpha
            right = gaussian_kernel(block, self.y, self.width).mean(axis=1) / self.lam
            out[start : start + _BATCH] = left + right
        return out
