"""The helpers of scripts/distill_grad_norms.py, scripts/device_summary.py and scripts/zoo_add.py on small known
inputs."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from _scripts import load_script


def test_grad_norm_stacks_parameters_and_skips_unreached():
    mod = load_script("distill_grad_norms")
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([3.0]))
    unused = torch.nn.Parameter(torch.tensor([5.0]))
    loss = (a * torch.tensor([3.0, 4.0])).sum() + 12.0 * b.sum()  # gradients (3, 4) and (12): norm 13
    assert mod.grad_norm([a, b, unused], loss) == pytest.approx(13.0)
    assert mod.grad_norm([unused], (a * 2).sum() + unused.detach().sum()) == 0.0


def test_step_times_median_leaves_out_the_first_window(tmp_path):
    mod = load_script("device_summary")
    log = tmp_path / "train_log.jsonl"
    rows = [{"stage": "stage1", "iteration": 10 * (i + 1), "sec_per_iter": s, "loss/total": 2.0 - i / 10}
            for i, s in enumerate([5.0, 0.3, 0.2, 0.4])]
    rows += [{"stage": "stage2", "iteration": 50, "sec_per_iter": 0.7, "loss/total": 1.1}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = mod.step_times(log)
    assert out["stage1"] == {"iterations": 40, "windows": 4, "median_s_per_iter": 0.3, "last_loss": 1.7}
    assert out["stage2"]["median_s_per_iter"] == 0.7  # a single window is its own median


def test_zoo_add_stores_float16_weights_that_load_as_the_model(tmp_path, capsys):
    from qgait.engine.checkpoint import load_checkpoint, load_inference_model, save_inference_model
    from qgait.models import build_model

    mod = load_script("zoo_add")
    torch.manual_seed(0)
    args = {"width": 0.125, "bins": [4], "embed_dim": 16}
    run, zoo = tmp_path / "runs" / "m", tmp_path / "zoo" / "m"
    save_inference_model(run / "model.pt", build_model("gaitbase", **args).eval(), "gaitbase", args, (32, 22))
    (run / "config.yaml").write_text("name: m\n")
    argv, sys.argv = sys.argv, ["zoo_add.py", str(run), str(zoo), "--half"]
    try:
        assert mod.main() == 0
        assert mod.main() == 1  # the zoo folder exists now: refused without --overwrite
    finally:
        sys.argv = argv
    stored = load_checkpoint(zoo / "model.pt")
    assert stored["weights_dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in stored["state_dict"].values() if torch.is_floating_point(v))
    model, _ = load_inference_model(zoo / "model.pt")
    assert next(model.parameters()).dtype == torch.float32
    assert mod.embedding_cosine(run / "model.pt", zoo / "model.pt", (32, 22)) > 0.999
    assert yaml.safe_load((zoo / "config.yaml").read_text()) == {"name": "m"}
    assert "exists" in capsys.readouterr().err


def test_zoo_add_rebases_the_configs_data_paths(tmp_path):
    """A run folder deeper than its zoo folder: the copied config's relative data paths still name the same
    folders, absolute ones and the rest of the config are unchanged, and the result loads as a config."""
    mod = load_script("zoo_add")
    run, dest = tmp_path / "runs" / "study" / "seed0" / "row", tmp_path / "zoo" / "row"
    (tmp_path / "stores" / "s").mkdir(parents=True)
    text = ("name: row\ndata:\n  source: /abs/casia-b\n  store: ../../../../stores/s\n  p: 8\n"
            "model:\n  name: gaitbase\n")
    out = yaml.safe_load(mod.rebase_config(text, run, dest))
    assert out["data"]["store"] == "../../stores/s"
    assert (dest / out["data"]["store"]).resolve() == (run / "../../../../stores/s").resolve()
    assert out["data"]["source"] == "/abs/casia-b"
    assert out["data"]["p"] == 8 and out["model"] == {"name": "gaitbase"} and list(out) == ["name", "data", "model"]
    with pytest.raises(ValueError, match="not a YAML mapping"):
        mod.rebase_config("- a\n", run, dest)


def test_zoo_add_refuses_a_bad_config_before_writing(tmp_path, capsys):
    from qgait.engine.checkpoint import save_inference_model
    from qgait.models import build_model

    mod = load_script("zoo_add")
    args = {"width": 0.125, "bins": [4], "embed_dim": 16}
    run, zoo = tmp_path / "runs" / "m", tmp_path / "zoo" / "m"
    save_inference_model(run / "model.pt", build_model("gaitbase", **args).eval(), "gaitbase", args, (32, 22))
    (run / "config.yaml").write_text("- not\n- a mapping\n")
    argv, sys.argv = sys.argv, ["zoo_add.py", str(run), str(zoo)]
    try:
        assert mod.main() == 1
    finally:
        sys.argv = argv
    assert not zoo.exists()
    assert "config.yaml" in capsys.readouterr().err
