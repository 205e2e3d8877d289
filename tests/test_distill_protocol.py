"""The fair protocol of the distillation table (issue 14, deliverable 5; docs/lowbit.md's rules, docs/distillation.md),
enforced on ``scripts/distill_study.py`` and ``results/distill/configs`` without training anything:

- every row config loads, and every row has the control's schedule (iterations, learning rate, milestones, batch
  P x K, frames, model) — the CPU recipe's;
- a row differs from the control ``alone`` in its ``distill`` section only, and switches on exactly its terms;
- rows that distil declare their teachers (the control none), and a teacher fits its rows (a headless teacher
  gives no logits; the same input size and training subjects as the student);
- the key rows plan 3 seeds; the table of an empty results folder says "not run yet"; a missing teacher is
  refused before anything runs, naming the file and the command that trains it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _scripts import load_script
from qgait.config import load_config

REPO = Path(__file__).resolve().parents[1]




STUDY_MOD = load_script("distill_study")
STUDY = STUDY_MOD.STUDY
ROWS = list(STUDY.rows)

# the terms each row switches on (weight > 0): the distill section's defaults turn KL and AB on, so a row that
# means one term must turn the others off
TERMS = {
    "alone": set(), "gaitkd": {"kl", "ab"}, "kl": {"kl"}, "ab": {"ab"}, "feature_mse": {"feature_mse"},
    "global_kd": {"global_kd"}, "hetero": {"ab"}, "two_teachers": {"kl", "ab"}, "two_teachers_ensemble": {"kl", "ab"},
    "feature_mse_w1": {"feature_mse"}, "gaitkd_int8": {"kl", "ab"}, "gaitkd_ab_pull": {"kl", "ab"},
}


def _grad_norms() -> dict:
    """The measured gradient pull of each term (``python scripts/distill_grad_norms.py``), which row weights follow."""
    return json.loads((REPO / "results" / "distill" / "grad_norms_w05.json").read_text())


def _cfg(row):
    return load_config(STUDY_MOD.config_path(row))


def _schedule(cfg) -> dict:
    return {"iterations": cfg.train.iterations, "lr": cfg.optim.lr, "milestones": list(cfg.optim.milestones),
            "gamma": cfg.optim.gamma, "warmup": cfg.optim.warmup_iterations, "optimizer": cfg.optim.name,
            "p": cfg.data.p, "k": cfg.data.k, "frames": cfg.data.train_frames, "input": tuple(cfg.data.input_size),
            "model": cfg.model.model_dump()}


def _terms(cfg) -> set[str]:
    d = cfg.distill
    if d is None:
        return set()
    return {name for name in ("kl", "ab", "global_kd", "feature_mse") if getattr(d, name).weight > 0}


def test_every_config_is_a_row_and_every_row_has_a_config():
    on_disk = {p.stem for p in STUDY_MOD.CONFIGS.glob("*.yaml") if not p.stem.startswith("_")}
    assert on_disk == set(ROWS) == set(TERMS)
    assert STUDY.control == "alone" and set(STUDY.key_rows) <= set(ROWS) and STUDY.control in STUDY.key_rows
    assert {a for pair in STUDY.comparisons for a in pair} <= set(ROWS)
    assert {("gaitkd", "kl"), ("gaitkd", "ab"), ("ab", "feature_mse")} <= set(STUDY.comparisons)


@pytest.mark.parametrize("row", ROWS)
def test_row_loads_and_has_the_controls_schedule(row):
    cfg, ctrl = _cfg(row), _cfg(STUDY.control)
    assert cfg.name == row
    assert cfg.quant is None
    assert _schedule(cfg) == _schedule(ctrl), f"{row}: schedule differs from the control's"


def test_the_schedule_is_the_cpu_recipes():
    recipe = load_config(REPO / "configs" / "gaitbase_casiab_cpu.yaml")
    assert _schedule(_cfg(STUDY.control)) == _schedule(recipe), \
        "results/distill/configs/_schedule.yaml no longer equals the CPU recipe"
    assert _cfg(STUDY.control).train.iterations == 3000


@pytest.mark.parametrize("row", ROWS)
def test_rows_differ_from_the_control_only_in_distill(row):
    cfg, ctrl = _cfg(row).model_dump(), _cfg(STUDY.control).model_dump()
    for c in (cfg, ctrl):
        c.pop("name")
    d = cfg.pop("distill")
    assert ctrl.pop("distill") is None
    assert cfg == ctrl, f"{row} changes more than the distill section"
    assert (d is None) == (row == STUDY.control)


@pytest.mark.parametrize("row", ROWS)
def test_each_row_switches_on_exactly_its_terms(row):
    assert _terms(_cfg(row)) == TERMS[row]


@pytest.mark.parametrize("row", ROWS)
def test_rows_with_a_distill_section_declare_teachers_and_the_control_none(row):
    cfg = _cfg(row)
    teachers = STUDY.teachers.get(row, ())
    assert (cfg.distill is not None) == bool(teachers), f"{row}: a distill section needs teachers and vice versa"
    assert set(teachers) <= set(STUDY_MOD.TEACHERS)
    assert len(set(teachers)) == len(teachers)
    if cfg.distill is not None and cfg.distill.ensemble:
        assert len(teachers) > 1
    if row == STUDY.control:
        assert not teachers and STUDY_MOD.teacher_files(row) == []


@pytest.mark.parametrize("row", [r for r in ROWS if r in STUDY.teachers])
def test_teachers_fit_their_rows(row):
    """What ``qgait distill`` would refuse before training, checked on the teachers' recipes."""
    cfg = _cfg(row)
    for key in STUDY.teachers[row]:
        t = load_config(REPO / STUDY_MOD.TEACHERS[key].recipe)
        assert tuple(t.data.input_size) == tuple(cfg.data.input_size), f"{key}: another input size"
        assert (t.data.partition, t.data.train_subjects_limit) == (cfg.data.partition, cfg.data.train_subjects_limit)
        if t.model.head == "none":
            assert not _terms(cfg) & {"kl", "global_kd"}, f"{row}: {key} has no head, so no logits"


