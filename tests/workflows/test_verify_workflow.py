"""``qgait verify`` (issue 17): verification and open-set figures of saved models on real CASIA-B test sequences."""

from __future__ import annotations

import json

import pytest
import torch

from qgait.config import load_config
from qgait.engine.checkpoint import save_inference_model
from qgait.models import build_model
from qgait.workflows.verify import run_verification

ARGS = {"width": 0.125, "strides": [1, 2, 2, 1], "bins": [8], "embed_dim": 16}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    out = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_model("gaitbase", **ARGS).eval()
        out[f"random{seed}"] = save_inference_model(d / f"m{seed}.pt", m, "gaitbase", ARGS, (32, 22))
    return out


def test_verify_writes_figures_per_model_and_set(small_config_file, two_models, tmp_path):
    cfg = load_config(small_config_file)
    res = run_verification(cfg, two_models, tmp_path, progress=False, open_set_left_out=1)
    assert set(res["models"]) == {"random0", "random1"}
    for m in res["models"].values():
        assert set(m["sets"]) == {"NM", "BG", "CL"}
        nm = m["sets"]["NM"]
        # 2 test subjects: NM 01-04 x 11 views gallery, NM 05-06 x 11 views probes (all present in the store)
        assert nm["num_gallery"] > 0 and nm["num_genuine_pairs"] + nm["num_impostor_pairs"] == \
            nm["num_probes"] * nm["num_gallery"]
        assert 0 <= nm["eer"] <= 1
        assert nm["open_set"]["num_non_mated_probes"] > 0 and nm["open_set"]["num_mated_probes"] > 0
    # two different random models give different figures
    assert res["models"]["random0"]["sets"]["NM"]["eer"] != res["models"]["random1"]["sets"]["NM"]["eer"]
    assert json.loads((tmp_path / "verification.json").read_text()) == json.loads(json.dumps(res))
    assert all((tmp_path / f"verification_{s}.png").stat().st_size > 1000 for s in ("NM", "BG", "CL"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_verification(cfg, two_models, tmp_path, progress=False)
