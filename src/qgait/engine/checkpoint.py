"""Atomic checkpoint writes and safe loads (``weights_only=True``: no arbitrary unpickling)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or not of the expected kind; the message names the file."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it into place, so an
    interruption never leaves a half-written checkpoint under ``path``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _load_problem(e: Exception) -> str:
    """What went wrong in ``torch.load``, in qgait's words: PyTorch's messages advise loading with
    ``weights_only`` off (arbitrary code execution), which qgait never does, so they are not quoted."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if glob:
            return (f"it holds a Python object of type {glob.group(1)}, not only tensors and plain data; qgait "
                    "reads checkpoints written by qgait, without running code from them")
        return "not a PyTorch checkpoint, or a corrupt one"
    if "zip archive" in text or "central directory" in text:
        return "truncated or corrupt file: not a complete PyTorch zip archive"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first[:200]}" if "weights_only" not in first else type(e).__name__


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
        raise CheckpointError(f"{path}: cannot load checkpoint ({_load_problem(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return obj


def save_inference_model(
    path: str | Path,
    model: torch.nn.Module,
    name: str,
    args: dict,
    input_size: tuple[int, int],
    extra: dict | None = None,
    quant_config: dict | None = None,
) -> Path:
    """Save the weights of an inference model with what rebuilds it (``name``, ``args``, ``input_size`` and,
    for a quantized model, its ``quant_config``, a :class:`qgait.quant.QuantConfig` as a dict).

    This is the format of ``zoo/``, of ``qgait evaluate --checkpoint`` and of ``qgait export``: kind
    ``qgait-model`` (full precision) or ``qgait-quant-model`` (fake-quantized; the state dict holds the learned
    step sizes).
    """
    return save_atomic(
        {
            "kind": "qgait-quant-model" if quant_config is not None else "qgait-model",
            "model_name": name,
            "model_args": dict(args),
            "input_size": list(input_size),
            "quant_config": quant_config,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **(extra or {}),
        },
        path,
    )


def load_inference_model(path: str | Path, train_model_name: str | None = None,
                         train_model_args: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild an inference model (eval mode) from a checkpoint.

    Accepts ``model.pt``-style files (kinds ``qgait-model`` and ``qgait-quant-model``: the model is rebuilt,
    quantized with the saved config and loaded) and training checkpoints (kind ``qgait-train``, whose inference
    weights are under ``model.``; they need ``train_model_name`` / ``train_model_args``).

    Returns:
        ``(model, meta)`` where ``meta`` is the checkpoint without its weights (``model_name``, ``model_args``,
        ``input_size``, ``quant_config``...).

    Raises:
        CheckpointError: missing or corrupt file, unknown kind, or weights that do not fit the architecture.
    """
    from ..models import build_model  # engine sits above models

    ck = load_checkpoint(path)
    kind = ck.get("kind")
    if kind in ("qgait-model", "qgait-quant-model"):
        name, args, state = ck.get("model_name"), ck.get("model_args") or {}, ck.get("state_dict")
        if not isinstance(name, str) or not isinstance(state, dict):
            raise CheckpointError(f"{path}: model checkpoint lacks model_name or state_dict")
    elif kind == "qgait-train":
        if train_model_name is None:
            raise CheckpointError(f"{path}: a training checkpoint needs the config that made it")
        name, args = train_model_name, train_model_args or {}
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in ck["model"].items() if k.startswith(prefix)}
    else:
        raise CheckpointError(f"{path}: not a qgait model checkpoint (kind={kind!r})")
    try:
        model = build_model(name, **args)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if kind == "qgait-quant-model":
        from ..quant import quantize_

        quantize_(model, ck["quant_config"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {e}") from e
    meta = {k: v for k, v in ck.items() if k not in ("state_dict", "model", "optimizer")}
    return model.eval(), meta
