"""The zoo's named models (``zoo/<name>/model.pt``): what users and later work start from without retraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qgait.config import load_config
from qgait.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENTRIES = sorted(p.parent.name for p in (REPO / "zoo").glob("*/model.pt"))


def test_the_zoo_has_its_named_models():
    assert {"gaitbase_casiab_cpu", "gaitbase_casiab_cpu_w05", "gaitset_casiab_cpu", "gaitkd_casiab_cpu"} <= set(ENTRIES)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_is_small_complete_and_matches_its_config(name):
    d = REPO / "zoo" / name
    assert (d / "model.pt").stat().st_size <= 5 * 2**20
    ck = load_checkpoint(d / "model.pt", required=("state_dict",))  # weights_only
    cfg = load_config(d / "config.yaml")
    assert ck["model_name"] == cfg.model.name and ck["model_args"] == cfg.model.args, name
    assert list(ck["input_size"]) == list(cfg.data.input_size), name
    res = json.loads((d / "results.json").read_text())
    assert 0 < res["mean"] <= 100 and res["per_subject"], name
    assert cfg.data.store is not None and cfg.data.store.parent == (REPO / "stores"), \
        f"{name}: config.yaml's store {cfg.data.store} is not under the project's stores/"
