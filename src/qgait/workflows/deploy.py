"""Deployment workflows: export a checkpoint, check parity, evaluate an exported model, embed and identify
sequences, benchmark the runtimes (``qgait export / embed / identify / bench``; docs/deployment.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.checkpoint import load_inference_model
from ..evaluation.report import rank1_row
from ..runtime.cpu import cpu_info
from .common import log

__all__ = [
    "export_checkpoint",
    "parity_check",
    "evaluate_onnx",
    "SequenceItem",
    "collect_sequences",
    "embed_sequences",
    "build_gallery",
    "identify_sequences",
    "BENCH_MODELS",
    "BENCH_VARIANTS",
    "run_benchmark",
    "format_benchmark",
]


# --------------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------------
def _default_output(checkpoint: Path, fmt: str, int8: bool, quantized: bool) -> Path:
    stem = checkpoint.with_suffix("")
    tag = ".int8" if (int8 or quantized) else ""
    return Path(f"{stem}{tag}.{'onnx' if fmt == 'onnx' else 'pt2'}")


def _calibration(calib_store: str | Path | None, size, sequences: int, frames: int, subjects=None):
    if calib_store is None:
        return None
    from ..data.store import SequenceStore
    from ..export.ort_ptq import store_calibration_batches

    store = SequenceStore.open(calib_store)
    return store_calibration_batches(store, subjects, size, sequences=sequences, frames=frames)


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    fmt: str = "onnx",
    int8: bool = False,
    pack_int4: bool = False,
    calib_store: str | Path | None = None,
    calib_subjects: Sequence[str] | None = None,
    calib_sequences: int = 16,
    calib_frames: int = 30,
    first_input: str = "auto",
    requant: bool | str = "auto",
    ptq_method: str = "minmax",
    conv_kernel: str = "qlinear",
    match_bias: bool = True,
    float_weights: bool = False,
) -> dict:
    """Export a ``model.pt`` (``qgait-model`` or ``qgait-quant-model``) for deployment.

    What gets written, by checkpoint kind and options:

    - FP model, ``fmt="onnx"``: FP32 ONNX, batch norm folded; with ``int8``: ONNX Runtime static PTQ (needs
      ``calib_store``).
    - quantized model, ``fmt="onnx"``: int8 QDQ ONNX with the learned steps (``int8`` is implied); with
      ``requant`` (``"auto"``: 8-bit activation grids only) the residual convs are requantized when
      ``calib_store`` is given; ``first_input``, ``conv_kernel`` and ``match_bias`` as in
      :func:`qgait.export.export_qdq` (defaults: float first input unless 64x44, ``QLinearConv`` with matched
      int32 biases); with ``pack_int4`` (weights <= 4 bits) also a packed ``.qgpack`` beside it.
    - ``fmt="pt2e"``: a ``torch.export`` ``.pt2`` program: the learned-step PT2E int8 graph of a quantized model,
      the PT2E-calibrated int8 graph of an FP model with ``int8`` (needs ``calib_store``), else the FP graph.

    Returns:
        a report dict: ``output``, ``kind``, ``bytes``, ``checkpoint_bytes``, ``packed`` (if any) and details.

    Raises:
        CheckpointError: missing or corrupt checkpoint. ValueError: bad options, missing calibration store.
    """
    from ..export import export_onnx, export_qdq

    if fmt not in ("onnx", "pt2e"):
        raise ValueError(f"format must be 'onnx' or 'pt2e', got {fmt!r}")
    checkpoint = Path(checkpoint)
    model, meta = load_inference_model(checkpoint)
    size = tuple(int(v) for v in meta.get("input_size") or (64, 44))
    quantized = meta.get("kind") == "qgait-quant-model"
    out = Path(output) if output is not None else _default_output(checkpoint, fmt, int8, quantized)
    info = {"model_name": meta.get("model_name"), "model_args": meta.get("model_args"),
            "checkpoint": checkpoint.name, "quant_config": meta.get("quant_config")}
    if pack_int4 and not quantized:
        raise ValueError("--pack-int4 needs a quantized checkpoint (qgait-quant-model) with <= 4-bit weights")
    if int8 and not quantized and calib_store is None:
        raise ValueError("int8 export of a full-precision model is post-training quantization: give a calibration "
                         "store (--calib-store) of real silhouettes")
    calib = _calibration(calib_store, size, calib_sequences, calib_frames, calib_subjects) \
        if (int8 or quantized) else None
    report: dict[str, Any]
    if fmt == "onnx":
        if quantized:
            r = export_qdq(model, out, size, calib=calib, requant=requant, first_input=first_input, meta=info,
                           conv_kernel=conv_kernel, match_bias=match_bias, float_weights=float_weights)
            if r.details.get("requant_skipped"):
                log("no --calib-store: the residual convs (conv2, downsample) stay float in the ONNX graph "
                    "(exact, but ONNX Runtime runs them without int8 kernels)")
        elif int8:
            from ..export.ort_ptq import ptq_export

            r = ptq_export(model, out, size, calib, method=ptq_method, meta=info)
        else:
            r = export_onnx(model, out, size, meta=info)
        report = {"output": r.path, "kind": r.kind, "bytes": r.bytes, "ops": r.ops,
                  "input_size": list(size)}
        details = r.details
        report["overflow"] = details.get("overflow")
        report["requantized"] = len(details.get("requantized") or {})
        if pack_int4:
            from ..export.int4 import save_packed

            packed = save_packed(out, out.with_suffix(".qgpack"))
            report["packed"] = packed
    else:
        from ..export.pt2e import pt2e_from_fp, pt2e_from_quantized, save_pt2

        if quantized:
            from ..export.onnx_export import first_input_for

            first = first_input_for(model, size, first_input)
            gm, kind = pt2e_from_quantized(model, size, first), "int8-pt2e-learned"
        elif int8:
            gm, kind = pt2e_from_fp(model, size, calib), "int8-pt2e-ptq"
        else:
            gm, kind = model, "fp32-pt2"
        save_pt2(gm, out, size)
        report = {"output": str(out), "kind": kind, "bytes": out.stat().st_size, "input_size": list(size)}
    report["checkpoint_bytes"] = checkpoint.stat().st_size
    return report


# --------------------------------------------------------------------------------------------------------------
# parity and evaluation of exported models
# --------------------------------------------------------------------------------------------------------------
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
    protocol: str = "casia-b",
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
        evaluate: also run the protocol (rank-1 of both); otherwise embed ``max_sequences`` sequences only.

    Returns:
        ``{"sequences", "cosine_mean", "cosine_min", "max_abs_diff", "torch": {NM, BG, CL, mean},
        "onnx": {...}, "rank1_delta_mean"}`` (rank-1 entries only with ``evaluate``).
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
        rt = evaluate_on_store(model, store, subjects, size, protocol, max_frames=max_frames, progress=progress,
                               return_embeddings=True)
        ro = evaluate_on_store(emb, store, subjects, size, protocol, max_frames=max_frames, progress=progress,
                               return_embeddings=True)
        et, eo = rt.pop("embeddings"), ro.pop("embeddings")
        out["torch"], out["onnx"] = _summary(rt), _summary(ro)
        out["rank1_delta_mean"] = out["onnx"]["mean"] - out["torch"]["mean"]
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
    config. Writes ``out_dir/name.json|md`` when ``out_dir`` is given and prints the table.

    Raises:
        ValueError: neither a config nor a store and subjects; the model's input size differs from ``size``.
    """
    from ..data.store import SequenceStore
    from ..evaluation.report import format_cross_view, write_results
    from ..evaluation.runner import evaluate_on_store
    from ..runtime import GaitEmbedder

    emb = GaitEmbedder(path, threads=threads)
    if cfg is not None:
        from .common import open_or_build_store, split_subjects

        store = store if store is not None else open_or_build_store(cfg.data, progress)
        subjects = subjects or split_subjects(store, cfg.data).test_subjects
        size = size or tuple(cfg.data.input_size)
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
    if out_dir is not None:
        write_results(res, out_dir, name)
    print(format_cross_view(res))
    return res


