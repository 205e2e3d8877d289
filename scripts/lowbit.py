"""The low-bit accuracy study (issue 13) under the fair protocol of docs/lowbit.md: run it, and regenerate its
tables from the committed JSON.

    python scripts/lowbit.py run [--setting w3a3] [--seeds 0,1,2] [--rows lsq,soft_dsq]   # resumable
    python scripts/lowbit.py table                # README and the batch-norm re-estimation table from the JSON

A *setting* (bit width) is one comparison: every row trains the same schedule (``_schedule.yaml`` of the setting:
iterations at each learning rate), and every row except those in ``own_stage1`` starts stage 2 from the control
row's stage-1 checkpoint of the same seed (``qgait quantize --stage1-from``), so that only the component differs.
Runs go to ``runs/lowbit/<setting>/seed<k>/<row>/``; each finished run's evaluation (final model, with the
per-subject counts the bootstrap needs and the embedding diagnostics) is copied to
``results/lowbit/<setting>/<row>_seed<k>.json``; the control's stage-1 training checkpoint (the shared start) is
kept in ``zoo/lowbit/<setting>/seed<k>/stage1_last.pt`` and the key rows' models beside it, so that later sittings
continue without retraining. The table (``results/lowbit/README.md``) has, per row, the mean and standard deviation
over seeds, the paired difference to the control with its standard error, and a test-subject bootstrap 95%
confidence interval for it (:mod:`qgait.evaluation.stats`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _tables import paired_cells  # scripts/_tables.py

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "lowbit"
CONFIGS = RESULTS / "configs"
ZOO = REPO / "zoo" / "lowbit"
FP_REL = "zoo/gaitbase_casiab_cpu/model.pt"
W05_REL = "zoo/gaitbase_casiab_cpu_w05/model.pt"  # the GaitKD teacher (issue 14): GaitBase at width 0.5
# the CPU recipe's student distilled with GaitKD from that teacher, one per seed, and its evaluation (issue 14)
KD_START = ("zoo/distill/seed{seed}/gaitkd.pt", "results/distill/gaitkd_seed{seed}.json")
# The tail of every `*_from_kd` row's label: what differs from the row it copies.
FROM_KD = ("quantizing the seed's GaitKD-distilled FP student (`zoo/distill/seed<k>/gaitkd.pt`) instead of the zoo "
           "FP model, own stage 1")
FP_CKPT = REPO / FP_REL
FP_RESULTS = REPO / "zoo" / "gaitbase_casiab_cpu" / "results.json"
ZOO_LIMIT_BYTES = 5 * 2**20
SETS = ("NM", "BG", "CL", "mean")


@dataclass(frozen=True)
class Setting:
    """One comparison: its control row (LSQ with the STE, whose stage 1 every other row shares), its rows in run
    order with their labels, the seeds, the rows a claim rests on (3 seeds at least), and rows that train their
    own stage 1 (a component active in stage 1: same schedule, no shared start)."""

    title: str
    control: str
    rows: dict[str, str]
    seeds: tuple[int, ...] = (0, 1, 2)
    key_rows: tuple[str, ...] = ()
    own_stage1: frozenset[str] = field(default_factory=frozenset)
    teachers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # row -> checkpoints (repo-relative)
    comparisons: tuple[tuple[str, str], ...] = ()  # (row, baseline): differences between rows, seeds paired
    reference: bool = False  # the FP reference (quant.fp_reference): every other setting's rows are compared with it
    # row -> (FP checkpoint, its evaluation JSON), repo-relative templates with {seed}: rows that quantize another FP
    # model than the zoo's (a seed's own start, e.g. its GaitKD-distilled student); own_stage1 by necessity
    starts: dict[str, tuple[str, str]] = field(default_factory=dict)


SETTINGS: dict[str, Setting] = {
    "w3a3": Setting(
        title="W3A3 (the hard setting)",
        control="lsq",
        rows={
            "lsq": "LSQ (STE), the control",
            "soft_dsq_ste_step": "soft, alpha 1 -> 3, LSQ step gradient",
            "idc_global_w30": "IDC, one normalisation across parts, weight 30, stage 2",
            "idd_w300": "IDD (FP neighbour distribution, tau 0.1), weight 300, stage 2",
            "soft_qgait": "soft quantizer, alpha 2 -> 10 (methods.md 1.3)",
            "idc_part_w30": "IDC per-part normalised, weight 30, stage 2",
            "soft_dsq": "soft quantizer, alpha 1 -> 3 (DSQ's range)",
            "idc_none_w001": "IDC on raw distances, weight 0.01, stage 2",
            "soft_dsq_acts": "soft on activations only, alpha 1 -> 3, LSQ step gradient",
            "soft_dsq_weights": "soft on weights only, alpha 1 -> 3, LSQ step gradient",
            "idc_part": "IDC per-part normalised, weight 1 (methods.md 1.5), stage 2",
            "kd_s2": "GaitKD from the FP model (part KL T 4 + AB), stage 2",
            "kd_both": "GaitKD from the FP model (part KL T 4 + AB), both stages",
            "idd_both_w300": "IDD weight 300, both stages",
            "mixed_lcpaq": "mixed precision (LCPAQ) at uniform W3A3's size and BOPs, own stage 1",
            "mixed_hessian": "mixed precision, Hessian-only (HAWQ-style), same size and BOPs, own stage 1",
            "mixed_random": "mixed precision, random allocation, same size and BOPs, own stage 1",
            "lsq_stem8": "uniform W3A3 with the stem's weights at 8 bits (LCPAQ's stem choice alone), own stage 1",
            "lsq_stem8_fc8": "uniform W3A3 with the stem's weights and the part FC's input at 8 bits (LCPAQ's two "
                             "8-bit choices alone), own stage 1",
            "mixed_lcpaq_kd": "mixed_lcpaq + GaitKD from the FP model (part KL T 4 + AB), both stages, own stage 1",
            "mixed_lcpaq_kd_w05": "mixed_lcpaq + GaitKD from the width-0.5 GaitBase (78.4; part KL T 4 + AB), both "
                                  "stages, own stage 1",
            "mixed_lcpaq_from_kd": f"mixed_lcpaq {FROM_KD}",
            "lsq_from_kd": f"LSQ {FROM_KD}",
        },
        key_rows=("lsq", "mixed_lcpaq", "mixed_lcpaq_from_kd", "lsq_from_kd"),
        own_stage1=frozenset({"kd_both", "idd_both_w300", "mixed_lcpaq", "mixed_hessian", "mixed_random",
                              "lsq_stem8", "lsq_stem8_fc8", "mixed_lcpaq_kd", "mixed_lcpaq_kd_w05",
                              "mixed_lcpaq_from_kd", "lsq_from_kd"}),
        teachers={"kd_s2": (FP_REL,), "kd_both": (FP_REL,), "mixed_lcpaq_kd": (FP_REL,),
                  "mixed_lcpaq_kd_w05": (W05_REL,)},
        comparisons=(("mixed_lcpaq", "mixed_random"), ("mixed_lcpaq", "mixed_hessian"),
                     ("mixed_hessian", "mixed_random"), ("mixed_lcpaq", "lsq_stem8"), ("mixed_hessian", "lsq_stem8"),
                     ("lsq_stem8_fc8", "lsq_stem8"), ("mixed_lcpaq", "lsq_stem8_fc8"), ("mixed_lcpaq_kd", "mixed_lcpaq"),
                     ("mixed_lcpaq_kd_w05", "mixed_lcpaq"), ("mixed_lcpaq_kd_w05", "mixed_lcpaq_kd"),
                     ("mixed_lcpaq_from_kd", "mixed_lcpaq"), ("lsq_from_kd", "lsq"),
                     ("mixed_lcpaq_from_kd", "lsq_from_kd")),
        starts={"mixed_lcpaq_from_kd": KD_START, "lsq_from_kd": KD_START},
    ),
    "w4a4": Setting(
        title="W4A4 (an easy setting)",
        control="lsq",
        rows={"lsq": "LSQ (STE), the control",
              "lsq_outq": "LSQ + output quantizers on the residual operands (all-int8 export), own stage 1",
              "lsq_outq8": "LSQ + 8-bit output quantizers on the residual operands (all-int8 export), own stage 1",
              "mixed_lcpaq": "mixed precision (LCPAQ) at uniform W4A4's size and BOPs, own stage 1",
              "mixed_hessian": "mixed precision, Hessian-only (HAWQ-style), same size and BOPs, own stage 1",
              "mixed_random": "mixed precision, random allocation, same size and BOPs, own stage 1",
              "lsq_cl": "LSQ with a channels-last student (1.5x faster step; less exact batch norm), own stage 1",
              "lsq_from_kd": f"LSQ {FROM_KD}",
              "mixed_lcpaq_from_kd": f"mixed_lcpaq {FROM_KD}"},
        key_rows=("lsq", "lsq_cl", "lsq_from_kd", "mixed_lcpaq_from_kd"),
        own_stage1=frozenset({"lsq_outq", "lsq_outq8", "mixed_lcpaq", "mixed_hessian", "mixed_random", "lsq_cl",
                              "lsq_from_kd", "mixed_lcpaq_from_kd"}),
        comparisons=(("mixed_lcpaq", "mixed_random"), ("mixed_lcpaq", "mixed_hessian"), ("lsq_from_kd", "lsq"),
                     ("mixed_lcpaq_from_kd", "mixed_lcpaq"), ("mixed_lcpaq_from_kd", "lsq_from_kd")),
        starts={"lsq_from_kd": KD_START, "mixed_lcpaq_from_kd": KD_START},
    ),
    "w8a8": Setting(
        title="W8A8 (an easy setting)",
        control="lsq",
        rows={"lsq": "LSQ (STE), the control"},
        key_rows=("lsq",),
    ),
    "fp": Setting(
        title="FP fine-tuned with the QAT schedule (the reference)",
        control="fp_ft",
        rows={"fp_ft": "the FP model trained on with every setting's schedule, no quantizers"},
        key_rows=("fp_ft",),
        reference=True,
    ),
}
REFERENCE = next(k for k, st in SETTINGS.items() if st.reference)


def _rel(path) -> str:
    """``path`` relative to the repository when it is inside it (the commands recorded in the JSON)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def config_path(setting: str, row: str) -> Path:
    return CONFIGS / setting / f"{row}.yaml"


