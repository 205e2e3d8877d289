"""What the teacher output cache (``qgait distill --teacher-cache``) saves, and that it reads back what the teacher
computes.

The teacher as the distillation study runs it (bf16 autocast, channels-last weights, the CPU recipe's real
training batches of one seed), batch by batch:

- ``live``: the teacher's forward pass;
- ``miss``: the cache computing an entry (forward, hashing the batch, writing the ``.npz``) on a batch it lacks;
- ``hit``: the cache reading the entry back (hashing the batch, reading the ``.npz``).

Every entry read back is compared with this process's own live forward on the same batch: entries written by an
**earlier** process (run the benchmark twice on one ``--cache``) show that the forward is deterministic across
processes, which is what makes a cached run the same experiment as a live one. Writes
``results/bench/teacher_cache_<date>_<cpu>_t<threads>.json``.

    python benchmarks/teacher_cache.py --cache /tmp/tc [--batches 10] [--seed 0] [--teacher CKPT]
"""

from __future__ import annotations

import argparse
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
    from qgait.workflows.common import open_or_build_store, split_subjects
    from qgait.workflows.distill import load_teacher
    from qgait.workflows.train import make_train_batches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "results" / "distill" / "configs" / "gaitkd.yaml")
    ap.add_argument("--teacher", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu_w05" / "model.pt")
    ap.add_argument("--cache", type=Path, required=True, help="cache folder (run twice on one folder)")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config, [f"train.seed={a.seed}"])
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    store = open_or_build_store(cfg.data, progress=False)
    batches = make_train_batches(cfg, store, split_subjects(store, cfg.data).train_subjects, ctx)
    teacher = load_teacher(a.teacher)
    teacher.amp = torch.bfloat16 if cfg.distill.teacher_amp == "bf16" else None
    if cfg.train.channels_last:
        teacher.to(memory_format=torch.channels_last)
    teacher.use_cache(a.cache, channels_last=cfg.train.channels_last, description={"checkpoint": str(a.teacher)})
    cache = teacher.cache
    times: dict[str, list[float]] = {"live": [], "miss": [], "hit": []}
    earlier = identical = 0
    entry_bytes = []
    for it in range(a.batches):
        x, _ = batches.get(it)
        t0 = time.perf_counter()
        live = teacher._forward(x)
        times["live"].append(time.perf_counter() - t0)
        file = cache.path(cache.key(x))
        if file.is_file():  # an earlier process wrote it
            earlier += 1
        else:
            t0 = time.perf_counter()
            cache.get(x, teacher._forward)
            times["miss"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = cache.get(x, teacher._forward)
        times["hit"].append(time.perf_counter() - t0)
        entry_bytes.append(file.stat().st_size)
        same = back.keys() == live.keys() and all(torch.equal(back[k], live[k]) for k in live)
        identical += same
        if not same:
            print(f"batch {it}: the entry differs from this process's forward "
                  f"(max abs {max((back[k] - live[k]).abs().max().item() for k in live):.3g})")
    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    print(f"teacher forward {med['live']:.3f} s; cache hit {med['hit']:.4f} s"
          + (f", miss {med['miss']:.3f} s" if med["miss"] is not None else "")
          + f"; entry {statistics.median(entry_bytes) / 2**20:.2f} MiB; {identical}/{a.batches} read back "
          f"bit-identical to this process's forward ({earlier} written by an earlier process)")
    write_record("teacher_cache", {
        "config": str(a.config), "teacher": str(a.teacher), "seed": a.seed, "batches": a.batches,
        "teacher_amp": cfg.distill.teacher_amp, "channels_last": cfg.train.channels_last, "median_s": med,
        "entry_mib": statistics.median(entry_bytes) / 2**20, "entries_from_an_earlier_process": earlier,
        "bit_identical": identical, "times_s": times}, threads=a.threads)
    return 0 if identical == a.batches else 1


if __name__ == "__main__":
    sys.exit(main())
