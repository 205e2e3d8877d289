"""Resuming a run folder with another config (issue 16, item 7): an architecture or data change is refused before
the folder is touched, a schedule change is said and recorded, and ``summary.json`` has the true resume point."""

from __future__ import annotations

import json

import pytest

from qgait.cli import main
from qgait.config import load_config
from qgait.engine.checkpoint import CheckpointError
from qgait.workflows.resume import ResumeMismatch, config_differences
from qgait.workflows.train import run_train


def test_config_differences_sort_keys_into_refused_warned_and_ignored():
    old = {"name": "a", "model": {"args": {"embed_dim": 128}}, "optim": {"lr": 0.1},
           "data": {"store": "/x", "p": 8, "augment": {"erasing_prob": 0.2}},
           "quant": {"config": {"weight_bits": 4, "soft": {"alpha_end": 10.0}}}}
    new = {"name": "b", "model": {"args": {"embed_dim": 64}}, "optim": {"lr": 0.05},
           "data": {"store": "/y", "p": 4, "augment": {"erasing_prob": 0.0}},
           "quant": {"config": {"weight_bits": 3, "soft": {"alpha_end": 20.0}}}}
    refused, warned = config_differences(old, new)
    assert [r.split(":")[0] for r in refused] == ["data.p", "model.args.embed_dim", "quant.config.weight_bits"]
    assert [w.split(":")[0] for w in warned] == ["data.augment.erasing_prob", "optim.lr",
                                                 "quant.config.soft.alpha_end"]
    assert warned[1] == "optim.lr: 0.1 -> 0.05"


@pytest.fixture()
def run2(small_config_file, tmp_path):
    """A tiny run stopped after 2 of its iterations (its folder holds last.pt and config.yaml)."""
    out = tmp_path / "run"
    run_train(load_config(small_config_file, ["train.iterations=2"]), out, progress=False, evaluate=False)
    return out


def test_architecture_change_is_refused_before_the_folder_is_touched(small_config_file, run2, capsys):
    before = {p.name: p.read_bytes() for p in run2.iterdir() if p.is_file()}
    rc = main(["train", str(small_config_file), "--output-dir", str(run2), "--quiet", "--no-eval",
               "--set", "model.args.embed_dim=8", "--set", "train.iterations=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "model.args.embed_dim: 16 -> 8" in err and "--output-dir" in err
    assert {p.name: p.read_bytes() for p in run2.iterdir() if p.is_file()} == before  # config.yaml, last.pt...
    with pytest.raises(ResumeMismatch, match="data.k: 4 -> 2"):
        run_train(load_config(small_config_file, ["data.k=2"]), run2, progress=False, evaluate=False)


def test_schedule_change_is_said_recorded_and_the_resume_point_is_true(small_config_file, run2, capsys):
    capsys.readouterr()
    summary = run_train(load_config(small_config_file, ["train.iterations=3", "optim.lr=0.05"]), run2,
                        progress=False, evaluate=False)
    err = capsys.readouterr().err
    assert "resuming" in err and "optim.lr: 0.1 -> 0.05" in err and "train.iterations: 2 -> 3" in err
    saved = json.loads((run2 / "summary.json").read_text())
    assert summary["resumed_from"] == saved["resumed_from"] == 2
    assert saved["config_changes_on_resume"] == ["optim.lr: 0.1 -> 0.05", "train.iterations: 2 -> 3"]
    assert "lr: 0.05" in (run2 / "config.yaml").read_text()  # the run goes on with the new values


def test_a_checkpoint_of_another_network_is_a_one_line_error_even_without_config(small_config_file, run2):
    (run2 / "config.yaml").unlink()  # nothing to compare with: the checkpoint itself refuses
    with pytest.raises(CheckpointError, match="cannot resume, the checkpoint does not fit"):
        run_train(load_config(small_config_file, ["model.args.embed_dim=8", "train.iterations=3"]), run2,
                  progress=False, evaluate=False)


def test_quantize_refuses_another_bit_width_in_its_run_folder(small_config_file, run2, tmp_path):
    from qgait.workflows.quantize import run_quantize

    over = ["quant.calibration_batches=1", "quant.stage1={iterations: 1, lr: 0.01, rounding: ste}",
            "quant.stage2={iterations: 0}", "quant.plot=false", "quant.idc=null", "data.test_subjects_limit=2"]
    out = tmp_path / "q"
    fp = {"NM": 0.0, "BG": 0.0, "CL": 0.0, "mean": 0.0}
    run_quantize(load_config(small_config_file, over + ["quant.config.weight_bits=4"]), run2 / "last.pt", out,
                 progress=False, fp_results=fp)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ResumeMismatch, match="quant.config.weight_bits: 4 -> 3"):
        run_quantize(load_config(small_config_file, over + ["quant.config.weight_bits=3"]), run2 / "last.pt", out,
                     progress=False, fp_results=fp)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
