"""Atomic file writes: a killed process never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to a temporary file next to path, then move it over path.

    Created with os.open rather than mkstemp or safetensors.save_file, whose 0600 mode
    would outlive the rename; os.open applies the umask like any new file.
    """
    with atomic_target(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name next to path for the caller to write; moved over path when the
    block ends normally, removed when it raises (KeyboardInterrupt included).

    Same directory so os.replace is a rename on one file system; fsync before the rename
    so a crash cannot leave the new name pointing at unwritten data. The temporary name ends
    in .tmp, so a file left by a killed process is no image or video to a folder scan.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
