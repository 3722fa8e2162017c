"""Per-public-index averaging of client soft labels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mean_by_index"]


def mean_by_index(labels: Tensor, index: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """Average the rows of ``labels`` that share a public index.

    The sum is taken in float64 in ascending (index, original row) order, so the result
    does not depend on the order in which uploads arrived as long as the caller passes
    rows sorted by a stable key (client id).

    Args:
        labels: (M, C) soft labels from all uploads, concatenated.
        index: (M,) int64 public index of each row, each in [0, num_items).
        num_items: size of the public set P.

    Returns:
        ``(means, unique_index)``: (K, C) float32 means and their (K,) int64 indices,
        ascending.

    Raises:
        ValueError: on shape mismatch or an index outside [0, num_items).
    """
    if labels.ndim != 2 or index.ndim != 1 or labels.shape[0] != index.shape[0]:
        raise ValueError(
            f"labels (M, C) and index (M,) expected, got {tuple(labels.shape)} "
            f"and {tuple(index.shape)}"
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_items):
        raise ValueError(f"index outside [0, {num_items})")
    unique_index, inverse = torch.unique(index, sorted=True, return_inverse=True)
    sums = torch.zeros(unique_index.numel(), labels.shape[1], dtype=torch.float64)
    # (M, C) -> (K, C); index_add_ on CPU accumulates rows in order, deterministically
    sums.index_add_(0, inverse, labels.to(torch.float64))
    counts = torch.bincount(inverse, minlength=unique_index.numel()).to(torch.float64)
    return (sums / counts.unsqueeze(1)).to(torch.float32), unique_index
