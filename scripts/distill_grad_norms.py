"""How hard does each distillation term pull, next to the task losses? Gradient norms of GaitKD's terms and its
baselines on the student (issue 14: the feature-MSE baseline's weight, which the reference code leaves at 1).

On ``--batches`` real training batches of the CPU recipe (CASIA-B training subjects, P x K 8 x 8, 16 frames, no
augmentation; the student in train mode, the teacher frozen as ``qgait distill`` runs it), the norm of the gradient
of each term, at weight 1, with respect to the student's backbone parameters (every trainable parameter of the
inference model, stacked): the task losses (triplet + CE), part-wise KL (T 4), plain KD on one logit vector (T 4),
AB (margin 1) and feature MSE. Their ratios to the task gradient say what weight makes a term pull as hard as the
task, and ``weight_to_match_ab`` is the feature-MSE weight whose gradient norm equals AB's at GaitKD's weight 0.003,
the like-for-like weight for the table's "AB against feature MSE" row. Measured at two points of training: the
student at its initialisation (``train.seed``) and the trained CPU-recipe model (``--student``); the figures are
medians over the batches.

    python scripts/distill_grad_norms.py --teacher zoo/gaitbase_casiab_cpu_w05/model.pt \\
        --output results/distill/grad_norms_w05.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from qgait.config import load_config
from qgait.data.loader import TrainBatches
from qgait.data.store import SequenceStore
from qgait.engine.checkpoint import load_checkpoint
from qgait.workflows.common import build_losses, build_network, split_subjects
from qgait.workflows.distill import load_teachers, prepare_distillation

from loss_grad_norms import grad_norm  # scripts/loss_grad_norms.py: the same norm for the quantization terms

REPO = Path(__file__).resolve().parents[1]
TERMS = {"kd_kl": "part-wise KL (T 4)", "kd_global": "plain KD, one logit vector (T 4)",
         "kd_ab": "AB (margin 1)", "kd_mse": "feature MSE"}
AB_WEIGHT = 0.003  # GaitKD's reference weight (docs/distillation.md)


def measure(cfg, teachers, batches, student_state: dict | None, seed: int) -> dict:
    """Median gradient norms (and ratios to the task's) of every term over ``batches``, for one student."""
    torch.manual_seed(seed)
    net = build_network(cfg, batches[0][2])
    if student_state is not None:
        net.model.load_state_dict(student_state["model"])
        if net.head is not None and student_state.get("head") is not None:
            net.head.load_state_dict(student_state["head"])
    train_net, terms, teacher_fn = prepare_distillation(cfg, teachers, net, torch.device("cpu"))
    task = build_losses(cfg.loss, net.head is not None)
    train_net.train()
    params = [p for p in net.model.parameters() if p.requires_grad]
    norms: dict[str, list[float]] = {"task (triplet + CE)": [], **{k: [] for k in terms}}
    values: dict[str, list[float]] = {k: [] for k in norms}
    for x, y, _ in batches:
        out = {**train_net(x), **teacher_fn(x)}
        loss_task, _ = task(out, y)
        norms["task (triplet + CE)"].append(grad_norm(params, loss_task))
        values["task (triplet + CE)"].append(loss_task.item())
        for name, (module, _w) in terms.items():
            value, _ = module(out, y)
            norms[name].append(grad_norm(params, value))
            values[name].append(value.item())
    med = {k: statistics.median(v) for k, v in norms.items()}
    t = med["task (triplet + CE)"]
    res = {"grad_norm": med, "loss_value": {k: statistics.median(v) for k, v in values.items()},
           "ratio_to_task": {k: v / t for k, v in med.items() if k in terms}}
    if "kd_ab" in med and med.get("kd_mse"):
        res["weight_to_match_ab"] = AB_WEIGHT * med["kd_ab"] / med["kd_mse"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True, help="teacher model.pt")
    ap.add_argument("--config", default=str(REPO / "configs" / "gaitkd_casiab_cpu.yaml"))
    ap.add_argument("--student", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt",
                    help="a trained student (model.pt with its head): the end-of-training point")
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--output", type=Path, help="JSON to write (refused if it exists)")
    a = ap.parse_args()
    if a.output is not None and a.output.exists():
        print(f"error: {a.output} exists; name another file", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    sets = [f"data.store={a.store}", "distill.kl.weight=1", "distill.global_kd.weight=1", "distill.ab.weight=1",
            "distill.feature_mse.weight=1"]
    cfg = load_config(a.config, sets)
    store = SequenceStore.open(a.store)
    split = split_subjects(store, cfg.data)
    tb = TrainBatches(store, store.select(subjects=split.train_subjects), p=cfg.data.p, k=cfg.data.k,
                      frames=cfg.data.train_frames, size=tuple(cfg.data.input_size), augment=None, seed=0)
    batches = [(*b, tb.num_classes) for b in tb.held_out(a.batches)]
    teachers = load_teachers([a.teacher])
    ck = load_checkpoint(a.student)
    trained = {"model": ck["state_dict"], "head": ck.get("head_state_dict")}
    res = {
        "script": "scripts/distill_grad_norms.py", "command": "python scripts/distill_grad_norms.py "
        + " ".join(sys.argv[1:]), "config": str(a.config), "teacher": str(a.teacher), "student": str(a.student),
        "batches": a.batches, "terms": TERMS, "ab_reference_weight": AB_WEIGHT,
        "at_init": measure(cfg, teachers, batches, None, cfg.train.seed),
        "trained": measure(cfg, teachers, batches, trained, cfg.train.seed),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if a.output is not None:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
