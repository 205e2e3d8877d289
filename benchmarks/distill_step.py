"""Training cost of distillation (issue 14): one step of the student alone against one step with GaitKD.

On the CPU recipe and real batches of the store, times SGD steps (data, forward, losses, backward, update) of:

- ``student``: the student with its task losses (triplet + CE);
- ``gaitkd``: the same student and batch plus the frozen teacher's forward pass and GaitKD's terms (part-wise KL
  at T 4, AB; :func:`qgait.workflows.distill.prepare_distillation`), as ``qgait distill`` trains it.

The teacher is ``--teacher`` (default: the zoo's FP model, the teacher of the low-bit study's GaitKD rows). With
``--quant w3a3`` the student is that model fake-quantized (LSQ, STE), as ``qgait quantize --teacher`` trains it.
- ``gaitkd_bf16_teacher``: as ``gaitkd`` with the teacher's forward pass under bf16 autocast
  (``distill.teacher_amp: bf16``); the student stays float32. Also recorded: how far the bf16 teacher's outputs
  are from the float32 teacher's on the timed batches (embedding cosine, softened-target difference at T 4).
- ``gaitkd_int8_teacher``: as ``gaitkd`` with the teacher's backbone in int8 (``distill.teacher_amp: int8``:
  PT2E, calibrated on 2 fixed training batches, compiled by inductor; compilation happens before the timing), with
  the same fidelity figures.

Student and teachers are in the memory format training gives them: with ``train.channels_last`` (the CPU recipe)
the FP student and the teachers (``prepare_distillation``) are channels-last; a QAT student is channels-last only
with ``quant.channels_last`` (off by default), as ``qgait quantize`` trains it.

The variants alternate step by step on the same batches, so machine noise hits them alike; the medians and the
ratios to ``student`` are printed (goal: at most 1.3) and written to
``results/bench/distill_step_<date>_<cpu>_t<threads>[_<tag>].json``.

    python benchmarks/distill_step.py [--steps 20] [--quant w3a3] [--threads 2] [--teacher CKPT] [--tag NAME]
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
    from qgait.config import DistillConfig, load_config
    from qgait.engine.distributed import DistContext
    from qgait.losses import LossSum
    from qgait.quant import QuantConfig, calibrate_, quantize_
    from qgait.workflows.common import build_losses, open_or_build_store, split_subjects
    from qgait.workflows.distill import load_teachers, prepare_distillation, teacher_calibration
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
    ap.add_argument("--tag", default="", help="file-name suffix (e.g. the teacher's name)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    store = open_or_build_store(cfg.data, progress=False)
    split = split_subjects(store, cfg.data)
    batches = make_train_batches(cfg, store, split.train_subjects, ctx)
    student = load_fp_network(a.student, cfg, batches.num_classes)
    if cfg.train.channels_last if a.quant == "none" else bool(cfg.quant and cfg.quant.channels_last):
        student = student.to(memory_format=torch.channels_last)  # as `qgait distill` / `qgait quantize` train it
    if a.quant != "none":
        bits = int(a.quant[1])
        quantize_(student.model, QuantConfig(weight_bits=bits, act_bits=bits))
        calibrate_(student.model, [x for x, _ in batches.held_out(2)])
    kd_student, kd16_student, kd8_student = (copy.deepcopy(student) for _ in range(3))
    task = build_losses(cfg.loss, student.head is not None)
    train_net, kd_terms, teacher_fn = prepare_distillation(cfg, load_teachers([a.teacher]), kd_student, ctx.device)
    cfg16 = cfg.model_copy(deep=True)
    cfg16.distill = (cfg16.distill or DistillConfig()).model_copy(update={"teacher_amp": "bf16"})
    train16, _, teacher16 = prepare_distillation(cfg16, load_teachers([a.teacher]), kd16_student, ctx.device)
    cfg8 = cfg.model_copy(deep=True)
    cfg8.distill = (cfg8.distill or DistillConfig()).model_copy(update={"teacher_amp": "int8"})
    train8, _, teacher8 = prepare_distillation(cfg8, load_teachers([a.teacher]), kd8_student, ctx.device,
                                               calib=lambda: teacher_calibration(batches))
    kd_loss = LossSum({**{k: (m, task.weights[k]) for k, m in task.terms.items()}, **kd_terms})

    def sgd(net):
        return torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

    variants = {
        "student": (student, task, None, sgd(student)),
        "gaitkd": (train_net, kd_loss, teacher_fn, sgd(train_net)),
        "gaitkd_bf16_teacher": (train16, kd_loss, teacher16, sgd(train16)),
        "gaitkd_int8_teacher": (train8, kd_loss, teacher8, sgd(train8)),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    cosines: dict[str, list[float]] = {"bf16": [], "int8": []}
    target_diffs: dict[str, list[float]] = {"bf16": [], "int8": []}
    for it in range(a.warmup + a.steps):
        x, y = batches.get(it)
        t32 = teacher_fn(x)
        for name, other in (("bf16", teacher16(x)), ("int8", teacher8(x))):
            cosines[name].append(torch.nn.functional.cosine_similarity(
                t32["teacher_embeddings"].flatten(1), other["teacher_embeddings"].flatten(1)).min().item())
            if "teacher_logits" in t32:
                p32, p_other = (torch.softmax(16 * t["teacher_logits"] / 4, dim=1) for t in (t32, other))
                target_diffs[name].append((p32 - p_other).abs().max().item())
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
    ratio16 = med["gaitkd_bf16_teacher"] / med["student"]
    ratio8 = med["gaitkd_int8_teacher"] / med["student"]
    print(f"student {med['student']:.3f} s/step; with GaitKD: float32 teacher {med['gaitkd']:.3f} s/step, bf16 "
          f"teacher {med['gaitkd_bf16_teacher']:.3f}, int8 teacher {med['gaitkd_int8_teacher']:.3f} (median of "
          f"{a.steps}, {a.quant} student): {ratio:.2f}x, {ratio16:.2f}x, {ratio8:.2f}x (goal <= 1.3)")
    fidelity = {name: {"min_embedding_cosine": min(cosines[name]),
                       "max_target_abs_diff": max(target_diffs[name]) if target_diffs[name] else None}
                for name in cosines}
    for name, f in fidelity.items():
        print(f"{name} teacher vs float32: embedding cosine >= {f['min_embedding_cosine']:.5f}, softened targets "
              f"(T 4) differ by <= {f['max_target_abs_diff']}")
    write_record("distill_step", {"config": str(a.config), "student": str(a.student), "teacher": str(a.teacher),
                                  "quant": a.quant, "steps": a.steps, "median_s": med, "ratio": ratio,
                                  "ratio_bf16_teacher": ratio16, "bf16_teacher_fidelity": fidelity["bf16"],
                                  "ratio_int8_teacher": ratio8, "int8_teacher_fidelity": fidelity["int8"],
                                  "kd_terms": sorted(kd_terms), "times_s": times},
                 threads=a.threads, suffix=f"_{a.tag}" if a.tag else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
