"""``qgait evaluate``: score a saved model on the test subjects of a config's partition."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ExperimentConfig
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..evaluation.report import format_cross_view, write_results
from ..evaluation.runner import evaluate_on_store
from ..models import build_model
from .common import log, open_or_build_store, set_threads, split_subjects


def load_model_checkpoint(path: str | Path, cfg: ExperimentConfig | None = None) -> nn.Module:
    """Rebuild a full-precision inference model from ``model.pt`` (``qgait-model``) or a training checkpoint
    (``last.pt``, needs ``cfg`` for the architecture).

    Raises:
        CheckpointError: missing/corrupt file, unknown kind, or weights that do not fit the architecture.
    """
    ck = load_checkpoint(path)
    kind = ck.get("kind")
    if kind == "qgait-model":
        model = build_model(ck["model_name"], **ck["model_args"])
        state = ck["state_dict"]
    elif kind == "qgait-train":
        if cfg is None:
            raise CheckpointError(f"{path}: a training checkpoint needs the config that made it")
        model = build_model(cfg.model.name, **cfg.model.args)
        state = {k[len("model."):]: v for k, v in ck["model"].items() if k.startswith("model.")}
    else:
        raise CheckpointError(f"{path}: not a qgait checkpoint (kind={kind!r})")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {e}") from e
    return model.eval()


def run_evaluate(cfg: ExperimentConfig, checkpoint: str | Path, out_dir: str | Path | None = None,
                 progress: bool = True, name: str = "results") -> dict:
    """Evaluate ``checkpoint`` with ``cfg``'s data, protocol and metric; write JSON + Markdown to ``out_dir``."""
    set_threads(cfg.train.threads)
    model = load_model_checkpoint(checkpoint, cfg)
    store = open_or_build_store(cfg.data, progress)
    split = split_subjects(store, cfg.data)
    log(f"evaluating {checkpoint} on {len(split.test_subjects)} test subjects")
    res = evaluate_on_store(
        model, store, split.test_subjects, tuple(cfg.data.input_size), cfg.eval.protocol, cfg.eval.metric,
        cfg.data.test_max_frames, "cpu" if not torch.cuda.is_available() else "cuda", progress,
    )
    res["model"] = str(checkpoint)
    if out_dir is not None:
        write_results(res, out_dir, name)
    print(format_cross_view(res))
    return res
