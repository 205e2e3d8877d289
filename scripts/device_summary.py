"""Summarise the run folders of ``scripts/device_check.sh`` into one JSON of figures.

Reads each run folder (the unpacked ``device_check.tar.gz``): ``machine.txt``, the training logs
(``<part>/train_log.jsonl``: median seconds per iteration per stage, the first logged window left out as warm-up),
the evaluations (``<part>/summary.json``, ``<part>_eval/results.json``) and the mixed-precision records
(``mixed/*_layer_*.json`` against ``mixed/*_joint_*.json``: times, Spearman correlation of the per-layer traces,
bits in common), and the forward FLOPs per 30-frame 64x44 sequence of the full-size recipes' models (counted on the
CPU with ``torch.utils.flop_counter.FlopCounterMode``), against which the step-time ratios read. Writes ``--out``
(never over an existing file).

    python scripts/device_summary.py results/device/h200_2026-12-04/run1 [run2 ...] --out results/device/x.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import spearmanr

from qgait.engine.train_log import median_sec_per_iter, read_train_log, window_times

PARTS = ("fp_probe", "fp", "w4a4", "dgv2", "gaitkd")
FLOP_RECIPES = ("gaitbase_casiab", "deepgaitv2_casiab")  # the models of the parts fp and dgv2


def forward_gflops(recipe: str, frames: int = 30) -> float:
    """Forward GFLOPs (2 per multiply-add) of ``recipe``'s inference model on one ``frames``-frame sequence."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from qgait.config import load_config
    from qgait.models import build_model

    cfg = load_config(recipe)
    model = build_model(cfg.model.name, **cfg.model.args).eval()
    x = torch.rand(1, frames, *cfg.data.input_size).round()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def step_times(log: Path) -> dict:
    """Per stage: logged windows, last iteration, median s/iteration over the windows after the first."""
    rows = read_train_log(log)
    out: dict[str, dict] = {}
    for stage in dict.fromkeys(r.get("stage", "train") for r in rows):
        rs = [r for r in rows if r.get("stage", "train") == stage]
        out[stage] = {"iterations": rs[-1]["iteration"], "windows": len(rs),
                      "median_s_per_iter": round(median_sec_per_iter(window_times(rs), skip_first=True), 4),
                      "last_loss": round(rs[-1]["loss/total"], 4)}
    return out


def rank1(d: dict) -> dict:
    return {k: round(v, 2) for k, v in d.items() if k in ("NM", "BG", "CL", "mean")}


def mixed(folder: Path) -> dict | None:
    lay, joint = sorted(folder.glob("*_layer_*.json")), sorted(folder.glob("*_joint_*.json"))
    if not lay or not joint:
        return None
    L, J = json.loads(lay[0].read_text()), json.loads(joint[0].read_text())
    wl = [x["weight_trace"]["average"] for x in L["layers"]]
    wj = [x["weight_trace"]["average"] for x in J["layers"]]
    al = [x["act_trace"]["trace"] for x in L["layers"] if x["act_trace"]]
    aj = [x["act_trace"]["trace"] for x in J["layers"] if x["act_trace"]]
    se = {k: statistics.median(x["weight_trace"]["average_stderr"] / x["weight_trace"]["average"]
                               for x in R["layers"]) for k, R in (("layer", L), ("joint", J))}
    same = {k: sum(L["allocations"][k]["bit_map"][n] == J["allocations"][k]["bit_map"][n]
                   for n in L["allocations"][k]["bit_map"]) for k in ("w3a3_size", "w3a3_size_bops")}
    return {
        "device": L.get("device"), "settings": L["settings"], "layers": len(wl),
        "seconds": {"layer": L["seconds"], "joint": J["seconds"]},
        "spearman_layer_vs_joint": {"weight_trace": round(float(spearmanr(wl, wj).statistic), 3),
                                    "act_trace": round(float(spearmanr(al, aj).statistic), 3)},
        "median_relative_stderr_weight_trace": {k: round(v, 3) for k, v in se.items()},
        "allocation_bits_in_common": {k: f"{v}/{len(wl)}" for k, v in same.items()},
        "records": [lay[0].name, joint[0].name],
    }


def summarise(run: Path) -> dict:
    res: dict = {"folder": run.name}
    if (run / "machine.txt").is_file():
        res["machine"] = (run / "machine.txt").read_text().strip().splitlines()
    res["steps"] = {p: step_times(run / p / "train_log.jsonl") for p in PARTS
                    if (run / p / "train_log.jsonl").is_file()}
    evals = {}
    for p in PARTS:
        s = run / p / "summary.json"
        if s.is_file():
            d = json.loads(s.read_text())
            if "eval" in d:
                evals[p] = rank1(d["eval"])
            for st, v in (d.get("stages") or {}).items():
                if isinstance(v, dict) and "mean" in v:
                    evals[f"{p}:{st}"] = rank1(v)
    for r in sorted(run.glob("*_eval/results.json")):
        d = json.loads(r.read_text())
        evals[r.parent.name] = rank1({**{k: v["rank-1"] for k, v in d["sets"].items()}, "mean": d["mean"]})
    res["rank1"] = evals
    fp = res["steps"].get("fp", {}).get("train", {}).get("median_s_per_iter")
    if fp:
        res["ratio_to_fp_step"] = {f"{p}:{st}": round(v["median_s_per_iter"] / fp, 2)
                                   for p, sts in res["steps"].items() if p not in ("fp", "fp_probe")
                                   for st, v in sts.items()}
    m = mixed(run / "mixed")
    if m:
        res["mixed_precision"] = m
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="unpacked run folders of scripts/device_check.sh")
    ap.add_argument("--out", type=Path, required=True, help="JSON to write (refused if it exists)")
    a = ap.parse_args()
    if a.out.exists():
        print(f"error: {a.out} exists; name another file", file=sys.stderr)
        return 1
    out = {"source": "scripts/device_check.sh", "command": "python scripts/device_summary.py "
           + " ".join(sys.argv[1:]), "runs": [summarise(r) for r in a.runs],
           "forward_gflops_per_30_frame_sequence": {r: round(forward_gflops(r), 1) for r in FLOP_RECIPES}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
