"""How much do IDC and IDD pull, next to the task losses? Gradient norms of each loss term on a quantized
checkpoint (issue 13, item 4: "the measured ratio of IDC's gradient norm to the task losses'").

On ``--batches`` real training batches (CASIA-B training subjects 001-074, P x K = 8 x 8, model in train mode), the
norm of the gradient of each term with respect to every trainable parameter of the quantized backbone (weights and
steps, stacked), for the task losses (triplet + CE, as trained) and for IDC / IDD variants against the frozen FP
model, at weight 1; the ratio term / task says what weight makes a term matter.

    python scripts/loss_grad_norms.py QUANT_CKPT --fp zoo/gaitbase_casiab_cpu/model.pt \\
        --output results/lowbit/loss_grad_norms.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from qgait.data.loader import TrainBatches
from qgait.data.store import SequenceStore
from qgait.engine.checkpoint import load_checkpoint, load_inference_model
from qgait.losses.cross_entropy import PartCrossEntropy
from qgait.losses.idc import idc_loss
from qgait.losses.idd import idd_loss
from qgait.losses.triplet import TripletLoss
from qgait.models import GaitWithHead

TERMS = {
    "idc part (methods.md 1.5)": lambda q, f, y: idc_loss(q, f, y, "inter", "part"),
    "idc global": lambda q, f, y: idc_loss(q, f, y, "inter", "global"),
    "idc none (raw)": lambda q, f, y: idc_loss(q, f, y, "inter", "none"),
    "idd tau 0.1": lambda q, f, y: idd_loss(q, f, 0.1),
    "idd tau 0.1 per part": lambda q, f, y: idd_loss(q, f, 0.1, per_part=True),
}


def grad_norm(params: list[torch.nn.Parameter], loss: torch.Tensor) -> float:
    """``|| d loss / d params ||_2`` over all ``params`` stacked (parameters the loss does not reach count 0)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    norms = [g.norm() for g in grads if g is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="quantized model.pt with its head (qgait quantize output)")
    ap.add_argument("--fp", type=Path, default=Path("zoo/gaitbase_casiab_cpu/model.pt"))
    ap.add_argument("--store", type=Path, default=Path("stores/casia-b-44"))
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--output", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    model, meta = load_inference_model(a.checkpoint)
    fp, _ = load_inference_model(a.fp)
    head_state = load_checkpoint(a.checkpoint).get("head_state_dict")
    if not head_state:
        raise SystemExit(f"{a.checkpoint}: no head_state_dict (CE needs the BNNeck head)")
    num_classes = head_state["weight"].shape[-1]  # BNNeckHead.weight: [p, c, classes]
    net = GaitWithHead(model, num_classes)
    net.head.load_state_dict(head_state)
    net.train()
    fp.eval().requires_grad_(False)
    store = SequenceStore.open(a.store)
    train = [s for s in sorted(store.subjects) if int(s) <= 74]
    size = tuple(meta.get("input_size") or (32, 22))
    tb = TrainBatches(store, store.select(subjects=train), p=8, k=8, frames=16, size=size, seed=0)
    params = [p for p in net.model.parameters() if p.requires_grad]
    tri, ce = TripletLoss(margin=0.2), PartCrossEntropy(scale=16.0, label_smoothing=0.1)
    rows: dict[str, list[float]] = {"task (triplet + CE)": [], "triplet": [], "ce": []}
    values: dict[str, list[float]] = {k: [] for k in ["task (triplet + CE)", "triplet", "ce", *TERMS]}
    for i in range(a.batches):
        x, y = tb.get(i)
        out = net(x)
        with torch.no_grad():
            f = fp(x).float()
        l_tri, _ = tri(out, y)
        l_ce, _ = ce(out, y)
        rows["task (triplet + CE)"].append(grad_norm(params, l_tri + l_ce))
        rows["triplet"].append(grad_norm(params, l_tri))
        rows["ce"].append(grad_norm(params, l_ce))
        values["task (triplet + CE)"].append((l_tri + l_ce).item())
        values["triplet"].append(l_tri.item())
        values["ce"].append(l_ce.item())
        for name, fn in TERMS.items():
            term = fn(out["embeddings"], f, y)
            rows.setdefault(name, []).append(grad_norm(params, term))
            values[name].append(term.item())
    mean = {k: sum(v) / len(v) for k, v in rows.items()}
    task = mean["task (triplet + CE)"]
    report = {"command": "python " + " ".join(sys.argv), "checkpoint": str(a.checkpoint), "batches": a.batches,
              "grad_norm": mean, "ratio_to_task": {k: v / task for k, v in mean.items()},
              "loss_value": {k: sum(v) / len(v) for k, v in values.items()}}
    print(f"{'term':28s} {'loss':>10s} {'|grad|':>10s} {'/ task':>9s}")
    for k, v in mean.items():
        lv = report["loss_value"].get(k, float("nan"))
        print(f"{k:28s} {lv:10.4f} {v:10.4f} {v / task:9.4f}")
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
