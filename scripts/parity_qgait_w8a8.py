"""Parity of the trained QGait W8A8 export (docs/results.md): default export vs --requant off --first-input float.

Run from the repository root after `python scripts/ablation.py --only qgait_w8a8`."""
import json
from qgait.data.store import SequenceStore
from qgait.workflows.deploy import export_checkpoint, parity_check
store = SequenceStore.open("stores/casia-b-44")
ck = "runs/ablation/qgait_w8a8/model.pt"
out = {}
for name, kw in {"default": {}, "requant_off_float_first": {"requant": False, "first_input": "float"}}.items():
    r = export_checkpoint(ck, f"/tmp/qg8_{name}.onnx", calib_store="stores/casia-b-44", overwrite=True, **kw)
    p = parity_check(ck, f"/tmp/qg8_{name}.onnx", store, [f"{i:03d}" for i in range(75, 85)], evaluate=(name == "default"))
    out[name] = {k: p.get(k) for k in ("sequences", "cosine_mean", "cosine_min", "torch", "onnx")}
    print(name, json.dumps(out[name]), flush=True)
json.dump(out, open("results/deploy/qgait_w8a8_parity.json", "w"), indent=2)
