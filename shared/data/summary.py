"""What a federation's split holds, in a few lines a user can check before a long run.

The lines name the private task, where the public set comes from (the private data set,
disjoint from the shards, or another data set) and the test data; the private line
also says how skewed the clients' class priors are (the effective number of classes,
``exp`` of a prior's entropy: C for a uniform prior, 1 for a single class).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shared.config import FederationConfig


class _Split(Protocol):
    """What the summary reads of a split (:class:`~shared.data.partition.FederatedData`).

    Named structurally, so that this module needs no torch.
    """

    @property
    def public(self) -> Sized: ...  # len() is |P|
    @property
    def test(self) -> Sized: ...
    @property
    def class_priors(self) -> object: ...  # (K, C) tensor; empty without shards
    @property
    def num_classes(self) -> int: ...


__all__ = ["describe_split", "effective_classes"]


def effective_classes(priors: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(K,) exp(entropy) of each row of the (K, C) class priors."""
    p = np.asarray(priors, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    result: npt.NDArray[np.float64] = np.exp(-(p * logs).sum(axis=1))
    return result


def describe_split(config: FederationConfig, data: _Split) -> list[str]:
    """One line each for the private shards (when drawn), the public set and the test data."""
    lines = []
    priors = np.asarray(data.class_priors)
    if priors.size:
        spread = effective_classes(priors)
        partition = "IID" if config.iid else f"Dirichlet alpha={config.alpha:g}"
        lines.append(
            f"private: {config.dataset} train, {config.clients} clients x "
            f"{config.samples_per_client:,} images, {partition} (effective classes per "
            f"client: mean {float(spread.mean()):.1f}, min {float(spread.min()):.1f} of "
            f"{data.num_classes})"
        )
    origin = (
        f"{config.public_source} train (another data set than the private task)"
        if config.cross_dataset
        else f"{config.dataset} train, disjoint from the private shards"
    )
    lines.append(
        f"public:  {origin}, {len(data.public):,} images, {config.public_per_round:,} drawn "
        "per round; their labels are never used"
    )
    shards = f"; {config.clients} client shards of {config.test_per_client:,}"
    lines.append(
        f"test:    {config.dataset} test, {len(data.test):,} images (server)"
        + (shards if config.test_per_client and priors.size else "")
    )
    return lines
