"""A frozen teacher's forward pass alone, per precision and memory format (issue 14, "Teacher precision").

For each zoo teacher, on binary batches of the training shape (64 sequences x 16 frames at 32x22), times the
forward pass (no gradient) of:

- float32 and bf16 autocast, each with the weights in NCHW and in channels-last (what ``prepare_distillation`` does
  under ``train.channels_last``);
- int8 (``Teacher.quantize_int8``: PT2E x86, compiled by inductor; compiled before the timing).

The variants alternate call by call; medians are printed and written, with each variant's distance to the NCHW
float32 outputs (max abs difference of the embeddings, min cosine) and, for channels-last, to the same precision
in NCHW, to
``results/bench/teacher_forward_<date>_<cpu>_t<threads>.json``.

    python benchmarks/teacher_forward.py [--reps 6] [--threads 2]
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
TEACHERS = ("zoo/gaitbase_casiab_cpu_w05/model.pt", "zoo/gaitbase_casiab_cpu/model.pt",
            "zoo/gaitset_casiab_cpu/model.pt")


def main() -> int:
    from qgait.workflows.distill import load_teacher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    xs = [(torch.rand(64, 16, 32, 22, generator=g) > 0.5).float() for _ in range(3)]
    out = {}
    for rel in TEACHERS:
        ref = load_teacher(REPO / rel)
        cl = copy.copy(load_teacher(REPO / rel).to(memory_format=torch.channels_last))
        variants = {"float32_nchw": ref, "float32_channels_last": cl}
        for base, name in ((ref, "bf16_nchw"), (cl, "bf16_channels_last")):
            t = copy.copy(base)
            t.amp = torch.bfloat16
            variants[name] = t
        variants["int8"] = load_teacher(REPO / rel).quantize_int8(xs[:2])
        x = xs[2]
        want = ref(x)["teacher_embeddings"]
        times = {k: [] for k in variants}
        for rep in range(a.reps + 1):
            for k, t in variants.items():
                t0 = time.perf_counter()
                t(x)
                if rep:  # the first round warms up (and compiles the int8 graph for this shape)
                    times[k].append(time.perf_counter() - t0)
        rows = {}
        embs = {k: t(x)["teacher_embeddings"] for k, t in variants.items()}
        for k, emb in embs.items():
            cos = torch.nn.functional.cosine_similarity(emb.flatten(1), want.flatten(1)).min().item()
            rows[k] = {"median_s": statistics.median(times[k]), "max_abs_diff": (emb - want).abs().max().item(),
                       "min_cosine": cos, "times_s": times[k]}
            if k.endswith("_channels_last"):  # the memory format alone: against the same precision in NCHW
                same = embs[k.replace("_channels_last", "_nchw")]
                rows[k]["max_abs_diff_vs_nchw"] = (emb - same).abs().max().item()
        out[rel] = rows
        print(rel)
        for k, r in rows.items():
            print(f"  {k:22s} {r['median_s']:.3f} s  max |diff| {r['max_abs_diff']:.2e}  cosine >= {r['min_cosine']:.5f}"
                  + (f"  vs NCHW {r['max_abs_diff_vs_nchw']:.2e}" if "max_abs_diff_vs_nchw" in r else ""))
    write_record("teacher_forward", {"batch": [64, 16, 32, 22], "reps": a.reps, "teachers": out}, threads=a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
