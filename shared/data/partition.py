"""Seeded non-IID federation splits: public pool, Dirichlet private shards, client tests.

The private partition follows the paper's ``client_inner_dirichlet`` with equal quotas:
client k draws a class prior p_k ~ Dir(α·1_C) and fills its quota one example at a time,
picking a class from p_k; a class that has run out sends the draw to the remaining
classes with p_k renormalized over them. The reference code interleaves clients at
random, one draw at a time; here all draws are made at once, given a random global order
(the interleaving), and served class by class in that order, with the draws that find
their class exhausted redrawn in a further pass. At most C passes, each vectorized.

Shards are kept as index lists and materialized on access (:class:`Shards`): holding K
private and K test shards as image copies grew with K (3.1 GB of test shards alone at
K = 10,000 with 100 test images each), while the indices are a few bytes per image.
:func:`split_public_and_test` makes the same public draw without splitting the rest: all
the aggregator needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload

import numpy as np
import torch
from torch import Tensor

from shared.data.datasets import ImageDataset
from shared.errors import DataError

__all__ = [
    "FederatedData",
    "LabelledSplit",
    "Shards",
    "dirichlet_partition",
    "split_federation",
    "split_public_and_test",
]


class LabelledSplit(Protocol):
    """A split to draw from: an :class:`ImageDataset` or a :class:`RawImages`."""

    @property
    def labels(self) -> Tensor:
        """(N,) int64 class ids."""
        ...

    @property
    def num_classes(self) -> int:
        """C."""
        ...

    @property
    def name(self) -> str:
        """The data set's name."""
        ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, H, W)."""
        ...

    def __len__(self) -> int: ...

    def subset(self, indices: Tensor) -> ImageDataset:
        """The rows at ``indices`` as normalized images (a copy)."""
        ...


class Shards(Sequence[ImageDataset]):
    """K shards of one split, each materialized when asked for (a new copy every time).

    Args:
        source: the split the shards index into.
        indices: the positions of each shard in ``source``.
    """

    def __init__(self, source: LabelledSplit, indices: Sequence[Tensor]) -> None:
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, k: int) -> ImageDataset: ...

    @overload
    def __getitem__(self, k: slice) -> Shards: ...

    def __getitem__(self, k: int | slice) -> ImageDataset | Shards:
        if isinstance(k, slice):
            return Shards(self.source, self.indices[k])
        return self.source.subset(self.indices[k])

    def __iter__(self) -> Iterator[ImageDataset]:
        return (self.source.subset(indices) for indices in self.indices)


def _empty_index() -> Tensor:
    return torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True, slots=True)
class FederatedData:
    """Everything a simulated federation needs, split without overlap.

    Attributes:
        public: (P, ch, H, W) float32 unlabeled public images, drawn uniformly from the
            train split.
        public_labels: (P,) int64; for analysis and tests only, never for training.
        clients: K private shards, disjoint from each other and from the public set
            (a :class:`Shards` from :func:`split_federation`: each access makes a copy).
        client_tests: K test shards drawn from the test split with each client's class
            prior (paper §6.1); they may overlap each other. Empty from
            :func:`split_public_and_test`.
        test: the whole test split (server evaluation).
        num_classes: C.
        input_shape: (channels, H, W).
        public_indices: (P,) int64 positions of the public images in the train split.
        client_indices: K tensors of int64 positions of each shard in the train split.
        class_priors: (K, C) float64 client class priors p_k (uniform rows when IID).
    """

    public: Tensor
    public_labels: Tensor
    clients: Sequence[ImageDataset]
    client_tests: Sequence[ImageDataset]
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
    train: LabelledSplit,
    test: LabelledSplit,
    *,
    num_clients: int,
    alpha: float | None,
    samples_per_client: int,
    public_size: int,
    test_per_client: int,
    seed: int,
    public_source: LabelledSplit | None = None,
) -> FederatedData:
    """Draw the public pool, the private shards and the per-client test shards.

    The public pool P is drawn first, uniformly from the train split; the private shards
    come from the rest (:func:`dirichlet_partition`), so P and private data never share
    an example. With ``public_source`` (another data set's train split) P is drawn from
    it instead and the private shards from the whole train split. Each client's test
    shard is drawn from the test split, without replacement, with that client's class
    prior.

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
        public_source: where P comes from when it is not ``train`` (same image shape).

    Returns:
        The split; its shards (``clients``, ``client_tests``) are :class:`Shards`, made
        from ``train`` and ``test`` when read. The labels and priors need no images: from a
        :class:`~shared.data.datasets.RawImages` only the public set and the shards read
        are ever converted to floats.

    Raises:
        DataError: when the train split cannot hold P plus K shards, or the test split is
            smaller than one test shard.
        ValueError: for negative sizes, K < 1 or α <= 0.
    """
    if public_size < 0 or test_per_client < 0:
        raise ValueError(f"sizes must be >= 0, got {public_size=} {test_per_client=}")
    shared_pool = public_source is None
    if public_size * shared_pool + num_clients * samples_per_client > len(train):
        raise DataError(
            f"{train.name}: {public_size * shared_pool} public + {num_clients} x "
            f"{samples_per_client} private examples requested, the train split has {len(train)}"
        )
    if test_per_client > len(test):
        raise DataError(
            f"{test.name}: {test_per_client} test examples per client, test has {len(test)}"
        )
    generator = torch.Generator().manual_seed(seed)
    public_set = _public_set(train, public_source, public_size)
    public_indices, rest = _draw_public(len(public_set), public_size, generator)
    if not shared_pool:
        rest = torch.arange(len(train))  # another data set's pool takes nothing from train
    priors = _draw_priors(num_clients, train.num_classes, alpha, generator)
    shards = _fill_quotas(train.labels[rest], priors, samples_per_client, generator)
    client_indices = list(rest[shards])  # (K, n) positions: K views of one tensor
    # one draw per client, in client order: each consumes the generator
    test_indices = [
        _fill_quotas(test.labels, prior[None], test_per_client, generator)[0] for prior in priors
    ]
    public = public_set.subset(public_indices)
    return FederatedData(
        public=public.images,
        public_labels=public.labels,
        clients=Shards(train, client_indices),
        client_tests=Shards(test, test_indices),
        test=test if isinstance(test, ImageDataset) else test.subset(torch.arange(len(test))),
        num_classes=train.num_classes,
        input_shape=train.input_shape,
        public_indices=public_indices,
        client_indices=client_indices,
        class_priors=priors,
    )


def split_public_and_test(
    train: LabelledSplit,
    test: LabelledSplit,
    *,
    public_size: int,
    seed: int,
    public_source: LabelledSplit | None = None,
) -> FederatedData:
    """The public pool and the test split of :func:`split_federation`, and nothing else.

    The same draw from the same seed: ``public`` and ``test`` equal those of
    ``split_federation(train, test, ..., public_size=public_size, seed=seed,
    public_source=public_source)`` for any clients' settings, bit for bit. No private
    or test shard is drawn (``clients``, ``client_tests``, ``client_indices`` and
    ``class_priors`` are empty).

    Raises:
        DataError: when the train split is smaller than ``public_size``.
        ValueError: for a negative size.
    """
    if public_size < 0:
        raise ValueError(f"sizes must be >= 0, got {public_size=}")
    public_set = _public_set(train, public_source, public_size)
    generator = torch.Generator().manual_seed(seed)
    public_indices, _ = _draw_public(len(public_set), public_size, generator)
    public = public_set.subset(public_indices)
    return FederatedData(
        public=public.images,
        public_labels=public.labels,
        clients=[],
        client_tests=[],
        test=test if isinstance(test, ImageDataset) else test.subset(torch.arange(len(test))),
        num_classes=train.num_classes,
        input_shape=train.input_shape,
        public_indices=public_indices,
    )


def _public_set(
    train: LabelledSplit, public_source: LabelledSplit | None, public_size: int
) -> LabelledSplit:
    """The split P is drawn from, once it is checked to hold P and to fit the task."""
    source = train if public_source is None else public_source
    if public_size > len(source):
        raise DataError(
            f"{source.name}: {public_size} public examples requested, the train split has "
            f"{len(source)}"
        )
    if source.input_shape != train.input_shape:
        raise DataError(
            f"public set {source.name} has images of shape {source.input_shape}, the private "
            f"task {train.name} {train.input_shape}"
        )
    return source


def _draw_public(
    train_size: int, public_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The public positions and the rest, from the generator's first draw."""
    order = torch.randperm(train_size, generator=generator)
    return order[:public_size], order[public_size:]


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
    by_class = _shuffled_by_class(labels, torch.randperm(len(labels), generator=generator))
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


def _shuffled_by_class(labels: Tensor, perm: Tensor) -> Tensor:
    """``argsort(labels * N + perm)``: positions by class, each class in ``perm`` order.

    The keys are distinct, so any exact method gives the same order; this one walks the
    positions in ``perm`` order and sorts them stably by class, a radix sort of 16-bit
    keys in numpy (linear, and free of torch's thread start-up): about 10x faster than
    sorting the int64 keys, which the K per-client test-shard draws each pay once.
    """
    order, classes = perm.numpy(), labels.numpy()
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    keys = classes[inverse]
    if len(keys) and int(keys.max()) < 2**15:
        keys = keys.astype(np.int16)
    return torch.from_numpy(inverse[np.argsort(keys, kind="stable")])


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
