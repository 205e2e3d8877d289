"""Atomic checkpoint writes and safe loads (``weights_only=True``: no arbitrary unpickling)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or not of the expected kind; the message names the file."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it into place, so an
    interruption never leaves a half-written checkpoint under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint dict with ``weights_only=True`` onto the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable, not a dict, or lacks a ``required`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, disallowed global
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return obj


def save_inference_model(
    path: str | Path, model: torch.nn.Module, name: str, args: dict, input_size: tuple[int, int], extra: dict | None = None
) -> Path:
    """Save the weights of an inference model with what rebuilds it (``name``, ``args``, ``input_size``).

    This is the format of ``zoo/`` and of ``qgait evaluate --checkpoint``.
    """
    return save_atomic(
        {
            "kind": "qgait-model",
            "model_name": name,
            "model_args": dict(args),
            "input_size": list(input_size),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **(extra or {}),
        },
        path,
    )
