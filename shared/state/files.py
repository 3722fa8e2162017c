"""Pool-mode client state in a local folder: one file per client, replaced atomically.

``root/client-{k}.bin`` holds client k's blob. A save writes a temporary file in the same
folder, fsyncs it, renames it over the old file (``os.replace``, atomic on POSIX) and
fsyncs the folder, so a crash leaves either the old or the new blob, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from shared.errors import StateError
from shared.state.base import check_id

__all__ = ["FileClientStateStore"]

_PREFIX = "client-"
_SUFFIX = ".bin"


class FileClientStateStore:
    """A :class:`~shared.state.base.ClientStateStore` in the folder ``root``.

    The folder is created on the first save. File-system errors (permissions, a full
    disk) raise :class:`~shared.errors.StateError`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, client_id: int) -> Path:
        return self.root / f"{_PREFIX}{check_id('client id', client_id)}{_SUFFIX}"

    def load(self, client_id: int) -> bytes | None:
        """The state saved for ``client_id``, or None."""
        path = self._path(client_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"load client state: cannot read {path}: {e.strerror}") from e

    def save(self, client_id: int, blob: bytes) -> None:
        """Atomically replace the state of ``client_id`` (temp file, fsync, rename)."""
        if not isinstance(blob, bytes):
            raise TypeError(f"client state must be bytes, got {type(blob).__name__}")
        path = self._path(client_id)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            _fsync_dir(self.root)
        except OSError as e:
            raise StateError(f"save client state: cannot write {path}: {e.strerror}") from e

    def delete_all(self) -> None:
        """Delete every client's file (and leftover temporary files), then the folder if empty."""
        if not self.root.is_dir():
            return
        try:
            for path in self.root.iterdir():
                name = path.name
                ours = name.startswith(_PREFIX) and name.endswith(_SUFFIX)
                leftover = name.startswith(f".{_PREFIX}") and name.endswith(".tmp")
                if ours or leftover:
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only succeeds when nothing else lives there
        except OSError as e:
            raise StateError(f"delete client states: {self.root}: {e.strerror}") from e

    def close(self) -> None:
        """Nothing to release (symmetry with the Redis store)."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
