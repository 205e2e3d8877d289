"""Gradient norms of a quantized checkpoint under the STE and under QGait's soft quantizer (backward-only) at
several sharpness values, with the output quantizers soft or kept on the STE (``SoftQuantConfig.outputs``).

Why: the soft derivative ``alpha / (2 tanh(alpha/2)) * sech^2(alpha r)`` peaks above 1 (5 at alpha 10); where
quantizers sit in series along the gradient path (output quantizers on the residual operands), the peaks
multiply and the soft stage can diverge (docs/results.md, "Ablation"). This script measures the effect on real
training batches (CASIA-B training subjects 001-074, triplet loss on the embeddings, model in train mode).

    python scripts/soft_grad_norms.py CKPT [CKPT ...] --store stores/casia-b-44 --output results/quant/soft_grad_norms.json

Prints, per checkpoint and setting, the norm of all conv-weight gradients (mean over ``--batches`` batches) and
its ratio to the STE's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from qgait.data.loader import TrainBatches
from qgait.data.store import SequenceStore
from qgait.engine.checkpoint import load_inference_model
from qgait.losses.triplet import TripletLoss
from qgait.quant import output_quantizers, set_alpha_, set_rounding_


def conv_grad_norm(model: torch.nn.Module, batches: list, loss_fn: TripletLoss) -> float:
    """Mean over ``batches`` of the norm of every 4-d (conv) weight gradient, stacked."""
    total = 0.0
    for x, y in batches:
        model.zero_grad()
        out = model(x)
        loss, _ = loss_fn(out if isinstance(out, dict) else {"embeddings": out}, y)
        loss.backward()
        grads = [p.grad.norm() for p in model.parameters() if p.grad is not None and p.dim() == 4]
        total += torch.stack(grads).norm().item()
    return total / len(batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="quantized model.pt files")
    ap.add_argument("--store", type=Path, default=Path("stores/casia-b-44"))
    ap.add_argument("--alphas", default="2,5,10")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--output", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    store = SequenceStore.open(a.store)
    train = [s for s in sorted(store.subjects) if int(s) <= 74]
    loss_fn = TripletLoss()
    report = {"command": "python " + " ".join(sys.argv), "alphas": a.alphas, "batches": a.batches, "models": {}}
    for ckpt in a.checkpoints:
        model, meta = load_inference_model(ckpt)
        model.train()
        size = tuple(meta.get("input_size") or (32, 22))
        tb = TrainBatches(store, store.select(subjects=train), p=8, k=4, frames=a.frames, size=size, seed=0)
        batches = [tb.get(i) for i in range(a.batches)]
        has_outputs = any(True for _ in output_quantizers(model))
        rows = {}
        set_rounding_(model, "ste")
        rows["ste"] = conv_grad_norm(model, batches, loss_fn)
        for alpha in (float(v) for v in a.alphas.split(",")):
            for outputs in ([None, "ste"] if has_outputs else [None]):
                set_rounding_(model, "soft_backward", outputs=outputs)
                set_alpha_(model, alpha)
                key = f"soft alpha={alpha:g}" + (", outputs ste" if outputs else ", outputs soft" if has_outputs else "")
                rows[key] = conv_grad_norm(model, batches, loss_fn)
        report["models"][str(ckpt)] = {k: {"grad_norm": v, "vs_ste": v / rows["ste"]} for k, v in rows.items()}
        print(ckpt)
        for k, v in rows.items():
            print(f"  {k:36s} {v:10.3f}  {v / rows['ste']:7.1f}x")
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
