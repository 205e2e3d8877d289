"""Benchmark of the deployment runtimes (``qgait bench``): FP32 / INT8 variants side by side, each timed in its own
process (``python -m qgait.workflows.bench bench-child SPEC.json``, internal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.checkpoint import load_inference_model
from ..runtime.cpu import cpu_info
from .common import log

__all__ = ["BENCH_MODELS", "BENCH_VARIANTS", "run_benchmark", "format_benchmark"]


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


def _status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (``"VmRSS"``, ``"VmHWM"``) in MB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    v = _status_mb("VmRSS")
    return float("nan") if v is None else v


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
    v = _status_mb("VmHWM")
    if v is not None:
        return v
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
                        [sys.executable, "-m", "qgait.workflows.bench", "bench-child", str(spec_path)],
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
    print("usage: python -m qgait.workflows.bench bench-child SPEC.json (internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
