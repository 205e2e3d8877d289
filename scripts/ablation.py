"""Run the QGait ablation (issue 3) on the CPU recipe and write its table.

Every config in ``results/ablation/configs/`` (in the order of ``ORDER``) is run with ``qgait quantize`` from
the same full-precision checkpoint (default: ``zoo/gaitbase_casiab_cpu/model.pt``) into
``runs/ablation/<name>/``; its ``summary.json`` is copied to ``results/ablation/<name>.json`` and the table
``results/ablation/README.md`` is rewritten after each run. The run's quantized inference model (``model.pt``,
weights only, about 2 MB) is kept with its config and summary in ``zoo/ablation/<name>/``, so that export and
parity work starts from it without retraining. Finished runs are skipped, unfinished ones resume mid-stage, so the
script can be stopped and started again.

    python scripts/ablation.py [--only lsq_w4a4,qgait_w4a4] [--from CKPT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from qgait.evaluation.report import rank1_row

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "ablation"
ZOO = REPO / "zoo" / "ablation"
ZOO_LIMIT_BYTES = 5 * 2**20  # zoo/ holds CPU-recipe checkpoints under 5 MB only
ORDER = [
    "ptq_w8a8", "ptq_w4a4", "lsq_w8a8", "lsq_w4a4", "soft_from_start_w4a4", "two_stage_w4a4", "lsq_idc_w4a4",
    "qgait_w8a8", "qgait_w4a4", "qgait_w3a3", "lsq_w3a3", "lsq_w3a3_400", "qgait_w4a4_idc10", "qgait_w4a4_idc100",
    "qgait_w4a4_output_quant", "qgait_w4a4_output_quant_soft_outputs", "lsq_w4a4_seed1", "qgait_w4a4_seed1",
]
ROWS = {  # what each run is, for the table
    "ptq_w8a8": "PTQ (MSE calibration) W8A8", "ptq_w4a4": "PTQ (MSE calibration) W4A4",
    "lsq_w8a8": "LSQ (STE) W8A8", "lsq_w4a4": "LSQ (STE) W4A4",
    "soft_from_start_w4a4": "soft quantizer from the start W4A4", "two_stage_w4a4": "two-stage, no IDC W4A4",
    "lsq_idc_w4a4": "LSQ + IDC W4A4", "qgait_w8a8": "QGait (two-stage + IDC) W8A8",
    "qgait_w4a4": "QGait (two-stage + IDC) W4A4", "qgait_w3a3": "QGait (two-stage + IDC) W3A3",
    "lsq_w3a3": "LSQ (STE) W3A3",
    "lsq_w3a3_400": "diagnostic: LSQ (STE) W3A3, 400 iterations (= QGait W3A3's stage 1 without IDC)",
    "qgait_w4a4_idc10": "QGait W4A4, IDC weight 10",
    "qgait_w4a4_idc100": "QGait W4A4, IDC weight 100",
    "qgait_w4a4_output_quant": "QGait W4A4 + output quantizers on the residual operands (STE in stage 2)",
    "qgait_w4a4_output_quant_soft_outputs": "QGait W4A4 + output quantizers, soft in stage 2 (diverges)",
    "lsq_w4a4_seed1": "LSQ (STE) W4A4, seed 1", "qgait_w4a4_seed1": "QGait (two-stage + IDC) W4A4, seed 1",
}
DIAGNOSTIC = {"lsq_w3a3_400": 400}
"""Runs outside the equal-budget comparison, with their iteration budget: they explain a row, they are not a method."""


def final_row(summary: dict) -> dict:
    stages = summary["stages"]
    for key in ("final", "stage2", "stage1"):
        if key in stages:
            return stages[key]
    raise KeyError("no evaluated stage in summary")


def write_table(fp: dict) -> None:
    lines = ["# QGait ablation on CASIA-B (CPU recipe, test subjects 075-124)", "",
             "Rank-1 (%) excluding identical views. All runs start from the same full-precision checkpoint",
             "(`zoo/gaitbase_casiab_cpu/model.pt`) and, except PTQ, train for the same number of iterations.",
             "Regenerate with `python scripts/ablation.py` (configs in `configs/`, run summaries beside this file).", "",
             "**Superseded for claims about components.** These rows are single runs whose schedules differ (LSQ "
             "rows 450 iterations at lr 0.01, two-stage rows 300), so they measure schedules as much as methods. "
             "The fair protocol (one schedule per comparison, a shared stage-1 start, 3 seeds, confidence "
             "intervals) is in docs/lowbit.md and its tables in results/lowbit/README.md.", "",
             "The stage-1 column is the mean rank-1 of a two-stage run after its LSQ stage (same run, evaluated "
             "between the stages).", "",
             "| method | NM | BG | CL | mean | stage 1 mean | iterations |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| FP32 | {fp['NM']:.1f} | {fp['BG']:.1f} | {fp['CL']:.1f} | {fp['mean']:.1f} | | - |"]
    for name in ORDER:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            lines.append(f"| {ROWS[name]} | not run yet | | | | | |")
            continue
        s = json.loads(path.read_text())
        r = final_row(s)
        iters = s.get("iterations", "-")
        st1 = s["stages"].get("stage1") if "stage2" in s["stages"] else None
        st1 = f"{st1['mean']:.1f}" if st1 else ""
        lines.append(f"| {ROWS[name]} | {r['NM']:.1f} | {r['BG']:.1f} | {r['CL']:.1f} | {r['mean']:.1f} | {st1} "
                     f"| {iters} |")
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")


def keep_checkpoint(name: str, run_dir: Path, summary: Path) -> Path | None:
    """Copy ``run_dir/model.pt`` (+ ``config.yaml``, the summary as ``results.json``) to ``zoo/ablation/<name>/``;
    skipped (returns ``None``) when the run wrote no model (PTQ writes one too) or it is over the zoo's 5 MB."""
    model = run_dir / "model.pt"
    if not model.is_file() or model.stat().st_size > ZOO_LIMIT_BYTES:
        return None
    dest = ZOO / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, dest / "model.pt")
    if (run_dir / "config.yaml").is_file():
        shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    shutil.copy(summary, dest / "results.json")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="fp", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt")
    ap.add_argument("--fp-results", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "results.json")
    ap.add_argument("--only", help="comma-separated run names")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "ablation")
    a = ap.parse_args()
    fp_res = json.loads(a.fp_results.read_text())
    fp = rank1_row(fp_res)
    names = a.only.split(",") if a.only else ORDER
    for name in names:
        out = RESULTS / f"{name}.json"
        if out.is_file():
            continue
        cfg = RESULTS / "configs" / f"{name}.yaml"
        run_dir = a.runs / name
        cmd = [sys.executable, "-m", "qgait.cli", "quantize", str(cfg), "--from", str(a.fp), "--output-dir",
               str(run_dir), "--quiet", "--fp-results", str(a.fp_results)]
        print("running", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["command"] = f"qgait quantize results/ablation/configs/{name}.yaml --from {a.fp.relative_to(REPO)}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
        png = run_dir / "interclass_distances.png"
        if png.is_file():
            shutil.copy(png, RESULTS / f"{name}_interclass_distances.png")
        keep_checkpoint(name, run_dir, out)
        write_table(fp)
    write_table(fp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