def test_key_rows_plan_three_seeds_the_others_one():
    assert len(STUDY.seeds) >= 3
    todo = STUDY_MOD.plan()
    for row in ROWS:
        seeds = [s for r, s in todo if r == row]
        assert seeds == (list(STUDY.seeds) if row in STUDY.key_rows else [0]), row
    assert todo[0] == (STUDY.control, 0)
    assert STUDY_MOD.plan(["kl"], [1, 2]) == [("kl", 1), ("kl", 2)]


def test_commands_and_result_paths():
    run_dir = STUDY_MOD.REPO / "runs" / "distill" / "seed1" / "two_teachers"
    cmd = STUDY_MOD.command("two_teachers", 1, run_dir)
    assert cmd[:2] == ["distill", "results/distill/configs/two_teachers.yaml"]
    assert "train.seed=1" in cmd and "runs/distill/seed1/two_teachers" in cmd
    assert [cmd[i + 1] for i, x in enumerate(cmd) if x == "--teacher"] == \
        ["zoo/gaitbase_casiab_cpu_w05/model.pt", "zoo/gaitbase_casiab_cpu/model.pt"]
    assert cmd[-2:] == ["--teacher-cache", "stores/teacher_cache"]  # gitignored, shared by the rows of a seed
    assert STUDY_MOD.command("alone", 0, run_dir)[0] == "train"
    assert "--teacher" not in STUDY_MOD.command("alone", 0, run_dir)
    assert STUDY_MOD.result_path("gaitkd", 2) == STUDY_MOD.RESULTS / "gaitkd_seed2.json"


def test_table_of_an_empty_results_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(STUDY_MOD, "RESULTS", tmp_path)
    out = STUDY_MOD.write_table()
    assert out == tmp_path / "README.md"
    text = out.read_text()
    for row in ROWS:
        line = next(x for x in text.splitlines() if f"(`{row}`)" in x and x.startswith("| "))
        assert "not run yet" in line
    for row, base in STUDY.comparisons:
        assert f"| `{row}` | `{base}` | 0 | not run yet |" in text


def test_table_from_records(tmp_path, monkeypatch):
    """The table's arithmetic on records made from the zoo model's evaluation (identical runs: zero differences)."""
    import json

    res = json.loads((REPO / STUDY_MOD.RECIPE_RESULTS).read_text())
    monkeypatch.setattr(STUDY_MOD, "RESULTS", tmp_path)
    for row, seed in (("alone", 0), ("alone", 1), ("gaitkd", 0), ("gaitkd", 1), ("ab", 0)):
        rec = {"study": "distill", "row": row, "seed": seed, "command": "-", "teachers": [], "result": res}
        STUDY_MOD.result_path(row, seed).write_text(json.dumps(rec))
    lines = STUDY_MOD.write_table().read_text().splitlines()
    gaitkd = next(x for x in lines if "(`gaitkd`)" in x)
    assert f"| 2 | {res['sets']['NM']['rank-1']:.1f} |" in gaitkd
    assert "+0.00 +- 0.00 | [+0.00, +0.00]" in gaitkd
    assert any(x.startswith("| `gaitkd` | `ab` | 1 | +0.00 |") for x in lines)
    assert any(x.startswith("| `ab` | `feature_mse` | 0 | not run yet") for x in lines)


