"""The command line: help for every command, clear errors with exit code 2, a real train + evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qgait.cli import build_parser, main


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["quantize", "--help"],
                                  ["data", "import", "--help"], ["data", "pretreat", "--help"],
                                  ["data", "stats", "--help"], ["run", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: qgait" in out and "--help" in out


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndata: {store: s}\nmodel: {nmae: gaitbase}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "model.nmae" in err


def test_missing_checkpoint_is_a_clear_error(small_config_file, tmp_path, capsys):
    assert main(["evaluate", str(small_config_file), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_import_of_missing_source_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "import", str(tmp_path / "nope"), str(tmp_path / "store")]) == 2
    assert "nope" in capsys.readouterr().err


def test_train_then_evaluate_on_real_subjects(small_config_file, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "qgait.cli", "train", str(small_config_file), "--output-dir", str(out),
                        "--quiet", "--set", "train.iterations=2", "--set", "data.test_subjects_limit=2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| rank-1 |" in r.stdout  # the CASIA-B summary, and where the full tables are (not the 11 x 11 tables)
    assert f"Full tables (rank-1 per probe view, view x view per set): {out / 'results.md'}" in r.stdout
    assert "### NM" not in r.stdout and "### NM" in (out / "results.md").read_text()
    assert "torchvision" not in r.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res["sets"]) == {"NM", "BG", "CL"} and len(res["sets"]["NM"]["table"]) == 11
    r2 = subprocess.run([sys.executable, "-m", "qgait.cli", "evaluate", str(small_config_file), "--checkpoint",
                         str(out / "model.pt"), "--quiet", "--set", "data.test_subjects_limit=2"],
                        capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    res2 = [line for line in r2.stdout.splitlines() if line.startswith("| rank-1 |")]
    assert res2 and res2[0] == [line for line in r.stdout.splitlines() if line.startswith("| rank-1 |")][0]


def test_evaluate_uses_the_checkpoint_input_size(small_config_file, tmp_path, monkeypatch, capsys):
    """A 32x22 checkpoint with a 64x44 config is evaluated at 32x22, with a note (issue 16, item 7)."""
    import qgait.workflows.evaluate as ev
    from qgait.config import load_config
    from qgait.engine.checkpoint import save_inference_model
    from qgait.models import build_model

    args = {"width": 0.125, "bins": [8], "embed_dim": 16}
    ck = save_inference_model(tmp_path / "m.pt", build_model("gaitbase", **args), "gaitbase", args, (32, 22))
    seen = {}

    def fake_evaluate(model, store, subjects, cfg, device, progress):
        seen["size"] = tuple(cfg.data.input_size)
        raise KeyboardInterrupt  # stop here: the size is what is checked

    monkeypatch.setattr(ev, "evaluate_with_stats", fake_evaluate)
    cfg = load_config(small_config_file, ["data.input_size=[64,44]"])
    with pytest.raises(KeyboardInterrupt):
        ev.run_evaluate(cfg, ck, progress=False)
    assert seen["size"] == (32, 22)
    assert "trained on 32x22 frames; evaluating at 32x22, not at the config's 64x44" in capsys.readouterr().err
