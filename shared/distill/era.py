"""Entropy reduction of averaged soft labels: DS-FL's ERA and SCARLET's Enhanced ERA.

Both take averaged client soft labels ``probs`` of shape (N, C) (rows on the simplex)
and return sharpened rows of the same shape, each summing to 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["enhanced_era", "era", "sharpen"]

# Probabilities are clamped to this floor before the log: it keeps log(0) finite while
# staying far below anything float32 soft labels carry (their smallest normal is ~1e-38).
_LOG_FLOOR = 1e-45


def era(probs: Tensor, temperature: float) -> Tensor:
    """DS-FL Entropy Reduction Aggregation: ``softmax(probs / T)`` over classes.

    Note that the softmax is applied to *probabilities*, as DS-FL does: T = 1 flattens
    rather than being the identity, and whether a given T sharpens depends on C.

    Args:
        probs: (N, C) averaged soft labels.
        temperature: T > 0.

    Returns:
        (N, C) float32 rows summing to 1.

    Raises:
        ValueError: when ``temperature`` is not a positive finite number.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"ERA temperature must be positive and finite, got {temperature}")
    return torch.softmax(probs.to(torch.float64) / temperature, dim=-1).to(torch.float32)


def enhanced_era(probs: Tensor, beta: float) -> Tensor:
    """SCARLET Enhanced ERA: ``p**β / Σ_c p**β`` over classes.

    Computed as ``softmax(β · log p)`` in float64, which equals the power form for strictly
    positive p but cannot divide 0 by 0 when β is large (``0.5**2000`` underflows to 0
    even in float64). β = 1 is the identity (up to float rounding); larger β sharpens and
    never raises the entropy; the argmax is preserved.

    Args:
        probs: (N, C) averaged soft labels, non-negative.
        beta: β ≥ 1 in the paper; any finite β > 0 is accepted.

    Returns:
        (N, C) float32 rows summing to 1. Exact zeros stay (numerically) zero.

    Raises:
        ValueError: when ``beta`` is not a positive finite number.
    """
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"Enhanced ERA beta must be positive and finite, got {beta}")
    logp = torch.log(probs.to(torch.float64).clamp_min(_LOG_FLOOR))
    return torch.softmax(beta * logp, dim=-1).to(torch.float32)


def sharpen(probs: Tensor, *, method: str, temperature: float, beta: float) -> Tensor:
    """Apply the aggregation sharpening named by ``method``.

    Args:
        probs: (N, C) averaged soft labels.
        method: ``"era"`` (DS-FL, uses ``temperature``), ``"enhanced_era"`` (SCARLET, uses
            ``beta``) or ``"none"`` (plain mean).
        temperature: DS-FL's T.
        beta: Enhanced ERA's β.

    Returns:
        (N, C) float32 rows summing to 1.

    Raises:
        ValueError: for an unknown method or an invalid parameter.
    """
    if method == "era":
        return era(probs, temperature)
    if method == "enhanced_era":
        return enhanced_era(probs, beta)
    if method == "none":
        p = probs.to(torch.float64)
        return (p / p.sum(dim=-1, keepdim=True)).to(torch.float32)
    raise ValueError(f"unknown sharpening method {method!r}: use era, enhanced_era or none")
