"""Int16 saturation of the silhouette input in ONNX Runtime's u8s8 kernels (CPUs without VNNI), measured.

The trained CPU recipe (zoo/gaitbase_casiab_cpu) at W8A8: cosine between the int8 model and its reference (the
FP model for the post-training paths, the fake-quant model for the learned-step exports) over 24 real test
sequences (subjects 075-079, 30 frames), with the first conv int8 (uint8 silhouette input) or float. Paths: ONNX
Runtime's PTQ, the learned-step QDQ export, and (``--pt2e``) the same two as PT2E graphs lowered by inductor to
oneDNN kernels, to see whether oneDNN on this CPU has the same limit. Writes results/deploy/ptq_first_conv.json.
Run from the repository root with a store from `qgait data import`:

    python scripts/ptq_first_conv.py [--store stores/casia-b-44] [--pt2e]
"""
import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from qgait.data.store import SequenceStore
from qgait.engine.checkpoint import load_inference_model
from qgait.export import export_onnx, export_qdq
from qgait.export.ort_ptq import quantize_onnx, store_calibration_batches
from qgait.quant import QuantConfig, calibrate_, quantize_
from qgait.runtime.cpu import cpu_info


def cosine_callable(run, model, xs) -> dict:
    with torch.no_grad():
        c = [float(torch.nn.functional.cosine_similarity(model(x).flatten(1), run(x).flatten(1))) for x in xs]
    return {"mean": float(np.mean(c)), "min": float(np.min(c))}


def cosine(session, model, xs) -> dict:
    return cosine_callable(lambda x: torch.from_numpy(session.run(None, {"silhouettes": x.numpy()})[0]), model, xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="stores/casia-b-44")
    ap.add_argument("--output", default="results/deploy/ptq_first_conv.json")
    ap.add_argument("--pt2e", action="store_true", help="also the PT2E paths (inductor compiles: minutes)")
    a = ap.parse_args()
    st = SequenceStore.open(a.store)
    fp, meta = load_inference_model("zoo/gaitbase_casiab_cpu/model.pt")
    size = tuple(meta["input_size"])
    calib = store_calibration_batches(st, None, size, sequences=8, frames=30)
    test = store_calibration_batches(st, [f"{i:03d}" for i in range(75, 80)], size, sequences=24, frames=30, seed=3)
    out: dict = {"model": "zoo/gaitbase_casiab_cpu", "input_size": list(size), "test_sequences": len(test),
                 "cpu": cpu_info()}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        export_onnx(fp, t / "fp32.onnx", size)
        for first in ("int8", "float"):
            quantize_onnx(t / "fp32.onnx", t / f"ptq_{first}.onnx", calib, first_conv=first)
            out[f"ort_ptq_first_{first}"] = cosine(ort.InferenceSession(str(t / f"ptq_{first}.onnx")), fp, test)
        q = copy.deepcopy(fp)
        quantize_(q, QuantConfig(weight_bits=8, act_bits=8, lsq_init="mse"))
        calibrate_(q, calib)
        q.eval()
        out["qdq_w8a8_first_weight_max"] = int(q.backbone.module[0].int_weight()[0].abs().max())
        for first in ("uint8", "float"):
            r = export_qdq(q, t / f"qdq_{first}.onnx", size, calib=calib, first_input=first)
            out[f"qdq_w8a8_first_{first}"] = cosine(ort.InferenceSession(r.path), q, test)
        if a.pt2e:
            from qgait.export.pt2e import compile_inductor, pt2e_from_fp, pt2e_from_quantized

            out["torch_threads"] = torch.get_num_threads()
            for first in ("uint8", "float"):
                run = compile_inductor(pt2e_from_quantized(q, size, first))
                out[f"pt2e_w8a8_first_{first}"] = cosine_callable(run, q, test)
            # X86InductorQuantizer's PTQ: it quantizes the first conv too (uint8 input, int8 weights)
            out["pt2e_ptq_first_int8"] = cosine_callable(compile_inductor(pt2e_from_fp(fp, size, calib)), fp, test)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
