"""Training step time and peak memory of a recipe (default: the CPU recipe) on the real store.

Runs ``--steps`` real training iterations (data, forward, backward, SGD) and prints the median step time and
the process's peak RSS. The store is built from the config's source if missing.

    python benchmarks/train_step.py [configs/gaitbase_casiab_cpu.yaml] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from qgait.config import load_config
from qgait.workflows.common import build_losses, build_network, open_or_build_store, split_subjects
from qgait.workflows.train import make_train_batches
from qgait.engine.distributed import DistContext

from _record import write_record  # noqa: E402 (benchmarks/_record.py)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", type=Path, default=REPO / "configs" / "gaitbase_casiab_cpu.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args()
    cfg = load_config(a.config, a.overrides)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    store = open_or_build_store(cfg.data, progress=False)
    split = split_subjects(store, cfg.data)
    batches = make_train_batches(cfg, store, split.train_subjects, ctx)
    net = build_network(cfg, batches.num_classes)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    run = torch.compile(net) if cfg.train.compile else net
    loss_fn = build_losses(cfg.loss, net.head is not None)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    times = []
    for it in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        x, y = batches.get(it)
        with torch.autocast("cpu", torch.bfloat16, enabled=cfg.train.amp == "bf16"):
            out = run(x)
        loss, _ = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it >= a.warmup:
            times.append(time.perf_counter() - t0)
    res = {
        "config": str(a.config.name), "threads": torch.get_num_threads(),
        "batch": f"{cfg.data.p}x{cfg.data.k} sequences x {cfg.data.train_frames} frames at {cfg.data.input_size}",
        "median_s_per_step": round(statistics.median(times), 3), "min_s": round(min(times), 3),
        "max_s": round(max(times), 3), "steps_per_hour": round(3600 / statistics.median(times)),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(res, indent=2))
    write_record("train_step", res, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
