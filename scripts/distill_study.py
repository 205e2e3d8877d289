"""The distillation table of issue 14 (deliverable 5) on CASIA-B under the fair protocol of docs/lowbit.md: run it,
and regenerate its table from the committed JSON.

    python scripts/distill_study.py run [--rows alone,gaitkd] [--seeds 0,1,2]   # resumable, one run at a time
    python scripts/distill_study.py table                                       # results/distill/README.md

The student is the CPU recipe's model (``configs/gaitbase_casiab_cpu.yaml``) trained from scratch: every row
trains the one schedule of ``results/distill/configs/_schedule.yaml`` (the recipe's: 3000 iterations, lr 0.1,
x0.1 at 2000 and 2700, P x K 8 x 8, 16 frames) and differs from the control ``alone`` in its ``distill`` section
and its teachers only (``tests/test_distill_protocol.py``). Rows of the same seed share the start: ``train.seed``
seeds the student's initialisation and the batch sampling, and the teachers are loaded before the seed is set,
so they change neither. Teachers are fixed checkpoints in ``zoo/`` (:data:`TEACHERS`); a row whose teacher is
missing is refused before anything runs, with the command that trains it.

Runs go to ``runs/distill/seed<k>/<row>/`` (``qgait train`` for ``alone``, ``qgait distill`` for the others;
re-running resumes a run from its ``last.pt``; the teachers' outputs are cached in ``stores/teacher_cache/``, so
that the rows of a seed after the first read them instead of running the teacher); each finished run's final
evaluation (with the per-subject counts the bootstrap needs) is copied atomically, with the command that made it
and its teachers' hashes, to ``results/distill/<row>_seed<k>.json``, and the models of ``alone`` and ``gaitkd``
to ``zoo/distill/seed<k>/<row>.pt``. The table
has, per row, the mean and standard deviation over seeds, the paired difference to ``alone`` with its standard
error, and a test-subject bootstrap 95% confidence interval for it (:mod:`qgait.evaluation.stats`), and the
between-row differences the issue's claims rest on (AB against feature MSE, GaitKD against each of its parts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _tables import paired_cells  # scripts/_tables.py

from qgait.engine.train_log import median_sec_per_iter, read_train_log, window_times

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "distill"
CONFIGS = RESULTS / "configs"
ZOO = REPO / "zoo" / "distill"
RECIPE_RESULTS = "zoo/gaitbase_casiab_cpu/results.json"  # the CPU recipe's own model (seed 0): a reference line
ZOO_LIMIT_BYTES = 5 * 2**20
# the teachers' outputs, shared by the rows of a seed (same batches, same teacher): the first run of a seed computes
# them, the others read them back bit-identical (qgait.distill.cache; 1.2 GB per seed for the width-0.5 teacher)
TEACHER_CACHE = "stores/teacher_cache"
SETS = ("NM", "BG", "CL", "mean")
N_BOOT = 2000


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher checkpoint (repo-relative) and the recipe that trains it (``qgait train <recipe>`` writes
    ``runs/<recipe name>/model.pt``, which goes into the checkpoint's zoo folder)."""

    path: str
    recipe: str
    label: str

    def missing_message(self, rows) -> str:
        """One line: the missing file, the rows that need it, and how to make it."""
        run = f"runs/{Path(self.recipe).stem}/model.pt"
        return (f"missing teacher {self.path} (rows {', '.join(rows)}): train it with `qgait train {self.recipe}`, "
                f"then `python scripts/zoo_add.py {Path(run).parent} {Path(self.path).parent}`")


