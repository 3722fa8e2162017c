"""The on-disk cache of decoded splits: the same arrays, memory-mapped, renewed with the source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data import read_dataset
from shared.data.decoded_cache import load
from tests.unit.test_datasets import _write_idx, _write_tiny_fashion_root


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "decoded"
    monkeypatch.setenv("SCARLET_DATA_CACHE", str(folder))
    return folder


def _entries(folder: Path) -> set[str]:
    return {p.name.split(".")[0] for p in folder.glob("*.npy")} if folder.exists() else set()


def test_the_second_read_maps_the_first_one_s_decode(cache_dir: Path) -> None:
    # Given a first (uncached in memory) read that decodes
    first_train, first_test = read_dataset("digits", cache=False)
    (key,) = _entries(cache_dir)
    # When
    again_train, again_test = read_dataset("digits", cache=False)
    # Then the same bytes, now mapped from the cache's files
    assert np.array_equal(again_train.pixels, first_train.pixels)
    assert np.array_equal(again_test.labels.numpy(), first_test.labels.numpy())
    assert isinstance(again_train.pixels.base, np.memmap) or isinstance(
        getattr(again_train.pixels.base, "base", None), np.memmap
    )
    assert not again_train.pixels.flags.writeable
    assert type(again_train.pixels) is np.ndarray
    assert load(cache_dir, key) is not None


def test_a_changed_source_is_decoded_again_and_replaces_the_old_entry(
    cache_dir: Path, tmp_path: Path
) -> None:
    # Given a decoded fashion-mnist root
    root = tmp_path / "root"
    _write_tiny_fashion_root(root)
    train, _ = read_dataset("fashion-mnist", root, cache=False)
    before = _entries(cache_dir)
    # When its train images change
    images = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    _write_idx(images, np.full((6, 28, 28), 7))
    changed, _ = read_dataset("fashion-mnist", root, cache=False)
    # Then the new pixels are read, under a new entry, and the old one is gone
    assert (changed.pixels == 7).all() and not (train.pixels == 7).all()
    after = _entries(cache_dir)
    assert len(before) == len(after) == 1 and before != after


def test_a_corrupt_entry_is_decoded_again(cache_dir: Path, tmp_path: Path) -> None:
    # Given a cached decode whose train pixels file was damaged
    _write_tiny_fashion_root(tmp_path / "root")
    train, _ = read_dataset("fashion-mnist", tmp_path / "root", cache=False)
    (damaged,) = cache_dir.glob("*.train_x.npy")
    damaged.write_bytes(b"not an npy file")
    # When
    again, _ = read_dataset("fashion-mnist", tmp_path / "root", cache=False)
    # Then
    assert np.array_equal(again.pixels, train.pixels)


def test_the_cache_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCARLET_DATA_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _write_tiny_fashion_root(tmp_path / "root")
    read_dataset("fashion-mnist", tmp_path / "root", cache=False)
    assert not (tmp_path / "xdg").exists()


def test_a_cache_folder_that_cannot_be_written_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cache "folder" that is a file
    blocker = tmp_path / "blocked"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv("SCARLET_DATA_CACHE", str(blocker))
    _write_tiny_fashion_root(tmp_path / "root")
    # When / Then the read still works
    train, test = read_dataset("fashion-mnist", tmp_path / "root", cache=False)
    assert (len(train), len(test)) == (6, 4)
