from pathlib import Path

import pytest

from qgait.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_recipes_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.name
    assert cfg.data.store.is_absolute()


def test_cpu_recipe_inherits_and_overrides():
    cfg = load_config(REPO / "configs" / "gaitbase_casiab_cpu.yaml")
    assert cfg.data.input_size == (32, 22)
    assert cfg.loss.triplet.margin == 0.2  # from the base recipe
    assert cfg.data.source == (REPO / ".." / "shared" / "data" / "casia-b").resolve()


def test_misspelt_key_is_an_error_naming_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {store: s}\ntrain: {iteratons: 5}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "bad.yaml" in str(e.value) and "train.iteratons" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_and_missing_required(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {store: s, p: many}\n")
    with pytest.raises(ConfigError, match="data.p"):
        load_config(p)
    p.write_text("name: x\n")
    with pytest.raises(ConfigError, match="data"):
        load_config(p)


def test_overrides_and_relative_paths(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndata: {store: stores/s}\n")
    cfg = load_config(p, ["train.iterations=7", "optim.milestones=[1, 2]"])
    assert cfg.train.iterations == 7 and cfg.optim.milestones == [1, 2]
    assert cfg.data.store == (tmp_path / "stores" / "s").resolve()
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(p, ["train.nope=1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    p = tmp_path / "y.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(p)


def test_malformed_override_value_is_a_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndata: {store: s}\n")
    for bad in ("train.iterations=[1,", "optim.milestones={a", "name='x"):
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(p, [bad])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(p, ["train.iterations"])
