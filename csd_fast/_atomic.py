"""Atomic file writes: a killed process never leaves a half-written file behind."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to a temporary file next to path, then move it over path.

    Same directory so os.replace is a rename on one file system; fsync before the rename
    so a crash cannot leave the new name pointing at unwritten data. Created with
    os.open rather than mkstemp or safetensors.save_file, whose 0600 mode would
    outlive the rename; os.open applies the umask like any new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path