TEACHERS: dict[str, TeacherSpec] = {
    "gaitbase_w05": TeacherSpec("zoo/gaitbase_casiab_cpu_w05/model.pt", "configs/gaitbase_casiab_cpu_w05.yaml",
                                "GaitBase at width 0.5 (the student's 8 parts and 128-d embeddings)"),
    "gaitset": TeacherSpec("zoo/gaitset_casiab_cpu/model.pt", "configs/gaitset_casiab_cpu.yaml",
                           "GaitSet CPU recipe (30 parts, 128-d, no BNNeck head: no logits)"),
    "gaitbase_recipe": TeacherSpec("zoo/gaitbase_casiab_cpu/model.pt", "configs/gaitbase_casiab_cpu.yaml",
                                   "the CPU recipe's own model (the student's architecture, seed 0)"),
}


@dataclass(frozen=True)
class Study:
    """The comparison: its control, its rows in run order with their labels, the seeds of the key rows (the other
    rows run seed 0 unless ``--seeds`` says otherwise), each row's teachers (keys of :data:`TEACHERS`, in the
    order given to ``--teacher``), and the between-row differences ``(row, baseline)`` of the table."""

    control: str
    rows: dict[str, str]
    seeds: tuple[int, ...] = (0, 1, 2)
    key_rows: tuple[str, ...] = ()
    teachers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    comparisons: tuple[tuple[str, str], ...] = ()


STUDY = Study(
    control="alone",
    rows={
        "alone": "student alone (the CPU recipe), the control",
        "gaitkd": "+ GaitKD: part-wise KL (T 4) + AB",
        "kl": "+ part-wise logit KD (KL, T 4)",
        "ab": "+ AB (activation boundaries, margin 1)",
        "feature_mse": "+ feature MSE at weight 0.5, AB's gradient pull (baseline)",
        "global_kd": "+ plain KD on one logit vector (baseline, T 4)",
        "hetero": "+ AB from GaitSet (another architecture and part count)",
        "two_teachers": "+ GaitKD from two teachers (losses summed)",
        "two_teachers_ensemble": "+ GaitKD from two teachers (KL to their mean distribution)",
        "feature_mse_w1": "+ feature MSE at weight 1, the reference code's (baseline)",
        "gaitkd_int8": "+ GaitKD with the teacher's backbone in int8 (1.14x a student step, against bf16's 1.45x)",
        "gaitkd_ab_pull": "+ GaitKD with AB at 0.011, KL's pull at initialisation (diagnostic, not tuned)",
    },
    key_rows=("alone", "gaitkd", "kl", "ab", "feature_mse"),  # the claims rest on these
    teachers={
        "gaitkd": ("gaitbase_w05",), "kl": ("gaitbase_w05",), "ab": ("gaitbase_w05",),
        "feature_mse": ("gaitbase_w05",), "global_kd": ("gaitbase_w05",), "hetero": ("gaitset",),
        "two_teachers": ("gaitbase_w05", "gaitbase_recipe"),
        "two_teachers_ensemble": ("gaitbase_w05", "gaitbase_recipe"),
        "feature_mse_w1": ("gaitbase_w05",), "gaitkd_int8": ("gaitbase_w05",), "gaitkd_ab_pull": ("gaitbase_w05",),
    },
    comparisons=(("gaitkd", "kl"), ("gaitkd", "ab"), ("ab", "feature_mse"), ("kl", "global_kd"),
                 ("hetero", "ab"), ("two_teachers", "gaitkd"), ("two_teachers_ensemble", "two_teachers"),
                 ("two_teachers_ensemble", "gaitkd"), ("ab", "feature_mse_w1"), ("feature_mse_w1", "feature_mse"),
                 ("gaitkd_int8", "gaitkd"), ("gaitkd_ab_pull", "kl"), ("gaitkd_ab_pull", "gaitkd")),
)


def config_path(row: str) -> Path:
    return CONFIGS / f"{row}.yaml"


def result_path(row: str, seed: int) -> Path:
    return RESULTS / f"{row}_seed{seed}.json"


def teacher_files(row: str) -> list[str]:
    """The repo-relative teacher checkpoints of ``row``, in ``--teacher`` order (none for the control)."""
    return [TEACHERS[t].path for t in STUDY.teachers.get(row, ())]


