"""The fair protocol of the low-bit study (issue 13, docs/lowbit.md), enforced on its configs and results:

- every trained row of a comparison has the same schedule (iterations, learning rate, milestones and decay of
  each stage), not just the same total;
- rows other than the control share the control's stage 1 (same quantizer, calibration and stage-1 losses), so
  only the stage-2 component differs; rows with a stage-1 component are declared as training their own stage 1;
- the key rows have at least 3 seeds in the plan;
- every committed result belongs to a declared row, and the committed table is what ``scripts/lowbit.py table``
  regenerates from the committed JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _scripts import load_script
from qgait.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "results" / "lowbit" / "configs"

LOWBIT = load_script("lowbit")
SETTINGS = LOWBIT.SETTINGS
ROWS = [(s, r) for s, st in SETTINGS.items() for r in st.rows]


def _schedule(stage) -> tuple:
    return stage.iterations, stage.lr, tuple(stage.milestones), stage.gamma


def _stage1_setup(cfg) -> dict:
    """Everything that shapes the stage-1 model: quantizer (bar the soft-stage settings), calibration, stage 1,
    the stage-1 losses, and the data / model / loss / optimizer sections."""
    q = cfg.quant
    qc = q.config.model_dump()
    qc.pop("soft")
    return {
        "quant": qc, "calibration_batches": q.calibration_batches, "calib_only": q.calib_only.model_dump(),
        "stage1": q.stage1.model_dump(),
        "idc_stage1": q.idc.model_dump() if q.idc is not None and 1 in q.idc.stages and q.idc.weight > 0 else None,
        "idd_stage1": q.idd.model_dump() if q.idd is not None and 1 in q.idd.stages and q.idd.weight > 0 else None,
        "data": cfg.data.model_dump(), "model": cfg.model.model_dump(), "loss": cfg.loss.model_dump(),
        "optim_momentum": (cfg.optim.momentum, cfg.optim.weight_decay), "seed": cfg.train.seed,
    }


def test_every_config_is_a_row_and_every_row_has_a_config():
    for setting, st in SETTINGS.items():
        on_disk = {p.stem for p in (CONFIGS / setting).glob("*.yaml") if not p.stem.startswith("_")}
        assert on_disk == set(st.rows), setting
        assert st.control in st.rows and set(st.key_rows) <= set(st.rows) and st.own_stage1 <= set(st.rows)
        assert st.control not in st.own_stage1


@pytest.mark.parametrize("setting,row", ROWS)
def test_same_schedule_as_the_control(setting, row):
    st = SETTINGS[setting]
    cfg = load_config(LOWBIT.config_path(setting, row))
    ctrl = load_config(LOWBIT.config_path(setting, st.control))
    assert cfg.name == row
    assert cfg.quant.config.quantizer != "ptq"
    for a, b in ((cfg.quant.stage1, ctrl.quant.stage1), (cfg.quant.stage2, ctrl.quant.stage2)):
        assert _schedule(a) == _schedule(b), f"{row}: schedule {_schedule(a)} differs from the control's {_schedule(b)}"
    assert cfg.quant.calib_only.iterations == ctrl.quant.calib_only.iterations == 0
    assert cfg.optim.momentum == ctrl.optim.momentum and cfg.optim.weight_decay == ctrl.optim.weight_decay
    assert cfg.quant.stage1.rounding == "ste"  # stage 1 is LSQ for every row (methods.md 1.4)


@pytest.mark.parametrize("setting,row", ROWS)
def test_shared_start_differs_only_after_stage_1(setting, row):
    st = SETTINGS[setting]
    if row == st.control or row in st.own_stage1:
        return
    cfg = load_config(LOWBIT.config_path(setting, row))
    ctrl = load_config(LOWBIT.config_path(setting, st.control))
    assert _stage1_setup(cfg) == _stage1_setup(ctrl), f"{row} changes stage 1: declare it in own_stage1"
    # and it does differ from the control somewhere (a row that equals its control measures nothing)
    assert (cfg.quant.model_dump(), cfg.distill, st.teachers.get(row)) != \
        (ctrl.quant.model_dump(), ctrl.distill, st.teachers.get(st.control))


@pytest.mark.parametrize("setting,row", ROWS)
def test_distillation_rows_have_teachers_and_only_they(setting, row):
    st = SETTINGS[setting]
    cfg = load_config(LOWBIT.config_path(setting, row))
    teachers = st.teachers.get(row, ())
    assert (cfg.distill is not None) == bool(teachers), f"{row}: a distill section needs teachers and vice versa"
    for t in teachers:
        assert (REPO / t).is_file(), f"{row}: teacher {t} is not in the repository"


def test_control_is_lsq_with_the_ste_throughout():
    for setting, st in SETTINGS.items():
        q = load_config(LOWBIT.config_path(setting, st.control)).quant
        assert q.config.quantizer == "lsq" and q.stage1.rounding == q.stage2.rounding == "ste"
        assert q.idc is None and q.idd is None
        assert q.fp_reference == st.reference  # only the reference trains without quantizers
        assert load_config(LOWBIT.config_path(setting, st.control)).distill is None and not st.teachers.get(st.control)


def test_key_rows_plan_three_seeds_and_results_belong_to_rows():
    for setting, st in SETTINGS.items():
        assert len(st.seeds) >= 3 and st.key_rows
        for path in (LOWBIT.RESULTS / setting).glob("*.json"):
            row, seed = path.stem.rsplit("_seed", 1)
            assert row in st.rows, f"{path.name}: not a row of {setting}"
            assert int(seed) >= 0


def test_committed_table_is_regenerated_from_the_json(tmp_path):
    out = LOWBIT.write_tables(tmp_path / "README.md")
    committed = LOWBIT.RESULTS / "README.md"
    assert committed.is_file(), "run: python scripts/lowbit.py table"
    assert out.read_text() == committed.read_text(), "the table is stale: python scripts/lowbit.py table"


def test_fp_reference_has_every_settings_schedule():
    """The FP reference (one per seed) is what every setting's "vs FP fine-tuned" column subtracts: its stages
    must be each setting's, so that the difference is quantization alone."""
    refs = [k for k, st in SETTINGS.items() if st.reference]
    assert refs == [LOWBIT.REFERENCE]
    ref = load_config(LOWBIT.config_path(LOWBIT.REFERENCE, SETTINGS[LOWBIT.REFERENCE].control))
    assert ref.quant.fp_reference and ref.distill is None
    for setting, st in SETTINGS.items():
        ctrl = load_config(LOWBIT.config_path(setting, st.control))
        for a, b in ((ctrl.quant.stage1, ref.quant.stage1), (ctrl.quant.stage2, ref.quant.stage2)):
            assert _schedule(a) == _schedule(b), setting
        assert (ctrl.data.model_dump(), ctrl.model.model_dump(), ctrl.loss.model_dump(), ctrl.optim.model_dump()) == \
            (ref.data.model_dump(), ref.model.model_dump(), ref.loss.model_dump(), ref.optim.model_dump()), setting



