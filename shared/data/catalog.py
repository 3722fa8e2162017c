"""The data sets scarlet-fd can load, and the number of classes C of each.

This is the one place that table is written. It imports nothing heavy (no torch, no
numpy), so a process that only needs C, such as the cache service validating soft labels
of shape (|P|, C), can ask without loading a data set.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "DATASETS",
    "DATASET_CLASSES",
    "DATASET_SHAPES",
    "DATASET_SPLITS",
    "dataset_classes",
]

DATASET_CLASSES: Mapping[str, int] = MappingProxyType(
    {
        "fashion-mnist": 10,
        "mnist-5k": 10,
        "digits": 10,
        "cifar10": 10,
        "cifar100": 100,
    }
)
"""Data set name → number of classes C of its task (read-only)."""

DATASET_SPLITS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "fashion-mnist": (60_000, 10_000),
        "mnist-5k": (4_000, 1_000),
        "digits": (1_438, 359),
        "cifar10": (50_000, 10_000),
        "cifar100": (50_000, 10_000),
    }
)
"""Data set name → (train, test) split sizes as :func:`shared.data.load_dataset` returns
them; the configuration checks a federation fits before anything is loaded."""

DATASET_SHAPES: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "fashion-mnist": (1, 28, 28),
        "mnist-5k": (1, 28, 28),
        "digits": (1, 8, 8),
        "cifar10": (3, 32, 32),
        "cifar100": (3, 32, 32),
    }
)
"""Data set name → (channels, H, W) of its images; a public set from another data set
must have the private task's shape (the model's input)."""

DATASETS: tuple[str, ...] = tuple(DATASET_CLASSES)
"""The names :func:`shared.data.load_dataset` accepts, in the table's order."""


def dataset_classes(name: str) -> int:
    """The number of classes C of the data set ``name``, without loading it.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    try:
        return DATASET_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}"
        ) from None
