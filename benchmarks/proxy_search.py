"""Does LCPAQ's low-cost proxy search rank quantization hyperparameters as full runs do? (issue 15, item 4)

Candidates: the W3A3 rows of the low-bit study (``scripts/lowbit.py``, ``docs/lowbit.md``) that differ from the
LSQ control in stage 2 only (rounding: STE / soft quantizer and its alpha range; extra losses: IDC, IDD, GaitKD),
all with a finished seed-0 full run under the fair protocol (450 iterations at lr 0.01 shared, then 150 at lr
0.001, evaluated on all 50 test subjects). The proxy of each (:mod:`qgait.workflows.proxy_search`) starts from
the same seed-0 shared stage-1 checkpoint, trains the first ``--iterations`` stage-2 iterations with the same seed
(the same batches as the full run's first ones) and evaluates on the first ``--test-subjects`` test subjects.

Figures: the proxy ranking against the seed-0 full runs' and against the seed means where a row has 3 seeds
(Kendall tau-b, p-value, top-1 match, regret in rank-1 points), and the cost: the proxy's seconds against the full
runs' stage-2 + evaluation seconds (both measured on this machine). Writes
``results/mixed/proxy_search_<date>_<cpu>.json``. Run (about 2-3 min per candidate on 2 cores):

    python benchmarks/proxy_search.py [--iterations 30] [--test-subjects 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _record import REPO, write_record

LOWBIT = REPO / "results" / "lowbit"
FP = REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt"
CANDIDATES = ("lsq", "soft_dsq_ste_step", "soft_dsq", "soft_qgait", "idc_global_w30", "idc_part_w30",
              "idc_none_w001", "idd_w300", "kd_s2")
TEACHERS = {"kd_s2": (FP,)}


def shared_start(seed: int) -> Path:
    for d in (REPO / "runs" / "lowbit" / "w3a3" / f"seed{seed}" / "lsq", REPO / "zoo" / "lowbit" / "w3a3" / f"seed{seed}"):
        if (d / "stage1_last.pt").is_file():
            return d
    raise FileNotFoundError(f"no shared W3A3 stage-1 checkpoint for seed {seed}: run scripts/lowbit.py first")


def full_runs(seed: int) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per candidate: the seed's full-run mean rank-1, the mean over all its seeds (rows with 3), and the full
    run's seconds (stage 2 + evaluation)."""
    by_seed, seed_mean, seconds = {}, {}, {}
    for row in CANDIDATES:
        recs = [json.loads(p.read_text()) for p in sorted((LOWBIT / "w3a3").glob(f"{row}_seed*.json"))]
        for r in recs:
            if r["seed"] == seed:
                by_seed[row] = r["summary"]["stages"].get("stage2", r["summary"]["stages"].get("final"))["mean"]
                seconds[row] = r["summary"]["seconds"].get("stage2", 0.0) + r["result"].get("eval_seconds", 0.0)
        if len(recs) >= 3:
            seed_mean[row] = sum(r["summary"]["stages"]["stage2"]["mean"] for r in recs) / len(recs)
    return by_seed, seed_mean, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30, help="proxy stage-2 iterations (full: 150)")
    ap.add_argument("--test-subjects", type=int, default=10, help="proxy test subjects (full: 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "proxy")
    a = ap.parse_args()

    from qgait.config import load_config
    from qgait.workflows.proxy_search import Candidate, ProxySpec, format_ranking, rank_agreement, run_proxy_search

    full, seed_mean, full_seconds = full_runs(a.seed)
    missing = [c for c in CANDIDATES if c not in full]
    if missing:
        raise SystemExit(f"no seed-{a.seed} full run for {missing}: run scripts/lowbit.py run --setting w3a3 first")
    candidates = {row: Candidate(load_config(LOWBIT / "configs" / "w3a3" / f"{row}.yaml", [f"train.seed={a.seed}"]),
                                 TEACHERS.get(row, ()))
                  for row in CANDIDATES}
    spec = ProxySpec(a.iterations, a.test_subjects)
    t0 = time.perf_counter()
    report = run_proxy_search(candidates, FP, a.runs / f"w3a3_seed{a.seed}_it{a.iterations}_s{a.test_subjects}",
                              spec, stage1_from=shared_start(a.seed))
    wall = time.perf_counter() - t0
    print(format_ranking(report))
    proxy = {n: c["rank1"]["mean"] for n, c in report["candidates"].items()}
    vs_seed = rank_agreement(proxy, full)
    vs_mean = rank_agreement(proxy, seed_mean) if len(seed_mean) >= 3 else None
    full_total = sum(full_seconds[c] for c in CANDIDATES)
    figures = {
        "spec": report["spec"], "seed": a.seed, "stage1_from": str(Path(report["stage1_from"]).resolve()
                                                                   .relative_to(REPO)),
        "proxy_rank1": proxy, "proxy_fp_rank1": report["fp"], "full_rank1_seed": full,
        "full_rank1_seed_mean": seed_mean,
        "agreement_vs_full_seed": vs_seed, "agreement_vs_full_seed_mean": vs_mean,
        "proxy_seconds": {n: c["seconds"] for n, c in report["candidates"].items()},
        "full_seconds": full_seconds, "proxy_seconds_total": report["seconds"], "full_seconds_total": full_total,
        "cost_ratio": report["seconds"] / full_total, "wall_seconds_this_call": round(wall, 1),
        "full_run_protocol": "results/lowbit/configs/w3a3/_schedule.yaml; results/lowbit/w3a3/<row>_seed<k>.json",
    }
    print(f"Kendall tau vs seed-{a.seed} full runs: {vs_seed['kendall_tau']:+.2f} (p {vs_seed['p_value']:.3f}), "
          f"top-1 match {vs_seed['top1_match']}, regret {vs_seed['regret']:.2f} pt; cost {figures['cost_ratio']:.2f}"
          f" of the full runs'")
    if vs_mean:
        print(f"vs seed means ({vs_mean['n']} rows with 3 seeds): tau {vs_mean['kendall_tau']:+.2f}")
    write_record("proxy_search", figures, suffix=f"_it{a.iterations}_s{a.test_subjects}",
                 out_dir=REPO / "results" / "mixed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