# --------------------------------------------------------------------------------------------------------------
# sequences, embedding, identification
# --------------------------------------------------------------------------------------------------------------
@dataclass
class SequenceItem:
    """One sequence to embed: where it comes from, its label (subject) when known, and its frames loader."""

    source: str
    subject: str | None
    condition: str | None
    view: str | None
    _frames: Any

    def frames(self, max_frames: int = 720) -> np.ndarray:
        f = self._frames() if callable(self._frames) else self._frames
        return np.asarray(f[:max_frames])

    def describe(self) -> dict:
        return {"source": self.source, "subject": self.subject, "condition": self.condition, "view": self.view}


def _csv(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [s for s in v.split(",") if s]
    return list(v)


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file() and (path / "frames.u8").exists()


def _load_file(path: Path) -> np.ndarray:
    from ..data.safe_pickle import load_array
    from ..data.sources import validate_frames

    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc
    else:
        arr = load_array(path)
    return validate_frames(arr, str(path))


def collect_sequences(
    sources: Sequence[str | Path],
    subjects: str | Sequence[str] | None = None,
    conditions: str | Sequence[str] | None = None,
    views: str | Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
) -> list[SequenceItem]:
    """Resolve sequence sources into :class:`SequenceItem` s (frames loaded lazily).

    Each source is one of: a ``.pkl`` (OpenGait, read with the numpy-only unpickler) or ``.npy`` file holding
    uint8 ``[T, 64, 64|44]``; a qgait store folder (filtered by ``subjects`` / ``conditions`` / ``views`` or
    picked by ``indices``); an OpenGait folder ``subject/condition/view/*.pkl`` or ``.tar.xz`` archives
    (filtered the same way). A pickle's label is read from its path when it follows the OpenGait layout.

    Raises:
        FileNotFoundError: a source that does not exist. ValueError: nothing selected.
    """
    from ..data.sources import iter_sequences
    from ..data.store import SequenceStore

    subj, cond, view = _csv(subjects), _csv(conditions), _csv(views)
    items: list[SequenceItem] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such sequence file, store or folder")
        if p.is_file() and p.suffix in (".pkl", ".npy"):
            parts = p.resolve().parts  # root / subject / condition / view / file in the OpenGait layout
            label = (parts[-4], parts[-3], parts[-2]) if len(parts) >= 5 else (None, None, None)
            items.append(SequenceItem(str(p), *label, (lambda p=p: _load_file(p))))
        elif _is_store(p):
            store = SequenceStore.open(p)
            idx = list(indices) if indices is not None else store.select(subj, cond, view)
            for i in idx:
                r = store.records[int(i)]
                items.append(SequenceItem(f"{p}#{int(i)}", r.subject, r.condition, r.view,
                                          (lambda store=store, i=int(i): store.frames(i))))
        elif p.is_dir() or p.name.endswith(".tar.xz"):
            for seq in iter_sequences(p, subjects=subj):
                k = seq.key
                if (cond is None or k.condition in cond) and (view is None or k.view in view):
                    items.append(SequenceItem(seq.origin, k.subject, k.condition, k.view, seq.frames))
        else:
            raise ValueError(f"{p}: not a .pkl/.npy sequence, a qgait store or an OpenGait folder")
    if not items:
        raise ValueError(f"no sequences selected from {[str(s) for s in sources]} (subjects={subj}, "
                         f"conditions={cond}, views={view})")
    return items


def embed_sequences(embedder, items: Sequence[SequenceItem], max_frames: int = 720,
                    progress: bool = False) -> np.ndarray:
    """Embed each item (all its frames, capped at ``max_frames``): ``[len(items), c, p]`` float32.

    Raises:
        ValueError: a bad sequence (its source is named).
    """
    from tqdm import tqdm

    out = []
    for it in tqdm(items, desc="embed", disable=not progress, dynamic_ncols=True):
        try:
            out.append(embedder.embed(it.frames(max_frames)))
        except ValueError as exc:
            raise ValueError(f"{it.source}: {exc}") from exc
    return np.concatenate(out, axis=0)


def build_gallery(embedder, sources: Sequence[str | Path], subjects=None, conditions=None, views=None,
                  max_frames: int = 720, progress: bool = False):
    """A :class:`qgait.runtime.Gallery` from sequence sources (see :func:`collect_sequences`), or a saved
    ``.npz`` gallery when ``sources`` is one such file.

    Raises:
        ValueError: an empty selection, sequences without a subject label.
    """
    from ..runtime import Gallery

    if len(sources) == 1 and str(sources[0]).endswith(".npz"):
        return Gallery.load(sources[0])
    items = collect_sequences(sources, subjects, conditions, views)
    unlabeled = [it.source for it in items if it.subject is None]
    if unlabeled:
        raise ValueError(f"gallery sequences need a subject label (OpenGait path subject/condition/view/x.pkl or "
                         f"a store): {unlabeled[:3]}")
    emb = embed_sequences(embedder, items, max_frames, progress)
    return Gallery(emb, [it.subject for it in items],
                   [{"condition": it.condition, "view": it.view, "source": it.source} for it in items])


def identify_sequences(model: str | Path, gallery_sources, probe_sources, top_k: int = 5, *,
                       gallery_subjects=None, gallery_conditions=None, gallery_views=None,
                       probe_subjects=None, probe_conditions=None, probe_views=None, metric: str = "euc",
                       max_frames: int = 720, save_gallery: str | Path | None = None, threads: int | None = None,
                       progress: bool = False) -> list[dict]:
    """Embed a gallery and probes with an exported model and rank the gallery subjects for every probe.

    Returns:
        one dict per probe: ``{"probe": {...source, subject...}, "top": [(label, distance), ...]}``.
    """
    from ..runtime import GaitEmbedder, identify_many

    emb = GaitEmbedder(model, threads=threads)
    gallery = build_gallery(emb, list(gallery_sources), gallery_subjects, gallery_conditions, gallery_views,
                            max_frames, progress)
    if save_gallery is not None:
        gallery.save(save_gallery)
    probes = collect_sequences(list(probe_sources), probe_subjects, probe_conditions, probe_views)
    pe = embed_sequences(emb, probes, max_frames, progress)
    ranks = identify_many(pe, gallery, top_k, metric)
    return [{"probe": p.describe(), "top": r} for p, r in zip(probes, ranks)]


# --------------------------------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------------------------------
BENCH_MODELS: dict[str, dict] = {
    "full": {"args": {"width": 1.0, "strides": [1, 2, 2, 1], "bins": [16], "embed_dim": 256}, "size": [64, 44]},
    "cpu": {"args": {"width": 0.25, "strides": [1, 2, 2, 1], "bins": [8], "embed_dim": 128}, "size": [32, 22]},
}
"""The benchmarked models: full GaitBase (64x44) and the CPU recipe (width 0.25, 32x22, 8 strips, 128-d)."""

BENCH_VARIANTS: dict[str, str] = {
    "torch_fp32_eager": "FP32 PyTorch eager",
    "torch_fp32_compile": "FP32 PyTorch torch.compile (inductor, freezing)",
    "ort_fp32": "FP32 ONNX Runtime",
    "ort_int8_qat": "INT8 ONNX Runtime, QDQ with learned steps (W8A8)",
    "ort_int8_ptq": "INT8 ONNX Runtime, static PTQ (u8s8)",
    "inductor_int8_qat": "INT8 PyTorch PT2E + inductor, learned steps (W8A8)",
    "ort_int8_given": "INT8 ONNX Runtime, QDQ export of --quant-checkpoint (e.g. QGait W4A4); only with it",
}


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS (VmHWM, since the last reset) in MB; ru_maxrss (since process start) where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stats(times_s: list[float]) -> dict:
    t = np.asarray(times_s) * 1000
    q25, q50, q75 = np.percentile(t, [25, 50, 75])
    return {"median_ms": float(q50), "iqr_ms": float(q75 - q25), "min_ms": float(t.min()), "runs": len(t)}


def _bench_child(spec: dict) -> dict:
    """Run one variant in this (fresh) process: load, warm up, time batch 1 and batch N; report RSS delta."""
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    art = spec["artifacts"]
    size = spec["size"]
    gen = torch.Generator().manual_seed(0)
    frames = int(spec["frames"])
    xs = {b: (torch.rand(b, frames, *size, generator=gen) > 0.5).float() for b in (1, int(spec["batch"]))}
    variant = spec["variant"]
    import gc

    gc.collect()
    peak_reset = _reset_peak_rss()
    rss0 = _rss_mb()
    t_load = time.perf_counter()
    if variant.startswith("ort_"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        path = art[{"ort_fp32": "fp32_onnx", "ort_int8_qat": "qat_onnx", "ort_int8_ptq": "ptq_onnx",
                    "ort_int8_given": "given_onnx"}[variant]]
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def fn(x):
            return sess.run(None, {"silhouettes": x.numpy()})[0]
        size_bytes = os.path.getsize(path)
    elif variant in ("torch_fp32_eager", "torch_fp32_compile"):
        model, _ = load_inference_model(art["fp_checkpoint"])
        size_bytes = os.path.getsize(art["fp_checkpoint"])
        if variant == "torch_fp32_compile":
            from ..export.pt2e import compile_inductor

            fn = compile_inductor(model)  # torch.compile + inductor freezing (the same recipe as the int8 variant)
        else:
            def fn(x):
                with torch.inference_mode():
                    return model(x)
    elif variant == "inductor_int8_qat":
        from ..export.pt2e import compile_inductor, load_pt2

        gm = load_pt2(art["qat_pt2"])
        size_bytes = os.path.getsize(art["qat_pt2"])
        fn = compile_inductor(gm)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    out: dict[str, Any] = {"variant": variant, "bytes": size_bytes}
    warm = int(spec["warmup"])
    for b, x in xs.items():
        t0 = time.perf_counter()
        fn(x)  # first call (compiles for torch.compile variants)
        first = time.perf_counter() - t0
        for _ in range(max(warm - 1, 0)):
            fn(x)
        ts = []
        for _ in range(int(spec["repeats"])):
            t0 = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t0)
        st = _stats(ts)
        st["first_call_s"] = first
        st["sequences_per_s"] = b / (st["median_ms"] / 1000)
        out[f"batch{b}"] = st
    out["load_s"] = time.perf_counter() - t_load
    out["rss_delta_mb"] = _peak_rss_mb() - rss0
    out["rss_peak_exact"] = peak_reset  # False: the peak includes what happened before loading the model
    return out


def _build_bench_artifacts(name: str, cfg: dict, tmp: Path, store, calib_sequences: int, frames: int,
                           checkpoint: str | Path | None, quant_checkpoint: str | Path | None = None) -> dict:
    """FP checkpoint, quantized checkpoint, FP32 / QDQ / PTQ ONNX, PT2E .pt2.

    The learned-steps INT8 variants run a W8A8 ``quantize_`` + ``calibrate_`` copy of the FP model (MSE steps on
    the calibration batches, output quantizers on the residual operands found by ``find_residual_outputs``, so that
    the export needs no requantization); ``quant_checkpoint`` (a trained ``qgait-quant-model``, e.g. QGait W4A4) is exported
    too (``export_qdq`` defaults), for the ``ort_int8_given`` variant.

    Raises:
        ValueError: ``checkpoint`` is not an FP model, ``quant_checkpoint`` not a quantized one, or their input
            sizes differ.
    """
    from ..engine.checkpoint import save_inference_model
    from ..export import export_onnx, export_qdq
    from ..export.ort_ptq import quantize_onnx, store_calibration_batches
    from ..export.pt2e import pt2e_from_quantized, save_pt2
    from ..models import build_model
    from ..quant import QuantConfig, calibrate_, find_residual_outputs, quantize_

    size = tuple(cfg["size"])
    if checkpoint is not None:
        model, meta = load_inference_model(checkpoint)
        if meta.get("kind") != "qgait-model":
            raise ValueError(f"{checkpoint}: the benchmark takes a full-precision model.pt (kind qgait-model), "
                             f"got {meta.get('kind')!r}")
        size, args, mname = tuple(meta["input_size"]), meta["model_args"], meta["model_name"]
    else:
        torch.manual_seed(0)
        args, mname = cfg["args"], "gaitbase"
        model = build_model(mname, **args).eval()
    if store is not None:
        calib = store_calibration_batches(store, None, size, sequences=calib_sequences, frames=frames)
    else:
        g = torch.Generator().manual_seed(1)
        calib = [(torch.rand(1, frames, *size, generator=g) > 0.5).float() for _ in range(calib_sequences)]
    if checkpoint is None:  # give the random model's batch norms realistic statistics
        model.train()
        with torch.no_grad():
            for x in calib:
                model(x)
        model.eval()
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    art = {"fp_checkpoint": str(save_inference_model(d / "fp.pt", model, mname, args, size))}
    art["fp32_onnx"] = export_onnx(model, d / "fp32.onnx", size).path
    art["ptq_onnx"] = quantize_onnx(art["fp32_onnx"], d / "int8_ptq.onnx", calib).path
    qcfg = QuantConfig(weight_bits=8, act_bits=8, lsq_init="mse",
                       output_quant=find_residual_outputs(model, calib[0]))
    quantize_(model, qcfg)
    calibrate_(model, calib, max_samples=2**16)
    model.eval()
    art["qat_checkpoint"] = str(save_inference_model(d / "w8a8.pt", model, mname, args, size,
                                                     quant_config=qcfg.model_dump(mode="json")))
    if quant_checkpoint is not None:
        given, qmeta = load_inference_model(quant_checkpoint)
        if qmeta.get("kind") != "qgait-quant-model":
            raise ValueError(f"{quant_checkpoint}: not a quantized model (kind {qmeta.get('kind')!r}); give the "
                             "model.pt of `qgait quantize`")
        if tuple(qmeta["input_size"]) != size:
            raise ValueError(f"{quant_checkpoint}: input size {tuple(qmeta['input_size'])} differs from the FP "
                             f"model's {size}")
        art["given_onnx"] = export_qdq(given, d / "int8_given.onnx", size, calib=calib).path
    art["qat_onnx"] = export_qdq(model, d / "int8_qat.onnx", size, calib=calib).path
    art["qat_pt2"] = str(save_pt2(pt2e_from_quantized(model, size), d / "int8_qat.pt2", size))
    return art


def run_benchmark(
    models: Sequence[str] = ("full", "cpu"),
    variants: Sequence[str] | None = None,
    repeats: int = 10,
    warmup: int = 3,
    frames: int = 30,
    batch: int = 8,
    threads: int | None = None,
    store: str | Path | None = None,
    checkpoint: str | Path | None = None,
    quick: bool = False,
    out_dir: str | Path | None = None,
    timeout_s: float = 1800,
    quant_checkpoint: str | Path | None = None,
) -> dict:
    """Benchmark FP32 / INT8 runtimes side by side (every variant in its own process, threads pinned).

    Latency: batch 1 of one ``frames``-frame sequence; throughput: ``batch`` sequences of ``frames`` frames;
    median and IQR over ``repeats`` timed runs after ``warmup`` runs (the first call, which compiles for the
    ``torch.compile`` variants, is reported apart). Peak memory: the child process's peak RSS minus its RSS
    before loading the model. Sizes: the file each variant loads (``.pt`` state dict, ``.onnx``, ``.pt2``).

    Args:
        models: names in :data:`BENCH_MODELS`.
        variants: names in :data:`BENCH_VARIANTS` (default all).
        store: a store of real silhouettes for calibration (default: random binary frames).
        checkpoint: benchmark this trained ``qgait-model`` instead of random weights (then ``models`` should be
            one name: its shape comes from the checkpoint).
        quant_checkpoint: with ``checkpoint``, a trained quantized model (``qgait quantize``'s ``model.pt``) to
            time as the ``ort_int8_given`` variant (added to the default variants).
        quick: 3 repeats, 1 warm-up.
        out_dir: write ``bench_deploy.json`` and ``bench_deploy.md`` there.

    Returns:
        ``{"config": {...}, "results": {model: {variant: {...}}}}``.
    """
    variants = list(variants or [v for v in BENCH_VARIANTS if v != "ort_int8_given" or quant_checkpoint])
    if "ort_int8_given" in variants and quant_checkpoint is None:
        raise ValueError("variant ort_int8_given needs quant_checkpoint")
    bad = [v for v in variants if v not in BENCH_VARIANTS] + [m for m in models if m not in BENCH_MODELS]
    if bad:
        raise ValueError(f"unknown models/variants {bad}; models: {list(BENCH_MODELS)}, "
                         f"variants: {list(BENCH_VARIANTS)}")
    if quant_checkpoint is not None and checkpoint is None:
        raise ValueError("quant_checkpoint needs checkpoint (the FP model it was quantized from)")
    if quick:
        repeats, warmup = min(repeats, 3), 1
    threads = threads or os.cpu_count() or 1
    st = None
    if store is not None:
        from ..data.store import SequenceStore

        st = SequenceStore.open(store)
    config = {"models": list(models), "variants": variants, "repeats": repeats, "warmup": warmup,
              "frames": frames, "batch": batch, "threads": threads, "torch": torch.__version__,
              "store": str(store) if store else None, "checkpoint": str(checkpoint) if checkpoint else None,
              "quant_checkpoint": str(quant_checkpoint) if quant_checkpoint else None, "cpu": cpu_info()}
    try:
        import onnxruntime

        config["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="qgait-bench-") as tmpd:
        tmp = Path(tmpd)
        for name in models:
            cfg = BENCH_MODELS[name]
            log(f"[bench] {name}: building artefacts")
            art = _build_bench_artifacts(name, cfg, tmp, st, 4 if quick else 8, frames, checkpoint, quant_checkpoint)
            size = list(load_inference_model(art["fp_checkpoint"])[1]["input_size"])
            results[name] = {"size": size}
            for v in variants:
                spec = {"variant": v, "artifacts": art, "size": size, "frames": frames, "batch": batch,
                        "repeats": repeats, "warmup": warmup, "threads": threads}
                spec_path = tmp / f"{name}_{v}.json"
                spec_path.write_text(json.dumps(spec))
                log(f"[bench] {name}: {v}")
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                try:
                    proc = subprocess.run(
                        [sys.executable, "-m", "qgait.workflows.deploy", "bench-child", str(spec_path)],
                        capture_output=True, text=True, env=env, timeout=timeout_s,
                    )
                except subprocess.TimeoutExpired:
                    results[name][v] = {"error": f"timed out after {timeout_s} s"}
                    continue
                if proc.returncode != 0:
                    results[name][v] = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
                    log(f"[bench] {v} failed: {proc.stderr.strip()[-2000:]}")
                    continue
                results[name][v] = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {"config": config, "results": results}
    if out_dir is not None:
        od = Path(out_dir)
        od.mkdir(parents=True, exist_ok=True)
        (od / "bench_deploy.json").write_text(json.dumps(out, indent=2))
        (od / "bench_deploy.md").write_text(format_benchmark(out))
    return out


def format_benchmark(result: dict) -> str:
    """Markdown table of :func:`run_benchmark`'s result (one row per model and variant)."""
    cfg = result["config"]
    b = cfg["batch"]
    lines = [
        f"Threads {cfg['threads']}, {cfg['frames']} frames per sequence, median (IQR) of {cfg['repeats']} runs "
        f"after {cfg['warmup']} warm-up; torch {cfg.get('torch')}, onnxruntime {cfg.get('onnxruntime')}.",
    ]
    cpu = cfg.get("cpu")
    if cpu:  # int8 figures depend on the ISA (VNNI or not): say which CPU measured them
        lines.append(f"CPU: {cpu['model']}, {cpu['logical_cores']} logical cores, int8 ISA "
                     f"{' '.join(cpu['int8_isa']) or 'unknown'} (VNNI: {'yes' if cpu['vnni'] else 'no'}).")
    lines += [
        "",
        f"| model | variant | file MB | batch 1 latency ms | x vs FP32 eager | batch {b} ms | batch {b} seq/s "
        "| peak RSS delta MB | first call s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in result["results"].items():
        base = res.get("torch_fp32_eager", {}).get("batch1", {}).get("median_ms")
        for v, r in res.items():
            if v == "size":
                continue
            if "error" in r:
                lines.append(f"| {name} | {v} | - | error: {r['error']} | | | | | |")
                continue
            b1, bn = r["batch1"], r[f"batch{b}"]
            speed = f"{base / b1['median_ms']:.2f}" if base else "-"
            lines.append(
                f"| {name} {res['size'][0]}x{res['size'][1]} | {v} | {r['bytes'] / 1e6:.2f} | "
                f"{b1['median_ms']:.1f} ({b1['iqr_ms']:.1f}) | {speed} | {bn['median_ms']:.1f} ({bn['iqr_ms']:.1f}) | "
                f"{bn['sequences_per_s']:.2f} | {r['rss_delta_mb']:.0f} | {b1['first_call_s']:.2f} |")
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "bench-child":
        spec = json.loads(Path(argv[1]).read_text())
        print(json.dumps(_bench_child(spec)))
        return 0
    print("usage: python -m qgait.workflows.deploy bench-child SPEC.json (internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
