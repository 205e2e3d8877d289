"""Training cost of distillation (issue 14): one step of the student alone against one step with GaitKD.

On the CPU recipe and real batches of the store, times SGD steps (data, forward, losses, backward, update) of:

- ``student``: the student with its task losses (triplet + CE);
- ``gaitkd``: the same student and batch plus the frozen teacher's forward pass and GaitKD's terms (part-wise KL
  at T 4, AB; :func:`qgait.workflows.distill.prepare_distillation`), as ``qgait distill`` trains it.

The teacher is ``--teacher`` (default: the zoo's FP model, the teacher of the low-bit study's GaitKD rows). With
``--quant w3a3`` the student is that model fake-quantized (LSQ, STE), as ``qgait quantize --teacher`` trains it.
The two variants alternate step by step on the same batches, so machine noise hits them alike; the medians and
the ratio gaitkd / student are printed (goal: at most 1.3) and written to
``results/bench/distill_step_<date>_<cpu>_t<threads>.json``.

    python benchmarks/distill_step.py [--steps 20] [--quant w3a3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from _record import write_record  # benchmarks/_record.py

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from qgait.config import load_config
    from qgait.engine.distributed import DistContext
    from qgait.losses import LossSum
    from qgait.quant import QuantConfig, calibrate_, quantize_
    from qgait.workflows.common import build_losses, open_or_build_store, split_subjects
    from qgait.workflows.distill import load_teachers, prepare_distillation
    from qgait.workflows.quantize import load_fp_network
    from qgait.workflows.train import make_train_batches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", type=Path, default=REPO / "configs" / "gaitkd_casiab_cpu.yaml")
    ap.add_argument("--student", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt",
                    help="the student's starting weights (default: the zoo's FP model)")
    ap.add_argument("--teacher", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt")
    ap.add_argument("--quant", choices=["none", "w3a3", "w4a4"], default="none")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    store = open_or_build_store(cfg.data, progress=False)
    split = split_subjects(store, cfg.data)
    batches = make_train_batches(cfg, store, split.train_subjects, ctx)
    student = load_fp_network(a.student, cfg, batches.num_classes)
    if a.quant != "none":
        bits = int(a.quant[1])
        quantize_(student.model, QuantConfig(weight_bits=bits, act_bits=bits))
        calibrate_(student.model, [batches.get(10**6 + i)[0] for i in range(2)])
    kd_student = copy.deepcopy(student)
    task = build_losses(cfg.loss, student.head is not None)
    train_net, kd_terms, teacher_fn = prepare_distillation(cfg, load_teachers([a.teacher]), kd_student, ctx.device)
    kd_loss = LossSum({**{k: (m, task.weights[k]) for k, m in task.terms.items()}, **kd_terms})
    variants = {
        "student": (student, task, None, torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9)),
        "gaitkd": (train_net, kd_loss, teacher_fn, torch.optim.SGD(train_net.parameters(), lr=1e-4, momentum=0.9)),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for it in range(a.warmup + a.steps):
        x, y = batches.get(it)
        for name, (net, loss_fn, extra, opt) in variants.items():
            net.train()
            t0 = time.perf_counter()
            out = net(x)
            if extra is not None:
                out = {**out, **extra(x)}
            loss, _ = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if it >= a.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["gaitkd"] / med["student"]
    print(f"student {med['student']:.3f} s/step, with GaitKD {med['gaitkd']:.3f} s/step (median of {a.steps}, "
          f"{a.quant} student): {ratio:.2f}x (goal <= 1.3)")
    write_record("distill_step", {"config": str(a.config), "student": str(a.student), "teacher": str(a.teacher),
                                  "quant": a.quant, "steps": a.steps, "median_s": med, "ratio": ratio,
                                  "kd_terms": sorted(kd_terms), "times_s": times}, threads=a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