def result_path(setting: str, row: str, seed: int) -> Path:
    return RESULTS / setting / f"{row}_seed{seed}.json"


# ------------------------------------------------------------------------------------------------ running
def _run_one(setting: str, row: str, seed: int, runs: Path, fp: Path, fp_results: Path) -> None:
    from qgait.evaluation.report import dumps_results

    st = SETTINGS[setting]
    out = result_path(setting, row, seed)
    if out.is_file():
        return
    run_dir = runs / setting / f"seed{seed}" / row
    fp = start_checkpoint(setting, row, seed, fp)
    cmd = [sys.executable, "-m", "qgait.cli", "quantize", str(config_path(setting, row)), "--from", str(fp),
           "--output-dir", str(run_dir), "--quiet", "--fp-results", str(fp_results), "--set", f"train.seed={seed}"]
    teachers = [REPO / t for t in st.teachers.get(row, ())]
    for t in teachers:
        cmd += ["--teacher", str(t)]
    shared = None
    if row != st.control and row not in st.own_stage1:
        shared = shared_start(setting, seed, runs)
        cmd += ["--stage1-from", str(shared)]
    print("running", " ".join(cmd), flush=True)
    # passive OpenMP waiting: on a shared 2-core machine libgomp's spin-waiting made evaluation up to 10x slower
    # (results/bench/eval_cost_*); an explicit setting in the caller's environment wins
    subprocess.run(cmd, check=True, env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ})
    summary = json.loads((run_dir / "summary.json").read_text())
    final = next(run_dir / f"{k}_results.json" for k in ("final", "stage2", "stage1")
                 if (run_dir / f"{k}_results.json").is_file())
    result = json.loads(final.read_text())
    record = {
        "setting": setting, "row": row, "seed": seed,
        "command": (f"qgait quantize {_rel(config_path(setting, row))} --from {_rel(fp)} --fp-results {_rel(fp_results)}"
                    f" --set train.seed={seed}" + "".join(f" --teacher {_rel(t)}" for t in teachers)
                    + (f" --stage1-from {_rel(shared)}" if shared else "")),
        "summary": summary, "result": result,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(dumps_results(record, indent=1) + "\n")
    tmp.replace(out)
    keep_in_zoo(setting, row, seed, run_dir)


def start_checkpoint(setting: str, row: str, seed: int, fp: Path) -> Path:
    """The FP checkpoint ``row`` quantizes for ``seed``: its own start (:attr:`Setting.starts`) or ``fp``.

    Raises:
        FileNotFoundError: the row's start is not in the repository (naming the file and what makes it).
    """
    if row not in SETTINGS[setting].starts:
        return fp
    path = REPO / SETTINGS[setting].starts[row][0].format(seed=seed)
    if not path.is_file():
        raise FileNotFoundError(f"{_rel(path)}: {setting} {row} seed {seed} starts from it; it is made by "
                                f"python scripts/distill_study.py run --rows gaitkd --seeds {seed}")
    return path


def start_result(setting: str, row: str, seed: int) -> dict | None:
    """The evaluation (``result``) of the FP model ``row`` starts from for ``seed`` (:attr:`Setting.starts`), or
    None when the row has no start of its own or that evaluation is not committed."""
    start = SETTINGS[setting].starts.get(row)
    path = REPO / start[1].format(seed=seed) if start else None
    return json.loads(path.read_text())["result"] if path is not None and path.is_file() else None


def start_label(setting: str, row: str) -> str:
    """The row's start checkpoint for any seed, as the tables name it (``zoo/distill/seed<k>/gaitkd.pt``)."""
    return f"`{SETTINGS[setting].starts[row][0].replace('{seed}', '<k>')}`"


def shared_start(setting: str, seed: int, runs: Path) -> Path:
    """The folder holding the control's finished ``stage1_last.pt`` for ``seed``: the run folder if present, else
    the zoo copy (a later sitting on a fresh machine).

    Raises:
        FileNotFoundError: the control of that seed has not run yet.
    """
    st = SETTINGS[setting]
    for d in (runs / setting / f"seed{seed}" / st.control, ZOO / setting / f"seed{seed}"):
        if (d / "stage1_last.pt").is_file():
            return d
    raise FileNotFoundError(f"{setting} seed {seed}: run the control {st.control!r} first (no stage1_last.pt)")


def keep_in_zoo(setting: str, row: str, seed: int, run_dir: Path) -> None:
    """The control's stage-1 checkpoint (the shared start) and the key rows' final models, each under 5 MB."""
    st = SETTINGS[setting]
    dest = ZOO / setting / f"seed{seed}"
    keep = []
    if row == st.control and not st.reference:  # the reference's stage 1 is the start of nothing
        keep.append((run_dir / "stage1_last.pt", dest / "stage1_last.pt"))
    if row in st.key_rows:
        keep.append((run_dir / "model.pt", dest / f"{row}.pt"))
    for src, dst in keep:
        if src.is_file() and src.stat().st_size <= ZOO_LIMIT_BYTES:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)


