"""The ablation's configs (results/ablation/configs): every run named in scripts/ablation.py has a config that
loads, and the trained methods being compared share one iteration budget (issue 3: "keep the iteration budget
equal")."""

import importlib.util
from pathlib import Path

import pytest

from qgait.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "results" / "ablation" / "configs"


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation_script", REPO / "scripts" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ABLATION = _ablation()


def test_every_run_has_a_row_and_a_config():
    assert len(set(ABLATION.ORDER)) == len(ABLATION.ORDER)
    assert set(ABLATION.ORDER) == set(ABLATION.ROWS)
    assert set(ABLATION.DIAGNOSTIC) <= set(ABLATION.ORDER)
    assert all(ABLATION.ROWS[name].startswith("diagnostic:") for name in ABLATION.DIAGNOSTIC)
    on_disk = {p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("_")}
    assert on_disk == set(ABLATION.ORDER)


@pytest.mark.parametrize("name", ABLATION.ORDER)
def test_config_loads_with_its_name_and_the_shared_budget(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    q = cfg.quant
    trained = q.stage1.iterations + q.stage2.iterations
    if q.config.quantizer == "ptq":
        return
    budget = ABLATION.DIAGNOSTIC.get(name, 600)
    assert trained == budget, f"{name}: {trained} QAT iterations, the ablation's budget is {budget}"
    assert cfg.train.seed == (1 if name.endswith("_seed1") else 0)


@pytest.mark.parametrize("path", sorted((REPO / "results" / "quant" / "stage2" / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_stage2_probes_share_the_recipes_stage1(path):
    """The stage-2 probes continue one stage-1 model (--stage1-from), so their stage 1 and quantizer settings
    must be those of the recipe they were run on (frozen as results/ablation/configs/_recipe_v1.yaml); only
    stage 2 differs, with the same 200 iterations."""
    cfg = load_config(path)
    recipe = load_config(REPO / "results" / "ablation" / "configs" / "_recipe_v1.yaml")
    assert cfg.name == path.stem
    assert cfg.quant.stage1 == recipe.quant.stage1
    assert cfg.quant.config == recipe.quant.config and cfg.quant.idc == recipe.quant.idc
    assert cfg.quant.stage2.iterations == recipe.quant.stage2.iterations == 200