def test_a_missing_teacher_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(STUDY_MOD, "REPO", tmp_path)  # a checkout without any teacher in its zoo
    monkeypatch.setattr(STUDY_MOD, "run_one", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        STUDY_MOD.main(["run", "--rows", "alone,kl", "--runs", str(tmp_path / "runs")])
    msg = str(e.value)
    assert msg.count("\n") == 0, "one line for one missing teacher"
    assert "zoo/gaitbase_casiab_cpu_w05/model.pt" in msg
    assert "qgait train configs/gaitbase_casiab_cpu_w05.yaml" in msg
    assert "python scripts/zoo_add.py runs/gaitbase_casiab_cpu_w05 zoo/gaitbase_casiab_cpu_w05" in msg
    assert not (tmp_path / "runs").exists()
    # the control needs no teacher
    assert STUDY_MOD.missing_teachers(["alone"], root=tmp_path) == []
    assert len(STUDY_MOD.missing_teachers(["hetero", "two_teachers"], root=tmp_path)) == 3


def test_committed_results_belong_to_rows():
    for path in STUDY_MOD.RESULTS.glob("*_seed*.json"):
        row, seed = path.stem.rsplit("_seed", 1)
        assert row in STUDY.rows and int(seed) >= 0, path.name


def test_committed_table_is_regenerated_from_the_json(tmp_path):
    committed = STUDY_MOD.RESULTS / "README.md"
    assert committed.is_file(), "run: python scripts/distill_study.py table"
    out = STUDY_MOD.write_table(tmp_path / "README.md")
    assert out.read_text() == committed.read_text(), "the table is stale: python scripts/distill_study.py table"


def test_feature_mse_row_pulls_like_ab():
    """The ``feature_mse`` row's weight is the measured pull-matched one (AB at GaitKD's 0.003), so that "AB beats
    feature MSE" compares the losses' shapes; ``feature_mse_w1`` keeps the reference code's weight 1."""
    rec = _grad_norms()
    matched = [rec[k]["weight_to_match_ab"] for k in ("at_init", "trained")]
    assert _cfg("ab").distill.ab.weight == rec["ab_reference_weight"]
    w = _cfg("feature_mse").distill.feature_mse.weight
    assert min(matched) - 0.05 <= w <= max(matched) + 0.05, (w, matched)
    assert _cfg("feature_mse_w1").distill.feature_mse.weight == 1.0


def test_ab_pull_row_pulls_like_kl_at_initialisation():
    """``gaitkd_ab_pull`` is ``gaitkd`` with only AB's weight changed, to the measured one at which AB's gradient pull
    equals KL's at initialisation (a diagnostic of why AB adds nothing beside KL at GaitKD's 0.003)."""
    rec = _grad_norms()["at_init"]["ratio_to_task"]
    matched = rec["kd_kl"] / rec["kd_ab"]  # AB's ratio is per unit weight (measured at weight 1)
    pull, ref = _cfg("gaitkd_ab_pull"), _cfg("gaitkd")
    assert abs(pull.distill.ab.weight - matched) <= 0.0005, (pull.distill.ab.weight, matched)
    assert pull.distill.model_copy(update={"ab": ref.distill.ab}) == ref.distill
    assert {("gaitkd_ab_pull", "kl"), ("gaitkd_ab_pull", "gaitkd")} <= set(STUDY.comparisons)


def test_every_distilled_row_runs_its_teachers_at_one_precision():
    """The teachers' forward precision (``distill.teacher_amp``) is part of the protocol: one value for every row
    that distils (bf16: measured as 2.19x -> 1.48x a student step with the width-0.5 teacher, outputs within cosine
    0.9999 of float32; results/bench/distill_step_*_teacher_w05_cl.json), except ``gaitkd_int8``, which is
    ``gaitkd`` with an int8 teacher and nothing else changed."""
    amps = {row: _cfg(row).distill.teacher_amp for row in ROWS if row not in (STUDY.control, "gaitkd_int8")}
    assert set(amps.values()) == {"bf16"}, amps
    int8, ref = _cfg("gaitkd_int8"), _cfg("gaitkd")
    assert int8.distill.teacher_amp == "int8"
    assert int8.distill.model_copy(update={"teacher_amp": "bf16"}) == ref.distill
    assert int8.model_copy(update={"distill": None, "name": "x"}) == ref.model_copy(update={"distill": None, "name": "x"})
    assert ("gaitkd_int8", "gaitkd") in STUDY.comparisons and STUDY.teachers["gaitkd_int8"] == STUDY.teachers["gaitkd"]


def test_log_speed_is_the_median_of_the_logged_windows(tmp_path):
    log = tmp_path / "train_log.jsonl"
    assert STUDY_MOD.log_speed(log) == {}  # no log: nothing recorded
    rows = [{"iteration": 50 * (i + 1), "sec_per_iter": t} for i, t in enumerate([0.9, 5.0, 1.1, 1.0])]
    rows.insert(2, {"iteration": 100, "eval": "no timing in this line"})
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert STUDY_MOD.log_speed(log) == {"sec_per_iter_median": 1.05, "windows": 4}
