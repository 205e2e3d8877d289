"""Batch-1 latency of exported models side by side (issue 16: is the deployed W4A4 as fast as W8A8 and faster
than FP32?).

Each ``NAME=PATH`` (an ``.onnx`` file or a packed ``.qgpack``) gets an ONNX Runtime session on ``--threads``
threads; all sessions run one real 30-frame CASIA-B sequence (from ``--store``, at the first model's input size)
in interleaved rounds (:func:`_interleaved.time_interleaved`), so machine load hits every model alike; figures are
medians, with each model's per-round ratio to ``--reference`` (default: the first). Also records, for each model,
how many convolutions ONNX Runtime runs on integer kernels (``QLinearConv`` / ``ConvInteger``) and how many in float.

    python benchmarks/onnx_latency.py outq8=runs/x/lsq_outq8.int8.onnx lsq=runs/x/lsq.int8.onnx \\
        [--reference outq8] [--rounds 30] [--runs 10] [--threads 1] [--tag w4a4_outq8]

Writes ``results/bench/onnx_latency_<date>_<cpu>_t<threads>[_<tag>].json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _interleaved import time_interleaved
from _record import REPO, write_record


def conv_ops(model) -> dict[str, int]:
    """Counts of ``QLinearConv``, ``ConvInteger`` and float ``Conv`` nodes in the graph ONNX Runtime actually runs
    (after its graph optimisations, which fuse ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv``
    where the output is quantized)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    return {k: ops.count(k) for k in ("QLinearConv", "ConvInteger", "Conv")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=PATH (.onnx or .qgpack)")
    ap.add_argument("--reference", help="the name the ratios are to (default: the first)")
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model and round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--tag", default="", help="file-name suffix")
    a = ap.parse_args()

    import onnx

    from qgait.data.store import SequenceStore
    from qgait.export.int4 import is_packed_file, load_packed
    from qgait.export.ort_ptq import store_calibration_batches
    from qgait.runtime.embedder import ort_session

    files = {}
    for spec in a.models:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"{spec!r}: expected NAME=PATH of an existing .onnx / .qgpack file")
        files[name] = Path(path)
    ref = a.reference or next(iter(files))
    if ref not in files:
        ap.error(f"--reference {ref!r} is not one of {list(files)}")
    protos = {n: load_packed(p) if is_packed_file(p) else onnx.load(str(p)) for n, p in files.items()}
    sessions = {n: ort_session(m.SerializeToString(), a.threads) for n, m in protos.items()}
    dims = sessions[ref].get_inputs()[0].shape
    size = (int(dims[2]), int(dims[3]))
    x = store_calibration_batches(SequenceStore.open(a.store), None, size, sequences=1, frames=a.frames,
                                  seed=1)[0].numpy()
    timed = time_interleaved(sessions, x, a.rounds, a.runs, ref)
    figures = {"input_size": list(size), "frames": a.frames, "batch": 1, "rounds": a.rounds,
               "runs_per_round": a.runs, "ort_threads": a.threads, "reference": ref,
               "models": {n: {"file": str(files[n]), "bytes": files[n].stat().st_size, "conv_ops": conv_ops(protos[n]),
                              **timed[n]} for n in files}}
    for n, v in figures["models"].items():
        print(f"{n:>16}: {v['latency_ms_median']:7.2f} ms  x{v[f'ratio_to_{ref}_median_of_rounds']:.3f} of {ref}  "
              f"{v['conv_ops']}")
    write_record("onnx_latency", figures, threads=a.threads, suffix=f"_{a.tag}" if a.tag else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
