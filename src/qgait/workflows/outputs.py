"""The files a command writes (``qgait export / embed / identify``): never one of its inputs, never an existing file
unless asked (``--overwrite``), and written atomically (a finished file or nothing, never half a file)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["OutputError", "check_outputs", "staged"]


class OutputError(ValueError):
    """An output path that would overwrite an input or an existing file, or that is a folder (names the path)."""


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Sequence[str | Path], inputs: Sequence[str | Path] = (), overwrite: bool = False) -> None:
    """Check the output paths of a command before it does any work.

    Raises:
        OutputError: an output is one of the ``inputs`` (links resolved) or another output's path, is an existing
            folder, or is an existing file and ``overwrite`` is False (the message names ``--overwrite``).
    """
    outs = [Path(o) for o in outputs]
    for i, out in enumerate(outs):
        for src in inputs:
            if _same(out, Path(src)):
                raise OutputError(f"{out}: this is an input of the command ({src}); choose another output file")
        for other in outs[:i]:
            if _same(out, other):
                raise OutputError(f"{out}: given for two outputs; choose another output file")
        if out.is_dir():
            raise OutputError(f"{out}: is a folder; give a file name")
        if out.exists() and not overwrite:
            raise OutputError(f"{out}: exists; add --overwrite to replace it")


@contextlib.contextmanager
def staged(outputs: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths to write ``outputs`` to: the same file names in a hidden folder beside each output (same
    file system). When the block ends normally, each staged file that was written replaces its output in one
    rename (``os.replace``); on an error or an interruption nothing is moved. The hidden folders are removed
    either way. The outputs' folders are created."""
    dirs: dict[Path, Path] = {}
    staged_paths = []
    try:
        for out in (Path(o) for o in outputs):
            parent = out.parent
            parent.mkdir(parents=True, exist_ok=True)
            if parent not in dirs:
                dirs[parent] = Path(tempfile.mkdtemp(prefix=".qgait-partial-", dir=parent))
            staged_paths.append(dirs[parent] / out.name)
        yield staged_paths
        for tmp, out in zip(staged_paths, outputs):
            if tmp.exists():
                os.replace(tmp, out)
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
