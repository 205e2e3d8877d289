"""Atomic file writes: a temporary file beside the target, flushed and fsynced, renamed into place; an interruption
leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "save_figure"]


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], sync_dir: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path`` (created with its folder), fsync it and rename it to
    ``path``, with the permissions a plain ``open`` would give it (0666 less the umask, on POSIX); ``sync_dir``
    also fsyncs the folder so the rename itself is durable (POSIX; best effort elsewhere).

    Returns:
        ``path``. Raises: whatever ``write`` raises (the temporary file is removed, ``path`` untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 would hide results from the other users of a machine
            os.fchmod(fd, 0o666 & ~_umask())
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


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure to ``path`` atomically (format from the suffix: ``.png``, ``.pdf``, ``.svg``)
    and close it, written or not.

    Returns:
        ``path``. Raises: ValueError if the suffix is not a format matplotlib writes (nothing is written, the
        figure stays open); whatever writing raises (``path`` untouched, the figure closed).
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in fig.canvas.get_supported_filetypes():
        raise ValueError(f"{path}: cannot write a figure as {path.suffix or 'a file without a suffix'} "
                         f"(one of {', '.join(sorted(fig.canvas.get_supported_filetypes()))})")
    import matplotlib.pyplot as plt  # matplotlib is imported by whoever made the figure

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    finally:
        plt.close(fig)
