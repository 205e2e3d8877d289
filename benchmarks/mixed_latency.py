"""Mixed precision on the runtime that exists: is a configuration smaller than uniform W8A8 at least as fast?
(issue 15, third goal)

Under the ``onnxruntime`` hardware profile (docs/mixed_precision.md, "Hardware-aware costs") every width runs on
ONNX Runtime's int8 kernels and weights of <= 4 bits are stored packed two per byte (``.qgpack``); the integer
program at uniform W4's packed size picks W4A8 for every layer. This benchmark measures that claim: the CPU
recipe's FP model (``zoo/gaitbase_casiab_cpu/model.pt``) quantized as

- ``w8a8``: uniform W8A8, the reference;
- ``w4a8``: the frontier's point at W4's packed size (4-bit weights, 8-bit activations everywhere), exported
  with the default first input (``first_input="auto"``: with a <= 7-bit stem the exact uint8 input, which adds a
  QuantizeLinear on the input and a requantization of the stem's output), and ``w4a8_float_stem`` with
  ``first_input="float"``, the stem's form in the W8A8 export (an 8-bit stem on uint8 input could saturate
  VNNI's 16-bit pair sums, so W8A8 keeps it float);
- ``w4a4``, and ``lcpaq_w3a3_size``: LCPAQ's bit map at uniform W3A3's size and BOPs
  (``results/mixed/lowbit_w3a3_lcpaq.yaml``), for the low-bit activation grids' cost;
- ``fp32``: the FP32 ONNX export,

each with output quantizers on the residual operands at its activation bits (``find_residual_outputs``, as the
deployment benchmark's W8A8; 8-bit grids let every conv run as ``QLinearConv``), MSE steps calibrated on 8 real
training sequences, exported with ``export_qdq`` and packed with ``save_packed`` where it has <= 4-bit weights.
Latency is batch 1, one 30-frame sequence, ONNX Runtime on ``--threads`` threads, all sessions in one process and
timed in interleaved rounds (so machine load hits every variant alike); figures are medians, with the ratio to
``w8a8``. Latency does not depend on the trained values, so calibrated (untrained) models stand in for trained ones.

    python benchmarks/mixed_latency.py [--rounds 15] [--runs 10] [--threads 2]

Writes ``results/mixed/mixed_latency_<date>_<cpu>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


from _interleaved import time_interleaved
from _record import REPO, write_record

FP = REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt"
RECIPE = REPO / "results" / "lowbit" / "configs" / "w3a3" / "lsq.yaml"
LCPAQ = REPO / "results" / "mixed" / "lowbit_w3a3_lcpaq.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per variant and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=30)
    a = ap.parse_args()

    import copy

    import torch

    from qgait.config import load_config
    from qgait.data.store import SequenceStore
    from qgait.engine.checkpoint import load_inference_model
    from qgait.export import export_onnx, export_qdq
    from qgait.export.int4 import load_packed, packable_initializers, save_packed
    from qgait.export.ort_ptq import store_calibration_batches
    from qgait.quant import calibrate_, find_residual_outputs, quantize_
    from qgait.runtime.embedder import ort_session

    torch.set_num_threads(a.threads)
    fp, meta = load_inference_model(FP)
    size = tuple(meta["input_size"])
    calib = store_calibration_batches(SequenceStore.open(a.store), None, size, sequences=8, frames=a.frames)
    base = load_config(RECIPE).quant.config
    outputs = find_residual_outputs(fp, calib[0])
    bit_map = load_config(LCPAQ).quant.config.bit_map
    configs = {
        "w8a8": base.model_copy(update={"weight_bits": 8, "act_bits": 8}),
        "w4a8": base.model_copy(update={"weight_bits": 4, "act_bits": 8}),
        "w4a4": base.model_copy(update={"weight_bits": 4, "act_bits": 4}),
        "lcpaq_w3a3_size": base.model_copy(update={"weight_bits": 3, "act_bits": 3, "bit_map": bit_map}),
    }
    tmp = Path(tempfile.mkdtemp(prefix="mixed_latency_"))
    files, sizes, sessions = {}, {}, {}
    files["fp32"] = export_onnx(fp, tmp / "fp32.onnx", size).path
    configs["w4a8_float_stem"] = configs["w4a8"]
    first_input = {"w4a8_float_stem": "float"}
    for name, qc in configs.items():
        qc = qc.model_copy(update={"lsq_init": "mse", "output_quant": outputs})
        m = copy.deepcopy(fp)
        quantize_(m, qc)
        calibrate_(m, calib, max_samples=2**16)
        m.eval()
        onnx_path = export_qdq(m, tmp / f"{name}.onnx", size, calib=calib, threads=a.threads,
                               first_input=first_input.get(name, "auto")).path
        files[name] = onnx_path
        if packable_initializers(__import__("onnx").load(str(onnx_path))):
            files[name] = save_packed(onnx_path, tmp / f"{name}.qgpack")["path"]
    for name, path in files.items():
        path = Path(path)
        sizes[name] = path.stat().st_size
        src = load_packed(path).SerializeToString() if path.suffix == ".qgpack" else str(path)
        sessions[name] = ort_session(src, a.threads)
    x = store_calibration_batches(SequenceStore.open(a.store), None, size, sequences=1, frames=a.frames,
                                  seed=1)[0].numpy()
    timed = time_interleaved(sessions, x, a.rounds, a.runs, "w8a8")
    figures = {
        "model": str(FP.relative_to(REPO)), "input_size": list(size), "frames": a.frames, "batch": 1,
        "rounds": a.rounds, "runs_per_round": a.runs, "ort_threads": a.threads,
        "variants": {n: {"file": Path(files[n]).name, "bytes": sizes[n], **timed[n],
                         "size_ratio_to_w8a8": sizes[n] / sizes["w8a8"]}
                     for n in files},
    }
    for n, v in figures["variants"].items():
        print(f"{n:>16}: {v['bytes'] / 1024:8.1f} KiB ({v['size_ratio_to_w8a8']:.2f} of W8A8)  "
              f"{v['latency_ms_median']:7.2f} ms  x{v['ratio_to_w8a8_median_of_rounds']:.3f} of W8A8 "
              f"[{v['ratio_to_w8a8_rounds_min_max'][0]:.3f}, {v['ratio_to_w8a8_rounds_min_max'][1]:.3f}]")
    write_record("mixed_latency", figures, threads=a.threads, out_dir=REPO / "results" / "mixed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