def run_ptq(bits: str, runs: Path, fp: Path, fp_results: Path) -> Path:
    """The PTQ probe of one bit pair (``results/lowbit/configs/ptq_<bits>.yaml``: MSE-calibrated steps, no
    training) into ``results/lowbit/ptq_<bits>.json``; skipped when that file exists. Returns its path.

    Raises:
        FileNotFoundError: no probe config for ``bits``.
    """
    from qgait.evaluation.report import dumps_results

    cfg = CONFIGS / f"ptq_{bits}.yaml"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: no PTQ probe config for {bits!r}")
    out = RESULTS / f"ptq_{bits}.json"
    if out.is_file():
        return out
    run_dir = runs / f"ptq_{bits}"
    cmd = [sys.executable, "-m", "qgait.cli", "quantize", str(cfg), "--from", str(fp), "--output-dir", str(run_dir),
           "--quiet", "--fp-results", str(fp_results)]
    print("running", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ})
    final = next(run_dir / f"{k}_results.json" for k in ("final", "stage2", "stage1", "calib")
                 if (run_dir / f"{k}_results.json").is_file())
    record = {"row": f"ptq_{bits}",
              "command": f"qgait quantize {_rel(cfg)} --from {_rel(fp)} --fp-results {_rel(fp_results)}",
              "summary": json.loads((run_dir / "summary.json").read_text()),
              "result": json.loads(final.read_text())}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(dumps_results(record, indent=1) + "\n")
    tmp.replace(out)
    return out


