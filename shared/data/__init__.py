"""Offline data sets as normalized tensors, and seeded federation splits.

:mod:`shared.data.catalog` (names and class counts) imports no torch; this package's
other modules do. They load on first use of one of their names, so that a process that
reads only the catalog (the configuration, the cache service, the launcher) never
imports torch by importing this package (DECISIONS §28).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shared.data.catalog import DATASET_CLASSES, DATASETS, dataset_classes

if TYPE_CHECKING:
    from shared.data.datasets import (
        DEBIAN_FASHION_MNIST,
        ImageDataset,
        RawImages,
        load_dataset,
        pixel_normalization,
        read_dataset,
    )
    from shared.data.partition import (
        FederatedData,
        Shards,
        dirichlet_partition,
        split_federation,
        split_public_and_test,
    )

__all__ = [
    "DATASETS",
    "DATASET_CLASSES",
    "DEBIAN_FASHION_MNIST",
    "FederatedData",
    "ImageDataset",
    "RawImages",
    "Shards",
    "dataset_classes",
    "dirichlet_partition",
    "load_dataset",
    "pixel_normalization",
    "read_dataset",
    "split_federation",
    "split_public_and_test",
]

_LAZY = {
    **dict.fromkeys(
        (
            "DEBIAN_FASHION_MNIST",
            "ImageDataset",
            "RawImages",
            "load_dataset",
            "pixel_normalization",
            "read_dataset",
        ),
        "shared.data.datasets",
    ),
    **dict.fromkeys(
        (
            "FederatedData",
            "Shards",
            "dirichlet_partition",
            "split_federation",
            "split_public_and_test",
        ),
        "shared.data.partition",
    ),
}


def __getattr__(name: str) -> Any:
    """Import the torch-based module that defines ``name`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
