"""ONNX Runtime int8 variants of full GaitBase side by side, batch 1 (one 30-frame sequence), in one process.

Random weights with real batch-norm statistics (4 real CASIA-B sequences), W8A8 / W4A4 steps calibrated
(percentile) on the same sequences. Variants: FP32; ORT static PTQ with the first conv float (default) or int8;
learned-step QDQ exports at W8A8 and W4A4, with output quantizers on the residual operands
(``QuantConfig.output_quant`` from ``find_residual_outputs``), with the exporter's defaults (min-max
requantization of the residual convs, at every bit width since 2026-12-04) or exact (``requant=False``: the residual
convs float). Sessions are timed interleaved (``--repeats`` rounds after 3 warm-up runs each) so that machine noise
hits all alike; prints a Markdown table (median ms, speed-up over FP32) and writes
``results/bench/ort_int8_variants_<date>_<cpu>_t<threads>.json`` (never over an earlier run).

    python benchmarks/ort_int8_variants.py --store stores/casia-b-44 [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from qgait.data.store import SequenceStore
from qgait.export import export_onnx, export_qdq
from qgait.export.onnx_export import residual_convs
from qgait.export.ort_ptq import quantize_onnx, store_calibration_batches
from qgait.models import build_model
from qgait.quant import QuantConfig, calibrate_, find_residual_outputs, quantize_
from qgait.workflows.deploy import BENCH_MODELS

from _record import write_record  # benchmarks/_record.py: dated, CPU-named, never over an earlier run


def build(d: Path, store: str) -> dict:
    cfg = BENCH_MODELS["full"]
    size = tuple(cfg["size"])
    torch.manual_seed(0)
    m = build_model("gaitbase", **cfg["args"])
    calib = store_calibration_batches(SequenceStore.open(store), None, size, sequences=4, frames=30)
    m.train()
    with torch.no_grad():
        for x in calib:
            m(x)
    m.eval()
    info: dict = {}
    export_onnx(m, d / "fp32.onnx", size)
    info["fp32"] = {}
    for first in ("float", "int8"):
        quantize_onnx(d / "fp32.onnx", d / f"ptq_first_{first}.onnx", calib, first_conv=first)
        info[f"ptq_first_{first}"] = {}
    names = find_residual_outputs(m, calib[0][:, :4])
    for bits in (8, 4):
        for variant in ("output_quant", "defaults", "exact"):
            q = copy.deepcopy(m)
            quantize_(q, QuantConfig(weight_bits=bits, act_bits=bits, lsq_init="mse",
                                     output_quant=names if variant == "output_quant" else []))
            calibrate_(q, calib, method="percentile", max_samples=2**15)
            key = f"qdq_w{bits}a{bits}_{variant}"
            r = export_qdq(q.eval(), d / f"{key}.onnx", size, calib=calib,
                           requant=False if variant == "exact" else "auto")
            info[key] = {"first_input": r.details["first_input"], "requantized": len(r.details["requantized"]),
                         "float_residual_convs": len(residual_convs(onnx.load(r.path)))}
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="stores/casia-b-44")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        info = build(d, a.store)
        x = store_calibration_batches(SequenceStore.open(a.store), ["075"], (64, 44), sequences=1, frames=30)[0]
        x = x.numpy()
        sessions = {}
        for name in info:
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.log_severity_level = 3
            sessions[name] = ort.InferenceSession(str(d / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
            for _ in range(3):
                sessions[name].run(None, {"silhouettes": x})
        times = {n: [] for n in sessions}
        for _ in range(a.repeats):
            for n, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"silhouettes": x})
                times[n].append(time.perf_counter() - t)
        base = float(np.median(times["fp32"]))
        rows = []
        for n in sessions:
            med = float(np.median(times[n]))
            info[n].update(median_ms=1000 * med, iqr_ms=1000 * float(np.subtract(*np.percentile(times[n], [75, 25]))),
                           speedup_vs_fp32=base / med, bytes=(d / f"{n}.onnx").stat().st_size)
            rows.append(f"| {n} | {1000 * med:.1f} | {base / med:.2f}x | {json.dumps({k: v for k, v in info[n].items() if k in ('first_input', 'requantized', 'float_residual_convs')})} |")
    result = {"model": "full GaitBase, random weights", "batch": 1, "frames": 30, "repeats": a.repeats,
              "onnxruntime": ort.__version__, "variants": info}
    write_record("ort_int8_variants", result, threads=a.threads)  # prints the path
    print("| variant | median ms | vs FP32 | export |\n| --- | --- | --- | --- |\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
