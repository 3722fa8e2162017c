"""Offline data sets as normalized tensors, and seeded federation splits."""

from shared.data.datasets import DATASETS, DEBIAN_FASHION_MNIST, ImageDataset, load_dataset
from shared.data.partition import FederatedData, dirichlet_partition, split_federation

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "FederatedData",
    "ImageDataset",
    "dirichlet_partition",
    "load_dataset",
    "split_federation",
]