def test_rows_with_their_own_start_train_their_own_stage_1_and_their_starts_exist():
    """A row that quantizes another FP model cannot share the control's stage 1; its start and that start's
    evaluation are committed for every seed the setting plans (so that the row runs on a fresh machine)."""
    for setting, st in SETTINGS.items():
        for row, (ckpt, res) in st.starts.items():
            assert row in st.rows and row in st.own_stage1, f"{setting} {row}"
            for seed in st.seeds:
                assert (REPO / ckpt.format(seed=seed)).is_file(), ckpt.format(seed=seed)
                assert json.loads((REPO / res.format(seed=seed)).read_text())["result"]["per_subject"]


def test_start_checkpoint_is_the_rows_own_or_the_default(tmp_path):
    default = tmp_path / "fp.pt"
    assert LOWBIT.start_checkpoint("w3a3", "lsq", 0, default) == default
    assert LOWBIT.start_checkpoint("w4a4", "lsq_from_kd", 1, default) == REPO / "zoo/distill/seed1/gaitkd.pt"
    with pytest.raises(FileNotFoundError, match="seed7/gaitkd.pt.*distill_study.py run --rows gaitkd --seeds 7"):
        LOWBIT.start_checkpoint("w4a4", "lsq_from_kd", 7, default)


def test_start_table_pairs_each_seed_with_its_own_start():
    """The committed W4A4 control's records relabelled as ``lsq_from_kd``: the line's mean start and difference
    are the ones recomputed here from the distilled students' JSON."""
    runs = LOWBIT.load_runs("w4a4")
    fake = {"lsq_from_kd": runs["lsq"]}
    lines = LOWBIT.start_table("w4a4", fake, n_boot=200)
    row = next(ln for ln in lines if ln.startswith("| `lsq_from_kd` |"))
    starts = {s: json.loads((REPO / f"results/distill/gaitkd_seed{s}.json").read_text())["result"]["mean"]
              for s in runs["lsq"]}
    mean_start = sum(starts.values()) / len(starts)
    diff = sum(runs["lsq"][s]["result"]["mean"] - starts[s] for s in starts) / len(starts)
    assert f"| {len(starts)} | {mean_start:.2f} | {diff:+.2f} +- " in row
