"""Atomic file writes: a temporary file beside the target, flushed and fsynced, renamed into place; an interruption
leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], sync_dir: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path`` (created with its folder), fsync it and rename it to
    ``path``; ``sync_dir`` also fsyncs the folder so the rename itself is durable (POSIX; best effort elsewhere).

    Returns:
        ``path``. Raises: whatever ``write`` raises (the temporary file is removed, ``path`` untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return path
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
    return path