# ------------------------------------------------------------------------------------------------ tables
def load_runs(setting: str) -> dict[str, dict[int, dict]]:
    """``{row: {seed: record}}`` from the committed JSON of ``setting``."""
    out: dict[str, dict[int, dict]] = {}
    for row in SETTINGS[setting].rows:
        for path in sorted((RESULTS / setting).glob(f"{row}_seed*.json")):
            rec = json.loads(path.read_text())
            if rec.get("row") == row:
                out.setdefault(row, {})[int(rec["seed"])] = rec
    return out


def _rank1(rec: dict) -> dict[str, float]:
    res = rec["result"]
    return {k: v["rank-1"] for k, v in res["sets"].items()} | {"mean": res["mean"]}


def _fmt(x: float | None, nd: int = 1, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _drift(rec: dict, fp_res: dict | None) -> dict | None:
    """The record's ``embedding_drift``, or one computed from its ``embedding_stats`` and the FP model's."""
    from qgait.evaluation.embedding_stats import embedding_drift

    res = rec["result"]
    if res.get("embedding_drift"):
        return res["embedding_drift"]
    if fp_res and fp_res.get("embedding_stats") and res.get("embedding_stats"):
        return embedding_drift(res["embedding_stats"], fp_res["embedding_stats"])
    return None


def setting_table(setting: str, fp_res: dict | None, n_boot: int = 2000) -> list[str]:
    from qgait.evaluation.stats import seed_stats, subject_bootstrap

    fp = ({k: v["rank-1"] for k, v in fp_res["sets"].items()} | {"mean": fp_res["mean"]}) if fp_res else None

    st = SETTINGS[setting]
    runs = load_runs(setting)
    ref = {} if st.reference else load_runs(REFERENCE).get(SETTINGS[REFERENCE].control, {})
    about = ("the QAT stages without quantizers (`quant.fp_reference`): what the FP model reaches with the same "
             "600 iterations" if st.reference else "rows other than the control start stage 2 from the control's "
             "stage-1 checkpoint of the same seed")
    lines = [f"## {st.title}", "",
             f"Schedule: `results/lowbit/configs/{setting}/_schedule.yaml`; control `{st.control}`; {about}.", "",
             "| row | seeds | NM | BG | CL | mean (+- sd) | vs control: diff +- se | bootstrap 95% CI | "
             "vs FP [95% CI] | vs FP fine-tuned: diff +- se [95% CI] | norm ratio (spread) | inter-class ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if fp is not None:
        lines.append(f"| FP32 (zoo) | - | {fp['NM']:.1f} | {fp['BG']:.1f} | {fp['CL']:.1f} | {fp['mean']:.1f} "
                     "| | | | | 1 | 1 |")
    ctrl = runs.get(st.control, {})
    for row, label in st.rows.items():
        by_seed = runs.get(row, {})
        if not by_seed:
            lines.append(f"| {label} (`{row}`) | 0 | not run yet | | | | | | | | | |")
            continue
        seeds = sorted(by_seed)
        r1 = {k: seed_stats([_rank1(by_seed[s])[k] for s in seeds]) for k in SETS}
        m = r1["mean"]
        mean_txt = f"{m['mean']:.2f}" + (f" +- {m['std']:.2f}" if m["std"] is not None else "")
        diff_txt = ci_txt = ""
        common = [s for s in seeds if s in ctrl]
        if row != st.control and common:
            diff_txt, ci_txt = _diff_cells(ctrl, by_seed, common, n_boot)
        vs_fp = _fmt(m["mean"] - fp["mean"], 2, True) if fp else "-"
        if fp_res and "per_subject" in fp_res:
            b = subject_bootstrap([fp_res], [by_seed[s]["result"] for s in seeds], n_boot=n_boot)
            vs_fp += f" [{b['mean']['ci_low']:+.2f}, {b['mean']['ci_high']:+.2f}]"
        with_ref = [s for s in seeds if s in ref]
        vs_ref = "-"
        if with_ref:
            d, ci = _diff_cells(ref, by_seed, with_ref, n_boot)
            n = len(with_ref)
            vs_ref = f"{d} {ci}" + (f" ({n} seed{'s' if n > 1 else ''})" if n != len(seeds) else "")
        drift = [d for d in (_drift(by_seed[s], fp_res) for s in seeds) if d]
        if drift:
            nr = sum(d["part_norm_ratio_stats"]["mean"] for d in drift) / len(drift)
            ns = sum(d["part_norm_ratio_stats"]["spread"] for d in drift) / len(drift)
            ir = sum(d["interclass_ratio_stats"]["mean"] for d in drift) / len(drift)
            drift_txt = f"{nr:.2f} ({ns:.2f}) | {ir:.2f}"
        else:
            drift_txt = "- | -"
        lines.append(f"| {label} (`{row}`) | {len(seeds)} | {r1['NM']['mean']:.1f} | {r1['BG']['mean']:.1f} | "
                     f"{r1['CL']['mean']:.1f} | {mean_txt} | {diff_txt} | {ci_txt} | {vs_fp} | {vs_ref} | {drift_txt} |")
    lines += ["", "Columns: rank-1 (%) on CASIA-B test subjects 075-124, identical views excluded, mean over seeds "
              "(sd: sample standard deviation over seeds). *vs control*: the mean over seeds of the per-seed "
              "difference row - control, +- its standard error (seeds paired: same seed, same stage-1 checkpoint). "
              "*bootstrap 95% CI*: of the same difference, resampling test subjects (probes of 50 subjects, gallery "
              "fixed, 2,000 draws, seed 0). *norm ratio*: per-part embedding norm, quantized over FP, mean over parts "
              "(spread: max / min over parts); *inter-class ratio*: per-part mean inter-class distance, quantized "
              "over FP, mean over parts. *vs FP*: the row's seed mean minus the FP model's, with its test-subject "
              "bootstrap 95% CI. *vs FP fine-tuned*: the row minus the FP model trained on with the same schedule "
              "and seed (`fp_ft`, no quantizers: the gap quantization alone costs), seeds paired, with its "
              "bootstrap 95% CI." + (" Rows that quantize another FP model (`*_from_kd`) are compared with the zoo FP "
              "model in these columns, norm and inter-class ratios included, so they hold what distillation changed "
              "too; their own start is in the last table." if st.starts else ""), ""]
    lines += comparison_table(setting, runs, n_boot)
    lines += start_table(setting, runs, n_boot)
    return lines


def _diff_cells(base: dict[int, dict], row: dict[int, dict], seeds: list[int], n_boot: int) -> tuple[str, str]:
    """Table cells of ``row - base`` on ``seeds`` (records by seed): :func:`_tables.paired_cells`' difference and CI."""
    c = paired_cells([base[s]["result"] for s in seeds], [row[s]["result"] for s in seeds], n_boot)
    return c["diff"], c["ci"]


def comparison_table(setting: str, runs: dict[str, dict[int, dict]], n_boot: int = 2000) -> list[str]:
    """The setting's between-row differences (:attr:`Setting.comparisons`), each on the seeds both rows have:
    mean paired difference +- its standard error and a test-subject bootstrap 95% CI, as in the main table."""
    st = SETTINGS[setting]
    if not st.comparisons:
        return []
    lines = ["Between rows (seeds paired: same seed, each row's own run):", "",
             "| row | baseline | seeds | diff +- se | bootstrap 95% CI | NM / BG / CL diff |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row, base in st.comparisons:
        a, b = runs.get(base, {}), runs.get(row, {})
        common = sorted(s for s in b if s in a)
        if not common:
            lines.append(f"| `{row}` | `{base}` | 0 | not run yet | | |")
            continue
        c = paired_cells([a[s]["result"] for s in common], [b[s]["result"] for s in common], n_boot)
        lines.append(f"| `{row}` | `{base}` | {len(common)} | {c['diff']} | {c['ci']} | {c['sets']} |")
    return lines + [""]


def start_table(setting: str, runs: dict[str, dict[int, dict]], n_boot: int = 2000) -> list[str]:
    """Rows that quantize another FP model (:attr:`Setting.starts`) against that model, seeds paired: what
    quantization costs the model it starts from."""
    st = SETTINGS[setting]
    if not st.starts:
        return []
    lines = ["Rows that quantize another FP model, against that model (seeds paired: each seed's own start):", "",
             "| row | start | seeds | start's mean rank-1 | diff +- se | bootstrap 95% CI | NM / BG / CL diff |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in st.starts:
        by_seed = runs.get(row, {})
        start = {s: r for s in sorted(by_seed) if (r := start_result(setting, row, s)) is not None}
        common = sorted(start)
        name = start_label(setting, row)
        if not common:
            lines.append(f"| `{row}` | {name} | 0 | | not run yet | | |")
            continue
        c = paired_cells([start[s] for s in common], [by_seed[s]["result"] for s in common], n_boot)
        mean = sum(start[s]["mean"] for s in common) / len(common)
        lines.append(f"| `{row}` | {name} | {len(common)} | {mean:.2f} | {c['diff']} | {c['ci']} | {c['sets']} |")
    return lines + [""]


def write_tables(out: Path | None = None) -> Path:
    """Regenerate ``results/lowbit/README.md`` (or ``out``) from the committed JSON. Returns its path."""
    fp_res = json.loads(FP_RESULTS.read_text()) if FP_RESULTS.is_file() else None
    lines = ["# Low-bit accuracy under the fair protocol (issue 13)", "",
             "Generated by `python scripts/lowbit.py table` from the JSON beside this file; the protocol is in "
             "docs/lowbit.md. Every row of a table has the same schedule and starts from "
             "`zoo/gaitbase_casiab_cpu/model.pt`, except the rows `*_from_kd`, which quantize the GaitKD-distilled "
             "student of their seed.", ""]
    for setting in SETTINGS:
        lines += setting_table(setting, fp_res)
    out = out or RESULTS / "README.md"
    out.write_text("\n".join(lines))
    return out


def write_bn_table() -> Path:
    """Regenerate the batch-norm re-estimation table (``results/lowbit/bn_reestimate/README.md``, from
    ``scripts/bn_reestimate.py``'s JSON), so that ``table`` regenerates every table of the study. Returns its path."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("bn_reestimate_script", REPO / "scripts" / "bn_reestimate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the table; the path is enough here
        return mod.table()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the missing rows (control first), resumable")
    r.add_argument("--setting", default="w3a3", choices=sorted(SETTINGS))
    r.add_argument("--seeds", help="comma-separated (default: the setting's seeds)")
    r.add_argument("--rows", help="comma-separated row names (default: all, in order)")
    r.add_argument("--runs", type=Path, default=REPO / "runs" / "lowbit")
    r.add_argument("--from", dest="fp", type=Path, default=FP_CKPT,
                   help="the FP checkpoint to quantize (rows with their own start, Setting.starts, use theirs)")
    r.add_argument("--fp-results", type=Path, default=FP_RESULTS)
    sub.add_parser("table", help="regenerate results/lowbit/README.md from the committed JSON")
    q = sub.add_parser("ptq", help="a PTQ probe (no training) of one bit pair: results/lowbit/ptq_<bits>.json")
    q.add_argument("bits", help="e.g. w4a4 (needs results/lowbit/configs/ptq_<bits>.yaml)")
    q.add_argument("--runs", type=Path, default=REPO / "runs" / "lowbit")
    q.add_argument("--from", dest="fp", type=Path, default=FP_CKPT)
    q.add_argument("--fp-results", type=Path, default=FP_RESULTS)
    a = ap.parse_args()
    if a.cmd == "table":
        print(write_tables())
        print(write_bn_table())
        return 0
    if a.cmd == "ptq":
        print(run_ptq(a.bits, a.runs, a.fp, a.fp_results))
        return 0
    st = SETTINGS[a.setting]
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else list(st.seeds)
    rows = a.rows.split(",") if a.rows else list(st.rows)
    unknown = [x for x in rows if x not in st.rows]
    if unknown:
        ap.error(f"unknown rows {unknown}; {a.setting} has {list(st.rows)}")
    for seed in seeds:
        for row in rows:
            _run_one(a.setting, row, seed, a.runs, a.fp, a.fp_results)
            write_tables()
    return 0


if __name__ == "__main__":
    sys.exit(main())
