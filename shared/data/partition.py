"""Seeded non-IID federation splits: public pool, Dirichlet private shards, client tests.

The private partition follows the paper's ``client_inner_dirichlet`` with equal quotas:
client k draws a class prior p_k ~ Dir(α·1_C) and fills its quota one example at a time,
picking a class from p_k; a class that has run out sends the draw to the remaining
classes with p_k renormalized over them. The reference code interleaves clients at
random, one draw at a time; here all draws are made at once, given a random global order
(the interleaving), and served class by class in that order, with the draws that find
their class exhausted redrawn in a further pass. At most C passes, each vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from shared.data.datasets import ImageDataset
from shared.errors import DataError

__all__ = ["FederatedData", "dirichlet_partition", "split_federation"]


def _empty_index() -> Tensor:
    return torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True, slots=True)
class FederatedData:
    """Everything a simulated federation needs, split without overlap.

    Attributes:
        public: (P, ch, H, W) float32 unlabeled public images, drawn uniformly from the
            train split.
        public_labels: (P,) int64; for analysis and tests only, never for training.
        clients: K private shards, disjoint from each other and from the public set.
        client_tests: K test shards drawn from the test split with each client's class
            prior (paper §6.1); they may overlap each other.
        test: the whole test split (server evaluation).
        num_classes: C.
        input_shape: (channels, H, W).
        public_indices: (P,) int64 positions of the public images in the train split.
        client_indices: K tensors of int64 positions of each shard in the train split.
        class_priors: (K, C) float64 client class priors p_k (uniform rows when IID).
    """

    public: Tensor
    public_labels: Tensor
    clients: list[ImageDataset]
    client_tests: list[ImageDataset]
    test: ImageDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    # Bookkeeping defaults to empty so that hand-built instances (test fakes) stay short.
    public_indices: Tensor = field(default_factory=_empty_index)
    client_indices: list[Tensor] = field(default_factory=list)
    class_priors: Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.float64))


def dirichlet_partition(
    labels: Tensor,
    num_clients: int,
    alpha: float | None,
    samples_per_client: int,
    generator: torch.Generator,
) -> list[Tensor]:
    """Split examples among clients with Dirichlet class priors and equal quotas.

    Args:
        labels: (N,) int64 class ids; C is taken as ``labels.max() + 1``.
        num_clients: K >= 1.
        alpha: the Dirichlet concentration α > 0 (small is skewed), or None for IID
            (uniform class prior).
        samples_per_client: the quota n >= 0 of every client.
        generator: the only source of randomness; the same state gives the same split.

    Returns:
        K tensors of n int64 positions into ``labels``, pairwise disjoint.

    Raises:
        DataError: when K·n exceeds N.
        ValueError: when K < 1, n < 0 or α <= 0.
    """
    num_classes = int(labels.max()) + 1 if len(labels) else 1
    priors = _draw_priors(num_clients, num_classes, alpha, generator)
    return list(_fill_quotas(labels, priors, samples_per_client, generator))


def split_federation(
    train: ImageDataset,
    test: ImageDataset,
    *,
    num_clients: int,
    alpha: float | None,
    samples_per_client: int,
    public_size: int,
    test_per_client: int,
    seed: int,
) -> FederatedData:
    """Draw the public pool, the private shards and the per-client test shards.

    The public pool P is drawn first, uniformly from the train split; the private shards
    come from the rest (:func:`dirichlet_partition`), so P and private data never share
    an example. Each client's test shard is drawn from the test split, without
    replacement, with that client's class prior.

    Args:
        train: the train split; public and private data both come from it.
        test: the test split; never public nor private.
        num_clients: K.
        alpha: the Dirichlet α of the private (and client test) class priors, or None for
            IID.
        samples_per_client: private examples per client.
        public_size: |P|.
        test_per_client: examples per client test shard.
        seed: the split's seed; the result depends on nothing else.

    Raises:
        DataError: when the train split cannot hold P plus K shards, or the test split is
            smaller than one test shard.
        ValueError: for negative sizes, K < 1 or α <= 0.
    """
    if public_size < 0 or test_per_client < 0:
        raise ValueError(f"sizes must be >= 0, got {public_size=} {test_per_client=}")
    if public_size + num_clients * samples_per_client > len(train):
        raise DataError(
            f"{train.name}: {public_size} public + {num_clients} x {samples_per_client} private "
            f"examples requested, the train split has {len(train)}"
        )
    if test_per_client > len(test):
        raise DataError(
            f"{test.name}: {test_per_client} test examples per client, test has {len(test)}"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator)
    public_indices, rest = order[:public_size], order[public_size:]
    priors = _draw_priors(num_clients, train.num_classes, alpha, generator)
    client_indices = [
        rest[shard]
        for shard in _fill_quotas(train.labels[rest], priors, samples_per_client, generator)
    ]
    client_tests = [
        test.subset(_fill_quotas(test.labels, prior[None], test_per_client, generator)[0])
        for prior in priors
    ]
    return FederatedData(
        public=train.images[public_indices],
        public_labels=train.labels[public_indices],
        clients=[train.subset(indices) for indices in client_indices],
        client_tests=client_tests,
        test=test,
        num_classes=train.num_classes,
        input_shape=train.input_shape,
        public_indices=public_indices,
        client_indices=client_indices,
        class_priors=priors,
    )


def _draw_priors(
    num_clients: int, num_classes: int, alpha: float | None, generator: torch.Generator
) -> Tensor:
    """(K, C) float64 class priors, rows ~ Dir(α·1_C), or uniform rows when α is None."""
    if num_clients < 1:
        raise ValueError(f"need at least one client, got {num_clients}")
    if alpha is None:
        return torch.full((num_clients, num_classes), 1.0 / num_classes, dtype=torch.float64)
    if not alpha > 0:
        raise ValueError(f"the Dirichlet alpha must be > 0 (or None for IID), got {alpha}")
    # torch's Dirichlet sampler takes no generator; numpy's does, and handles α << 1
    # without NaNs. Seeding it from the torch generator keeps one source of randomness.
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    return torch.from_numpy(rng.dirichlet(np.full(num_classes, alpha), size=num_clients))


def _fill_quotas(labels: Tensor, priors: Tensor, quota: int, generator: torch.Generator) -> Tensor:
    """Serve ``quota`` draws per prior row without replacement: (K, quota) int64 positions."""
    num_clients, num_classes = priors.shape
    if quota < 0:
        raise ValueError(f"samples per client must be >= 0, got {quota}")
    if num_clients * quota > len(labels):
        raise DataError(f"{num_clients} x {quota} examples requested, only {len(labels)} available")
    if quota == 0:
        return torch.empty(num_clients, 0, dtype=torch.int64)
    # Each class's examples, shuffled, laid end to end: class c owns the block starting
    # at block_start[c], and its next free example sits used[c] further on.
    class_size = torch.bincount(labels, minlength=num_classes)
    by_class = torch.argsort(
        labels * len(labels) + torch.randperm(len(labels), generator=generator)
    )
    block_start = torch.cumsum(class_size, 0) - class_size
    used = torch.zeros(num_classes, dtype=torch.int64)

    num_draws = num_clients * quota
    draw_client = torch.arange(num_clients).repeat_interleave(quota)
    draw_time = torch.randperm(num_draws, generator=generator)  # the random interleaving
    draw_class = _draw_classes(priors, class_size > 0, quota, generator).flatten()
    served = torch.empty(num_draws, dtype=torch.int64)
    pending = torch.arange(num_draws)
    # Every pass either serves all pending draws or exhausts a class, and redraws only
    # target classes with room left; K·n <= N guarantees room for all, so <= C passes.
    while len(pending):
        order = torch.argsort(draw_class[pending] * num_draws + draw_time[pending])
        pending = pending[order]  # grouped by class, earliest first
        cls = draw_class[pending]
        count = torch.bincount(cls, minlength=num_classes)
        rank = torch.arange(len(pending)) - (torch.cumsum(count, 0) - count)[cls]
        fits = rank < (class_size - used)[cls]
        served[pending[fits]] = by_class[block_start[cls[fits]] + used[cls[fits]] + rank[fits]]
        used += torch.bincount(cls[fits], minlength=num_classes)
        pending = pending[~fits]
        if len(pending):
            has_room = used < class_size
            owners = priors[draw_client[pending]]
            draw_class[pending] = _draw_classes(owners, has_room, 1, generator).flatten()
    return served.view(num_clients, quota)


def _draw_classes(
    priors: Tensor, allowed: Tensor, count: int, generator: torch.Generator
) -> Tensor:
    """(rows, count) classes from each row's prior restricted to ``allowed`` classes."""
    weights = priors * allowed
    # A prior can put (numerically) all its mass on exhausted classes when α is tiny;
    # such a draw then picks uniformly among the classes left.
    empty = weights.sum(1) <= 0
    weights[empty] = allowed.to(weights.dtype)
    return torch.multinomial(weights, count, replacement=True, generator=generator)
