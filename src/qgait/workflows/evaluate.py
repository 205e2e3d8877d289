"""``qgait evaluate``: score a saved model on the test subjects of a config's partition."""

from __future__ import annotations

from pathlib import Path

import torch
from ..config import ExperimentConfig
from ..engine.checkpoint import load_inference_model
from ..evaluation.report import format_cross_view, write_results
from .common import evaluate_with_stats, log, open_or_build_store, set_threads, split_subjects


def run_evaluate(cfg: ExperimentConfig, checkpoint: str | Path, out_dir: str | Path | None = None,
                 progress: bool = True, name: str = "results") -> dict:
    """Evaluate ``checkpoint`` with ``cfg``'s data, protocol and metric; write JSON + Markdown to ``out_dir``."""
    set_threads(cfg.train.threads)
    model, _ = load_inference_model(checkpoint, cfg.model.name, cfg.model.args)
    store = open_or_build_store(cfg.data, progress)
    split = split_subjects(store, cfg.data)
    log(f"evaluating {checkpoint} on {len(split.test_subjects)} test subjects")
    res = evaluate_with_stats(model, store, split.test_subjects, cfg,
                              "cpu" if not torch.cuda.is_available() else "cuda", progress)
    res["model"] = str(checkpoint)
    if out_dir is not None:
        write_results(res, out_dir, name)
    print(format_cross_view(res))
    return res
