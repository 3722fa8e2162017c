"""Seeded, reproducible sampling of clients and public indices for a round."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "round_generator",
    "sample_clients",
    "sample_public_indices",
    "sliding_window_positions",
]


def round_generator(seed: int, round_no: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, round, stream), never on call history.

    A restarted aggregator and the embedded simulation therefore draw the same samples.

    Args:
        seed: the federation seed.
        round_no: the round t.
        stream: a small constant naming what is drawn (clients, public indices, ...).
    """
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + round_no * 7919 + stream * 104_729) % (2**63 - 1))
    return g


def sample_clients(num_clients: int, ratio: float, generator: torch.Generator) -> list[int]:
    """Pick ``max(1, round(ratio · K))`` distinct client ids, ascending.

    Args:
        num_clients: K.
        ratio: the sampling ratio in (0, 1].
        generator: the round's generator.

    Raises:
        ValueError: when ratio is outside (0, 1] or K < 1.
    """
    if num_clients < 1 or not 0 < ratio <= 1:
        raise ValueError(f"need K >= 1 and 0 < ratio <= 1, got K={num_clients} ratio={ratio}")
    count = max(1, min(num_clients, math.floor(ratio * num_clients + 0.5)))
    picked = torch.randperm(num_clients, generator=generator)[:count]
    return sorted(int(i) for i in picked)


def sample_public_indices(public_size: int, per_round: int, generator: torch.Generator) -> Tensor:
    """Draw the round's public indices I_t: ``per_round`` distinct indices of [0, |P|).

    Returns:
        (per_round,) int64, in draw order (the paper's ``randperm(|P|)[:n]``).

    Raises:
        ValueError: when per_round is not in [1, public_size].
    """
    if not 1 <= per_round <= public_size:
        raise ValueError(f"public samples per round must be in [1, {public_size}], got {per_round}")
    return torch.randperm(public_size, generator=generator)[:per_round]


def sliding_window_positions(
    public_size: int, per_round: int, stride: int, round_no: int
) -> Tensor:
    """Positions (into a run-wide permutation of the public set) of round t's window.

    The window is ``per_round`` long and advances by ``stride`` each round, so consecutive
    rounds share ``per_round - stride`` samples and only ``stride`` of each round's draw are
    new. Round t covers positions [t·stride, t·stride + per_round), wrapping around the
    public set. Round 0 draws a full window, as the paper's first round does: a smaller
    one (a window growing to its length) was measured to start 6 points lower and never
    to catch up on bytes (docs/EXPERIMENTS.md, "The sliding cache").

    Returns:
        (per_round,) int64 positions in [0, public_size).

    Raises:
        ValueError: when the sizes do not satisfy 1 <= stride <= per_round <= public_size.
    """
    if not 1 <= stride <= per_round <= public_size:
        raise ValueError(
            f"need 1 <= stride ({stride}) <= per_round ({per_round}) <= public_size ({public_size})"
        )
    start = round_no * stride
    return torch.arange(start, start + per_round, dtype=torch.int64) % public_size
