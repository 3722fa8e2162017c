"""Offline data sets as normalized tensors, and seeded federation splits.

:mod:`shared.data.catalog` (names and class counts) imports no torch; this package's
other modules do.
"""

from shared.data.catalog import DATASET_CLASSES, DATASETS, dataset_classes
from shared.data.datasets import (
    DEBIAN_FASHION_MNIST,
    ImageDataset,
    RawImages,
    load_dataset,
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
    "read_dataset",
    "split_federation",
    "split_public_and_test",
]
