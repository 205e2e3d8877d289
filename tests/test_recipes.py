"""The recipes ship in the package (issue 16, item 3): one copy in ``qgait/configs`` (the repository's ``configs/``
links to it), read through ``importlib.resources``, named by their stems, every one loads and builds its model,
the package data of the wheel covers them, and the zoo's configs carry no machine's absolute paths."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from qgait import recipes
from qgait.config import ConfigError, dump_config, load_config
from qgait.workflows.common import build_network

REPO = Path(__file__).resolve().parents[1]
PACKAGED = sorted(p.name for p in resources.files("qgait").joinpath("configs").iterdir() if p.name.endswith(".yaml"))


def test_recipes_are_package_data_and_the_repository_folder_is_the_same_files():
    assert len(PACKAGED) >= 9 and "gaitbase_casiab_cpu.yaml" in PACKAGED
    assert recipes.recipe_names() == sorted(n[:-5] for n in PACKAGED)
    for name in PACKAGED:  # configs/X.yaml and qgait/configs/X.yaml: one file, not a copy kept in sync
        assert os.path.samefile(REPO / "configs" / name, recipes.recipe_dir() / name)
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["qgait"]
    shipped = {p.relative_to(REPO / "src" / "qgait") for g in globs for p in (REPO / "src" / "qgait").glob(g)}
    assert {Path("configs") / n for n in PACKAGED} <= shipped  # what the wheel takes


@pytest.mark.parametrize("name", PACKAGED)
def test_every_recipe_loads_by_name_and_builds_its_model(name):
    cfg = load_config(name[:-5])  # the stem, as `qgait train gaitbase_casiab_cpu`
    assert dump_config(cfg) == dump_config(load_config(REPO / "configs" / name))
    net = build_network(cfg, num_classes=74).eval()
    h, w = cfg.data.input_size
    with torch.no_grad():
        out = net.model(torch.rand(1, 2, h, w))
    assert out.ndim == 3 and out.shape[0] == 1


def test_gaitset_recipes_do_not_inherit_gaitbase_arguments():
    for name in ("gaitset_casiab", "gaitset_casiab_cpu"):
        cfg = load_config(name)
        assert cfg.model.name == "gaitset" and "strides" not in cfg.model.args
        assert cfg.data.source == load_config("gaitbase_casiab").data.source  # the rest is still inherited


def test_a_model_of_another_name_drops_the_base_args_only(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: gaitbase_casiab_cpu\nname: mine\nmodel: {name: gaitset, args: {width: 0.25}}\n")
    cfg = load_config(p)  # base given as a recipe name from a config outside the repository
    assert cfg.model.args == {"width": 0.25} and cfg.data.input_size == (32, 22)
    p.write_text("base: gaitbase_casiab_cpu\nname: mine\nmodel: {name: gaitbase, args: {embed_dim: 64}}\n")
    assert load_config(p).model.args["strides"] == [1, 2, 2, 1]  # same model: merged as before


def test_recipe_data_paths_read_against_the_project_folder(tmp_path, monkeypatch):
    cfg = load_config("gaitbase_casiab_cpu")
    assert cfg.data.store == REPO / "stores" / "casia-b-44"  # in a checkout: the repository
    assert cfg.data.source == (REPO / ".." / "shared" / "data" / "casia-b").resolve()
    monkeypatch.setattr(recipes, "_checkout_root", lambda: None)  # an installed wheel: the working directory
    monkeypatch.chdir(tmp_path)
    cfg = load_config("gaitbase_casiab_cpu")
    assert cfg.data.store == tmp_path.resolve() / "stores" / "casia-b-44"


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="gaitbase_casiab_cpu"):
        load_config("gaitbase_casiab_gpu")


ZOO_CONFIGS = sorted(REPO.glob("zoo/**/config.yaml"))


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("path", ZOO_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_zoo_configs_carry_no_absolute_path_and_load_anywhere(path):
    raw = yaml.safe_load(path.read_text())
    assert not [s for s in _strings(raw) if s.startswith("/") or s.startswith("~")], path
    cfg = load_config(path)  # relative to the zoo folder: the repository's stores, the data beside it
    assert cfg.data.store.parent == REPO / "stores"
    assert cfg.data.source == (REPO / ".." / "shared" / "data" / "casia-b").resolve()


def test_run_config_is_written_relative_to_the_run_folder(tmp_path):
    cfg = load_config("gaitbase_casiab_cpu", [f"data.store={tmp_path / 'stores' / 's'}"])
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    dumped = dump_config(cfg, relative_to=run)
    assert dumped["data"]["store"] == "../../stores/s"
    (run / "config.yaml").write_text(yaml.safe_dump(dumped))
    assert load_config(run / "config.yaml").data.store == (tmp_path / "stores" / "s").resolve()


@pytest.mark.parametrize("dataset", ["casiab", "gait3d", "grew", "oumvlp", "ccpg", "sustech1k"])
def test_full_size_qgait_recipes_follow_the_cpu_recipes_measured_best(dataset):
    """Each dataset's full-size QGait W4A4 / W8A8 recipe: its FP recipe's data and model, two-stage LSQ + STE with
    the soft quantizer, IDC and IDD off (what docs/lowbit.md kept), scaled to the FP schedule as the CPU recipe is
    (15 % + 5 % of the FP iterations at a tenth / a hundredth of its lr)."""
    fp, cpu = load_config(f"gaitbase_{dataset}"), load_config("qgait_w4a4_cpu")
    for bits in (4, 8):
        q = load_config(f"qgait_w{bits}a{bits}_{dataset}")
        assert q.data == fp.data and q.model == fp.model and q.eval == fp.eval
        assert (q.quant.config.weight_bits, q.quant.config.act_bits) == (bits, bits)
        assert q.quant.config.quantizer == cpu.quant.config.quantizer == "lsq"
        assert q.quant.stage1.rounding == q.quant.stage2.rounding == "ste" and q.quant.idc is None
        assert q.quant.idd is None and cpu.quant.idc is None
        assert q.quant.bn_reestimate_batches == cpu.quant.bn_reestimate_batches > 0
        assert q.quant.stage1.iterations == round(0.15 * fp.train.iterations)
        assert q.quant.stage2.iterations == round(0.05 * fp.train.iterations)
        assert q.quant.stage1.lr == pytest.approx(fp.optim.lr / 10) and q.quant.stage2.lr == pytest.approx(fp.optim.lr / 100)


@pytest.mark.parametrize("dataset, blocks", [("casiab", [1, 1, 1, 1]), ("gait3d", [1, 4, 4, 1]), ("ccpg", [1, 1, 1, 1]),
                                             ("sustech1k", [1, 1, 1, 1])])
def test_gaitkd_pairs_distil_the_datasets_gaitbase_recipe_from_its_deepgaitv2(dataset, blocks):
    """Each full-size GaitKD pair: the student is the dataset's GaitBase recipe plus GaitKD's reference terms (KL at
    T = 4 weight 1, AB margin 1 weight 0.003); the teacher is DeepGaitV2 (P3D, the blocks of OpenGait's DeepGaitV2
    recipe for the dataset) on the same data, partition, input and protocol, with the same strips and part
    embeddings, so the KL and AB terms compare like with like."""
    fp = load_config(f"gaitbase_{dataset}")
    student, teacher = load_config(f"gaitkd_deepgaitv2_gaitbase_{dataset}"), load_config(f"deepgaitv2_{dataset}")
    assert student.data == fp.data and student.model == fp.model and student.optim == fp.optim
    assert student.train == fp.train and student.loss == fp.loss and student.eval == fp.eval
    d = student.distill
    assert (d.kl.weight, d.kl.temperature, d.kl.calibration) == (1.0, 4.0, "none")
    assert (d.ab.weight, d.ab.margin) == (0.003, 1.0)
    assert teacher.distill is None and teacher.model.name == "deepgaitv2"
    assert teacher.model.args["mode"] == "p3d" and teacher.model.args["blocks"] == blocks
    for key in ("bins", "embed_dim", "strides"):
        assert teacher.model.args[key] == student.model.args[key]
    assert teacher.data.partition == fp.data.partition and teacher.data.input_size == fp.data.input_size
    assert teacher.data.store == fp.data.store and teacher.eval == fp.eval
    assert (teacher.data.p, teacher.data.k, teacher.train.iterations) == (fp.data.p, fp.data.k, fp.train.iterations)


def test_mixed_w3_recipe_is_the_measured_lcpaq_row():
    """The shipped mixed-precision recipe trains exactly the bit map and schedule the low-bit study measured."""
    recipe = load_config("qgait_mixed_w3_cpu")
    row = load_config(REPO / "results" / "lowbit" / "configs" / "w3a3" / "mixed_lcpaq.yaml")
    assert recipe.quant.config.bit_map == row.quant.config.bit_map and recipe.quant.config.bit_map
    assert (recipe.quant.config.weight_bits, recipe.quant.config.act_bits) == (3, 3)
    for stage in ("stage1", "stage2"):
        a, b = getattr(recipe.quant, stage), getattr(row.quant, stage)
        assert (a.iterations, a.lr, a.milestones, a.rounding) == (b.iterations, b.lr, b.milestones, b.rounding)
    assert recipe.quant.idc is None and recipe.quant.bn_reestimate_batches == 50
