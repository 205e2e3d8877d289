"""Streaming embedding cost (issue 17): one frame pushed into a running embedding against re-embedding a window.

For the CPU-recipe model (the zoo checkpoint, or a random one with ``--random``) and the full GaitBase (random
weights with batch-norm statistics from real frames: the cost does not depend on the weights), in FP32 ONNX
Runtime and int8 (QDQ with W8A8 steps calibrated on real frames, residual operands quantized, as ``qgait bench``
builds it), at batch 1 with ``--threads`` intra-op threads, measures per variant:

- ``push_ms``: one frame through :meth:`qgait.runtime.streaming.StreamingEmbedder.push` (frame graph + max);
- ``head_ms``: :meth:`~qgait.runtime.streaming.StreamingEmbedder.embedding` after a push (pyramid pooling + FCs);
- ``window_ms``: re-embedding a ``--window``-frame window from scratch (``GaitEmbedder.embed``), the cost a
  non-streaming runtime pays per new frame for a sliding window;
- frames per second per stream (push only, and push + embedding every frame) and the ratio window / update.

The variants run interleaved (one round of each at a time, ``--rounds`` rounds, medians reported) so that machine
noise hits them alike. Frames come from the store's test sequences. Writes
``results/bench/streaming_<date>_<cpu>_t<threads>.json`` (another machine's run never overwrites it).

    python benchmarks/streaming.py [--store stores/casia-b-44] [--threads 2] [--rounds 200] [--window 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from qgait.runtime import GaitEmbedder
from qgait.runtime.streaming import StreamingEmbedder

from _record import write_record  # benchmarks/_record.py

REPO = Path(__file__).resolve().parents[1]
ZOO_FP = REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt"
FULL = {"width": 1.0, "strides": [1, 2, 2, 1], "bins": [16], "embed_dim": 256}


def _build(name: str, model: torch.nn.Module, size: tuple[int, int], calib: list[torch.Tensor], d: Path) -> dict:
    """FP32 and int8 ONNX exports of ``model`` (BN statistics already set)."""
    from qgait.export import export_onnx, export_qdq
    from qgait.quant import QuantConfig, calibrate_, find_residual_outputs, quantize_

    out = {"fp32": export_onnx(model, d / f"{name}_fp32.onnx", size).path}
    qcfg = QuantConfig(weight_bits=8, act_bits=8, lsq_init="mse", output_quant=find_residual_outputs(model, calib[0]))
    quantize_(model, qcfg)
    calibrate_(model, calib, max_samples=2**15)
    out["int8"] = export_qdq(model.eval(), d / f"{name}_int8.onnx", size, calib=calib).path
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--random", action="store_true", help="a random CPU-recipe model instead of the zoo one")
    ap.add_argument("--out-dir", type=Path, default=REPO / "results" / "bench")
    a = ap.parse_args()

    from qgait.data.store import SequenceStore
    from qgait.engine.checkpoint import load_inference_model
    from qgait.export.ort_ptq import store_calibration_batches
    from qgait.models import build_model

    torch.set_num_threads(a.threads)
    store = SequenceStore.open(a.store)
    models = {}
    if a.random or not ZOO_FP.is_file():
        models["cpu"] = (build_model("gaitbase", width=0.25, strides=[1, 2, 2, 1], bins=[8], embed_dim=128), (32, 22))
    else:
        m, meta = load_inference_model(ZOO_FP)
        models["cpu"] = (m, tuple(meta["input_size"]))
    torch.manual_seed(0)
    models["full"] = (build_model("gaitbase", **FULL), (64, 44))
    paths, frames = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (m, size) in models.items():
            calib = store_calibration_batches(store, None, size, sequences=4, frames=a.window)
            if name == "full":  # random weights: give the batch norms the statistics of real frames
                m.train()
                with torch.no_grad():
                    for x in calib:
                        m(x)
            m.eval()
            for kind, p in _build(name, m, size, calib, Path(tmp)).items():
                paths[f"{name}_{kind}"] = p
            test = store_calibration_batches(store, ["075"], size, sequences=1, frames=a.window, seed=5)[0][0]
            frames[name] = test.numpy()  # [window, h, w] float in [0, 1]
        runners = {}
        for key, p in paths.items():
            runners[key] = (StreamingEmbedder.from_onnx(p, threads=a.threads), GaitEmbedder(p, threads=a.threads),
                            frames[key.split("_")[0]])
        times = {k: {"push": [], "head": [], "window": []} for k in runners}
        for r in range(a.rounds + 5):  # 5 untimed warm-up rounds
            for key, (s, whole, seq) in runners.items():
                f = seq[r % len(seq)]
                t0 = time.perf_counter()
                s.push(f)
                t1 = time.perf_counter()
                s.embedding()
                t2 = time.perf_counter()
                if r % 5 == 0:
                    whole.embed(seq)
                t3 = time.perf_counter()
                if r >= 5:
                    times[key]["push"].append(t1 - t0)
                    times[key]["head"].append(t2 - t1)
                    if r % 5 == 0:
                        times[key]["window"].append(t3 - t2)
                if s.frames >= a.window:
                    s.reset()
    res = {}
    for key, t in times.items():
        push, head, window = (statistics.median(t[k]) * 1e3 for k in ("push", "head", "window"))
        res[key] = {
            "push_ms": round(push, 4), "head_ms": round(head, 4), "window_ms": round(window, 4),
            "fps_push": round(1e3 / push, 1), "fps_push_and_embedding": round(1e3 / (push + head), 1),
            "window_over_update": round(window / (push + head), 2), "window_over_push": round(window / push, 2),
        }
        print(f"{key:10s} push {push:7.3f} ms  head {head:6.3f} ms  window({a.window}) {window:7.3f} ms  "
              f"{1e3 / push:7.0f} frames/s (push), {1e3 / (push + head):7.0f} (push + embedding)  "
              f"window / update {window / (push + head):5.1f}x")
    write_record("streaming", {"rounds": a.rounds, "window": a.window,
                               "cpu_model": "zoo" if not a.random else "random", "results": res},
                 threads=a.threads, out_dir=a.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