def _rel(path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


# the rows whose models go to zoo/distill/seed<k>/ (2.1 MB each): the FP student and the distilled one a user
# starts from; the single-term rows are measurements, their runs stay in runs/distill/
ZOO_ROWS = ("alone", "gaitkd")


def log_speed(log: Path) -> dict:
    """The training speed a run's log records: ``{"sec_per_iter_median", "windows"}``, the median over its logged
    windows (each ``train.log_every`` iterations, data loading included) of seconds per iteration; empty without
    a log. Shared machines make it a bracket of a row's cost, not a benchmark (benchmarks/distill_step.py is)."""
    times = window_times(read_train_log(log))
    return {"sec_per_iter_median": round(median_sec_per_iter(times), 4), "windows": len(times)} if times else {}


# ------------------------------------------------------------------------------------------------ running
def plan(rows: list[str] | None = None, seeds: list[int] | None = None) -> list[tuple[str, int]]:
    """``(row, seed)`` in run order: seed by seed, rows in table order. Without ``seeds``: the key rows on every
    seed of the study, the others on seed 0."""
    rows = rows or list(STUDY.rows)
    out = []
    for seed in sorted(set(seeds) if seeds else set(STUDY.seeds)):
        out += [(r, seed) for r in rows if seeds or seed == 0 or r in STUDY.key_rows]
    return out


def missing_teachers(rows, root: Path | None = None) -> list[str]:
    """One message per teacher checkpoint that ``rows`` need and that is not under ``root`` (the repository)."""
    root = REPO if root is None else root
    out = []
    for key, spec in TEACHERS.items():
        users = [r for r in rows if key in STUDY.teachers.get(r, ())]
        if users and not (root / spec.path).is_file():
            out.append(spec.missing_message(users))
    return out


def command(row: str, seed: int, run_dir: Path) -> list[str]:
    """The ``qgait`` command line of one run (``qgait`` standing for ``python -m qgait.cli``)."""
    teachers = teacher_files(row)
    cmd = ["distill" if teachers else "train", _rel(config_path(row)), "--set", f"train.seed={seed}",
           "--output-dir", _rel(run_dir)]
    for t in teachers:
        cmd += ["--teacher", t]
    return cmd + (["--teacher-cache", TEACHER_CACHE] if teachers else [])


def run_one(row: str, seed: int, runs: Path) -> Path:
    """Train (or resume) one row and seed and record its evaluation; skipped when its JSON exists. Returns it.

    Raises:
        RuntimeError: the run's config changed on resume (the run no longer has the study's schedule).
    """
    from qgait.evaluation.report import dumps_results

    out = result_path(row, seed)
    if out.is_file():
        return out
    run_dir = runs / f"seed{seed}" / row
    cmd = command(row, seed, run_dir)
    print("running qgait", " ".join(cmd), flush=True)
    # passive OpenMP waiting (results/bench/eval_cost_*); an explicit setting in the caller's environment wins
    subprocess.run([sys.executable, "-m", "qgait.cli", *cmd, "--quiet"], check=True, cwd=REPO,
                   env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ})
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("config_changes_on_resume"):
        raise RuntimeError(f"{run_dir}: its config changed on resume ({summary['config_changes_on_resume']}); "
                           "start it over in a fresh folder")
    teachers_json = run_dir / "teachers.json"
    record = {
        "study": "distill", "row": row, "seed": seed, "command": "qgait " + " ".join(cmd),
        "teachers": json.loads(teachers_json.read_text()) if teachers_json.is_file() else [],
        "summary": summary, "result": json.loads((run_dir / "results.json").read_text()),
        "speed": log_speed(run_dir / "train_log.jsonl"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(dumps_results(record, indent=1) + "\n")
    tmp.replace(out)
    model = run_dir / "model.pt"
    if row in ZOO_ROWS and model.is_file() and model.stat().st_size <= ZOO_LIMIT_BYTES:
        (ZOO / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        shutil.copy(model, ZOO / f"seed{seed}" / f"{row}.pt")
    return out


@contextlib.contextmanager
def single_run_lock(runs: Path):
    """Hold ``runs/.lock`` (released when the process ends, however it ends): one study run at a time.

    Raises:
        SystemExit: another ``run`` holds it.
    """
    import fcntl

    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"distill_study: another run holds {runs / '.lock'}; one run at a time") from None
        yield


# ------------------------------------------------------------------------------------------------ table
def load_runs() -> dict[str, dict[int, dict]]:
    """``{row: {seed: record}}`` from the JSON in :data:`RESULTS`."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(RESULTS.glob("*_seed*.json")):
        rec = json.loads(path.read_text())
        if rec.get("row") in STUDY.rows:
            out.setdefault(rec["row"], {})[int(rec["seed"])] = rec
    return out


def _rank1(result: dict) -> dict[str, float]:
    return {k: result["sets"][k]["rank-1"] for k in SETS[:3]} | {"mean": result["mean"]}


def _diff(base: dict[int, dict], row: dict[int, dict]) -> dict | None:
    """``row - base`` on their common seeds (paired): ``{"n", "text" (mean +- se), "ci" (bootstrap), "sets"}``."""
    seeds = sorted(set(base) & set(row))
    if not seeds:
        return None
    c = paired_cells([base[s]["result"] for s in seeds], [row[s]["result"] for s in seeds], N_BOOT)
    return {"n": c["n"], "text": c["diff"], "ci": c["ci"], "sets": c["sets"]}


def _teacher_lines() -> list[str]:
    lines = ["| teacher | checkpoint | recipe | rank-1 NM / BG / CL / mean |", "| --- | --- | --- | --- |"]
    for key, spec in TEACHERS.items():
        res_file = REPO / Path(spec.path).parent / "results.json"
        if not (REPO / spec.path).is_file():
            score = f"not trained yet (`qgait train {spec.recipe}`)"
        elif res_file.is_file():
            score = " / ".join(f"{v:.1f}" for v in _rank1(json.loads(res_file.read_text())).values())
        else:
            score = "- (no results.json beside it)"
        lines.append(f"| {spec.label} (`{key}`) | `{spec.path}` | `{spec.recipe}` | {score} |")
    return lines


def table_lines() -> list[str]:
    from qgait.evaluation.stats import seed_stats

    runs = load_runs()
    ctrl = runs.get(STUDY.control, {})
    lines = ["# The distillation table on CASIA-B, CPU recipe (issue 14)", "",
             "Generated by `python scripts/distill_study.py table` from the JSON beside this file; how to run it: "
             "docs/distillation.md. Every row trains the CPU recipe's student from scratch with one schedule "
             "(`results/distill/configs/_schedule.yaml`: 3000 iterations, lr 0.1, x0.1 at 2000 and 2700, "
             "P x K 8 x 8, 16 frames) and differs from `alone` in its `distill` section and teachers only. Key "
             f"rows ({', '.join(f'`{r}`' for r in STUDY.key_rows)}) run seeds "
             f"{', '.join(map(str, STUDY.seeds))}; the others seed 0.", "", "Teachers:", "", *_teacher_lines(), "",
             "| row | teachers | seeds | NM | BG | CL | mean (+- sd) | vs alone: diff +- se | bootstrap 95% CI |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    recipe = REPO / RECIPE_RESULTS
    if recipe.is_file():
        r1 = _rank1(json.loads(recipe.read_text()))
        lines.append(f"| CPU recipe as in the zoo (seed 0, reference) | - | 1 | {r1['NM']:.1f} | {r1['BG']:.1f} | "
                     f"{r1['CL']:.1f} | {r1['mean']:.2f} | | |")
    for row, label in STUDY.rows.items():
        teachers = ", ".join(f"`{t}`" for t in STUDY.teachers.get(row, ())) or "-"
        by_seed = runs.get(row, {})
        if not by_seed:
            lines.append(f"| {label} (`{row}`) | {teachers} | 0 | not run yet | | | | | |")
            continue
        st = {k: seed_stats([_rank1(rec["result"])[k] for rec in by_seed.values()]) for k in SETS}
        mean = f"{st['mean']['mean']:.2f}" + ("" if st["mean"]["std"] is None else f" +- {st['mean']['std']:.2f}")
        d = _diff(ctrl, by_seed) if row != STUDY.control else None
        lines.append(f"| {label} (`{row}`) | {teachers} | {len(by_seed)} | {st['NM']['mean']:.1f} | "
                     f"{st['BG']['mean']:.1f} | {st['CL']['mean']:.1f} | {mean} | {d['text'] if d else ''} | "
                     f"{d['ci'] if d else ''} |")
    lines += ["", "Rank-1 (%) on CASIA-B test subjects 075-124, identical views excluded, mean over seeds (sd: "
              "sample standard deviation over seeds). *vs alone*: mean over seeds of the per-seed difference "
              "row - alone (same seed: same initialisation and batches), +- its standard error (none with one "
              "seed). *bootstrap 95% CI*: of the same difference, resampling the 50 test subjects' probes (gallery "
              "fixed, 2,000 draws, seed 0).", "",
              "Between rows (the issue's claims: AB beats feature MSE; KL and AB together beat each alone), seeds "
              "paired:", "",
              "| row | baseline | seeds | diff +- se | bootstrap 95% CI | NM / BG / CL diff |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row, base in STUDY.comparisons:
        d = _diff(runs.get(base, {}), runs.get(row, {}))
        lines.append(f"| `{row}` | `{base}` | 0 | not run yet | | |" if d is None else
                     f"| `{row}` | `{base}` | {d['n']} | {d['text']} | {d['ci']} | {d['sets']} |")
    hashes: dict[str, set] = {}
    for by_seed in runs.values():
        for rec in by_seed.values():
            for t in rec.get("teachers", []):
                hashes.setdefault(t["path"], set()).add(t["sha256"])
    changed = sorted(p for p, h in hashes.items() if len(h) > 1)
    if changed:
        lines += ["", f"**Warning**: runs used different weights at {', '.join(changed)} (teachers retrained?): "
                  "the rows do not share their teacher."]
    return lines + [""]


def write_table(out: Path | None = None) -> Path:
    """Regenerate ``results/distill/README.md`` (or ``out``) from the JSON. Returns its path."""
    out = out or RESULTS / "README.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(table_lines()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the missing rows and seeds one at a time (resumable), then the table")
    r.add_argument("--rows", help=f"comma-separated (default: all, in order: {','.join(STUDY.rows)})")
    r.add_argument("--seeds", help="comma-separated (default: the key rows on 0,1,2, the other rows on 0)")
    r.add_argument("--runs", type=Path, default=REPO / "runs" / "distill")
    sub.add_parser("table", help="regenerate results/distill/README.md from the committed JSON")
    a = ap.parse_args(argv)
    if a.cmd == "table":
        print(write_table())
        return 0
    rows = a.rows.split(",") if a.rows else None
    unknown = [x for x in rows or () if x not in STUDY.rows]
    if unknown:
        ap.error(f"unknown rows {unknown}; the study has {list(STUDY.rows)}")
    todo = plan(rows, [int(s) for s in a.seeds.split(",")] if a.seeds else None)
    missing = missing_teachers(sorted({row for row, _ in todo}, key=list(STUDY.rows).index))
    if missing:
        raise SystemExit("\n".join(f"distill_study: {m}" for m in missing))
    with single_run_lock(a.runs):
        for row, seed in todo:
            run_one(row, seed, a.runs)
            write_table()
    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
