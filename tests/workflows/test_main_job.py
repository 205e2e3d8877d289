"""The main job (issue 16, items 5 and 8): it starts from the zoo's trained FP model unless asked to retrain, the
quick job is sized to minutes, and the terminal gets summaries and the paths of the full tables. The stages are
stubbed (each is tested on its own): this checks the wiring, not the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

import qgait.workflows.main_job as mj
from qgait.config import load_config

REPO = Path(__file__).resolve().parents[2]
ROW = {"NM": 90.0, "BG": 80.0, "CL": 50.0, "mean": 73.3}


@pytest.fixture()
def stubs(monkeypatch, tmp_path):
    calls: dict[str, list] = {"train": [], "quantize": [], "deploy": []}

    def run_train(cfg, out_dir, **kw):
        calls["train"].append((cfg.name, Path(out_dir)))
        return {"name": cfg.name, "eval": ROW}

    def run_quantize(cfg, fp_checkpoint, out_dir, **kw):
        calls["quantize"].append((cfg, Path(fp_checkpoint), kw))
        stages = {"stage2": ROW, "fp": kw.get("fp_results") or ROW}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "stage2_results.md").write_text("tables")
        return {"stages": stages}

    def run_deploy(cfg, fp_checkpoint, q_checkpoint, out_dir, quick=False, progress=True, bench_variants=None):
        calls["deploy"].append((Path(fp_checkpoint), bench_variants))
        return {"parity_table": "| parity |\n", "bench_table": "| bench |\n"}

    monkeypatch.setattr(mj, "run_train", run_train)
    monkeypatch.setattr(mj, "run_quantize", run_quantize)
    monkeypatch.setattr(mj, "run_deploy", run_deploy)
    return calls


def test_main_job_starts_from_the_zoo_checkpoint(stubs, tmp_path, capsys):
    zoo = REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt"
    assert mj.zoo_checkpoint() == zoo
    mj.run_main_job(out_root=tmp_path, progress=False)
    assert stubs["train"] == []  # no FP retraining
    cfg, fp, kw = stubs["quantize"][0]
    assert cfg.name == "qgait_w4a4_cpu" and fp == zoo
    assert kw["fp_results"]["mean"] == pytest.approx(76.0, abs=0.1)  # the zoo's own evaluation, not redone
    assert stubs["deploy"] == [(zoo, None)]
    out = capsys.readouterr().out
    assert "FP vs W4A4" in out and "zoo/gaitbase_casiab_cpu/results.md" in out and "stage2_results.md" in out
    assert "### NM" not in out and (tmp_path / "main_job_cpu.json").is_file()


def test_main_job_from_another_zoo_model_reuses_its_evaluation(stubs, tmp_path, capsys):
    distilled = REPO / "zoo" / "gaitkd_casiab_cpu" / "model.pt"
    mj.run_main_job(out_root=tmp_path, progress=False, fp_checkpoint=distilled)
    cfg, fp, kw = stubs["quantize"][0]
    assert stubs["train"] == [] and fp == distilled
    assert kw["fp_results"]["mean"] == pytest.approx(77.6, abs=0.1)  # zoo/gaitkd_casiab_cpu/results.json
    assert "zoo/gaitkd_casiab_cpu/results.md" in capsys.readouterr().out


def test_quick_job_uses_the_zoo_model_a_short_benchmark_and_evaluates_fp_on_its_subjects(stubs, tmp_path):
    mj.run_main_job(quick=True, out_root=tmp_path, progress=False)
    cfg, fp, kw = stubs["quantize"][0]
    assert stubs["train"] == [] and fp.name == "model.pt" and kw["fp_results"] is None  # FP on the 5 subjects
    assert stubs["deploy"][0][1] == mj.QUICK_BENCH_VARIANTS


def test_retrain_and_no_zoo_train_the_fp_model(stubs, tmp_path, monkeypatch):
    mj.run_main_job(quick=True, out_root=tmp_path, progress=False, retrain=True)
    assert stubs["train"] == [("gaitbase_casiab_quick", tmp_path / "gaitbase_casiab_quick")]
    assert stubs["quantize"][0][1] == tmp_path / "gaitbase_casiab_quick" / "last.pt"
    monkeypatch.setattr(mj, "zoo_checkpoint", lambda: None)  # qgait installed without its repository
    mj.run_main_job(out_root=tmp_path, progress=False)
    assert stubs["train"][-1][0] == "gaitbase_casiab_cpu"


def test_quick_recipes_fit_a_first_look_in_minutes():
    """The quick job's budget: QAT 30 iterations (was 60, after 300 FP iterations), 5 test subjects, one
    evaluation of each model. The QAT recipe keeps every training subject so that the zoo model's 74-class
    head fits it, and so does the FP quick recipe (retrained FP then fits the same QAT recipe)."""
    fp, q = load_config("gaitbase_casiab_quick"), load_config("qgait_w4a4_quick")
    assert q.quant.stage1.iterations + q.quant.stage2.iterations <= 30
    assert q.data.test_subjects_limit == fp.data.test_subjects_limit == 5
    assert q.data.train_subjects_limit is None and fp.data.train_subjects_limit is None
    assert not q.quant.evaluate_stage1 and not q.quant.plot
    cpu = load_config("gaitbase_casiab_cpu")
    assert q.model == cpu.model and tuple(q.data.input_size) == tuple(cpu.data.input_size)  # the zoo model fits
