"""Parity and evaluation of exported models: an ONNX model against its PyTorch checkpoint, and ``qgait evaluate``
of an ``.onnx`` / ``.qgpack`` through ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine.checkpoint import load_inference_model
from ..evaluation.report import rank1_row
from .common import log, print_summary

__all__ = ["parity_check", "evaluate_onnx"]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def _summary(res: dict) -> dict:
    return rank1_row(res)


def parity_check(
    checkpoint: str | Path,
    onnx_path: str | Path,
    store,
    subjects: Sequence[str],
    size: Sequence[int] | None = None,
    max_frames: int = 720,
    protocol: str | None = None,
    evaluate: bool = True,
    max_sequences: int | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> dict:
    """Compare an exported ONNX model (run by ONNX Runtime) with its PyTorch checkpoint on real sequences.

    Args:
        checkpoint: the ``model.pt`` the ONNX file was exported from (FP32 or fake-quantized).
        onnx_path: the exported ``.onnx`` / ``.qgpack``.
        store: a ``SequenceStore`` (or its path).
        subjects: test subjects.
        size: model input ``(h, w)`` (default: the checkpoint's).
        protocol: of the rank-1 comparison (default: the ``eval_protocol`` that ``qgait train`` / ``qgait
            quantize`` record in the checkpoint, else ``"casia-b"``).
        evaluate: also run the protocol (rank-1 of both); otherwise embed ``max_sequences`` sequences only.

    Returns:
        ``{"sequences", "cosine_mean", "cosine_min", "max_abs_diff", "torch": {NM, BG, CL, mean},
        "onnx": {...}, "rank1_delta_mean", "protocol"}`` (rank-1 entries and protocol only with ``evaluate``;
        ``torch`` / ``onnx`` hold the protocol's headline row, :func:`qgait.evaluation.report.rank1_row`;
        ``rank1_delta_mean``: exported minus PyTorch, of the row's ``mean``, or of rank-1 for Gait3D / GREW).
    """
    from ..data.store import SequenceStore
    from ..evaluation.extract import extract_embeddings
    from ..evaluation.runner import evaluate_on_store
    from ..runtime import GaitEmbedder

    if not hasattr(store, "records"):
        store = SequenceStore.open(store)
    model, meta = load_inference_model(checkpoint)
    size = tuple(int(v) for v in (size or meta.get("input_size") or (64, 44)))
    emb = GaitEmbedder(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
    if tuple(emb.input_size) != size:
        raise ValueError(f"{onnx_path}: model input {emb.input_size} differs from the checkpoint's {size}")
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "model": str(onnx_path), "kind": emb.meta.get("kind")}
    if evaluate:
        protocol = protocol or meta.get("eval_protocol") or "casia-b"
        out["protocol"] = protocol
        rt = evaluate_on_store(model, store, subjects, size, protocol, max_frames=max_frames, progress=progress,
                               return_embeddings=True)
        ro = evaluate_on_store(emb, store, subjects, size, protocol, max_frames=max_frames, progress=progress,
                               return_embeddings=True)
        et, eo = rt.pop("embeddings"), ro.pop("embeddings")
        out["torch"], out["onnx"] = _summary(rt), _summary(ro)
        key = "mean" if "mean" in out["torch"] else "rank-1"  # Gait3D / GREW rows have no mean over sets
        out["rank1_delta_mean"] = out["onnx"][key] - out["torch"][key]
    else:
        idx = store.select(subjects=subjects)
        if max_sequences:
            idx = idx[:max_sequences]
        et = extract_embeddings(model, store, idx, size, max_frames, progress=progress)
        eo = extract_embeddings(emb, store, idx, size, max_frames, progress=progress)
    cos = _cosines(et, eo)
    out.update(sequences=int(cos.numel()), cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
               max_abs_diff=float((et - eo).abs().max()))
    return out


def evaluate_onnx(
    path: str | Path,
    cfg=None,
    store=None,
    subjects: Sequence[str] | None = None,
    size: Sequence[int] | None = None,
    protocol: str | None = None,
    metric: str | None = None,
    max_frames: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    name: str = "results",
) -> dict:
    """Evaluate an exported model (``.onnx`` / ``.qgpack``) through ONNX Runtime, like ``qgait evaluate``.

    Give either an experiment config ``cfg`` (its store, test subjects, input size, protocol, metric, frame cap)
    or ``store`` + ``subjects`` (+ ``size``, default the model's input size). Explicit arguments override the
    config. Writes ``out_dir/name.json|md`` when ``out_dir`` is given and prints the rank-1 summary and that file's
    path (without ``out_dir``: the full tables).

    Frames are resized to the model's input size; a config's other size is overridden (with a note).

    Raises:
        ValueError: neither a config nor a store and subjects; the model's input size differs from ``size``.
    """
    from ..data.store import SequenceStore
    from ..evaluation.report import write_results
    from ..evaluation.runner import evaluate_on_store
    from ..runtime import GaitEmbedder

    emb = GaitEmbedder(path, threads=threads)
    if cfg is not None:
        from .common import open_or_build_store, split_subjects

        store = store if store is not None else open_or_build_store(cfg.data, progress)
        subjects = subjects or split_subjects(store, cfg.data).test_subjects
        if size is None and tuple(cfg.data.input_size) != tuple(emb.input_size):  # the model's own size wins
            log(f"note: {path} takes {emb.input_size[0]}x{emb.input_size[1]} frames; evaluating at that size, "
                f"not at the config's {cfg.data.input_size[0]}x{cfg.data.input_size[1]}")
        size = size or tuple(emb.input_size)
        protocol = protocol or cfg.eval.protocol
        metric = metric or cfg.eval.metric
        max_frames = max_frames or cfg.data.test_max_frames
    if store is None or not subjects:
        raise ValueError("evaluate_onnx needs a config, or a store and test subjects")
    if not hasattr(store, "records"):
        store = SequenceStore.open(store)
    size = tuple(int(v) for v in (size or emb.input_size))
    if size != tuple(emb.input_size):
        raise ValueError(f"{path}: the model takes {emb.input_size[0]}x{emb.input_size[1]} frames, the evaluation "
                         f"asks for {size[0]}x{size[1]}")
    log(f"evaluating {path} ({emb.meta.get('kind', 'onnx')}, ONNX Runtime) on {len(subjects)} test subjects")
    res = evaluate_on_store(emb, store, subjects, size, protocol or "casia-b", metric or "euc", max_frames or 720,
                            "cpu", progress)
    res["model"] = str(path)
    md = write_results(res, out_dir, name)[1] if out_dir is not None else None
    print_summary(res, md)
    return res
