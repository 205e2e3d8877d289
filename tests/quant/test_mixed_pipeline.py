"""Target layers, MACs, runtimes, residual ties, options, and the bit map applied through ``quantize_`` and written
into a quantize config (toy models; GaitBase for the ties)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from qgait.quant import QuantConfig, quant_layers, quantize_
from qgait.quant.mixed import (RUNTIMES, Tie, allocate, bit_map_of, build_options, count_macs, find_residual_ties,
                               get_runtime, layer_sensitivity, target_layers, uniform, write_quant_config)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.block1 = Block(4, 8, 2)
        self.block2 = Block(8, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(x.mean((2, 3)))


def _model() -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet().eval()


def _batches(n: int = 2):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(8, 1, 8, 8, generator=g).round(), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


NAMES = ["stem.0", "block1.conv1", "block1.conv2", "block1.downsample.0", "block2.conv1", "block2.conv2", "head"]


def test_target_layers_follow_quantize_():
    m = _model()
    layers = target_layers(m)
    assert [t.name for t in layers] == NAMES
    assert [t.exact_input for t in layers] == [True] + [False] * 6
    assert layers[0].kind == "Conv2d" and layers[-1].kind == "Linear" and layers[-1].n_params == 24
    sub = target_layers(m, QuantConfig(exclude=["block2*"], first_layer_exact_input=False))
    assert [t.name for t in sub] == NAMES[:4] + ["head"] and not any(t.exact_input for t in sub)
    assert not any(type(mod).__name__.startswith("Quant") for mod in m.modules())  # the model is untouched
    with pytest.raises(ValueError, match="matches no module"):
        target_layers(m, QuantConfig(exclude=["nope"]))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.used(x)


def test_count_macs_matches_the_formulas():
    m = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    macs = count_macs(m, torch.rand(3, 4, 8, 8), ["0", "2"])
    assert macs["0"] == 3 * 6 * 4 * 4 * (4 // 2) * 9
    assert macs["2"] == 3 * 5 * 96
    with pytest.raises(ValueError, match="did not run"):
        count_macs(Unused(), torch.rand(1, 2), ["used", "unused"])
    with pytest.raises(ValueError, match="no modules named"):
        count_macs(m, torch.rand(3, 4, 8, 8), ["9"])


def test_runtime_table():
    ort, pt2e, ideal = RUNTIMES["onnxruntime"], get_runtime("pt2e"), get_runtime("ideal")
    assert [ort.storage_bits(b) for b in (2, 3, 4, 5, 8)] == [4, 4, 4, 8, 8]
    assert [pt2e.storage_bits(b) for b in (2, 4, 8)] == [8, 8, 8]
    assert ort.exec_bits(3) == 8 and ort.native(8) and not ort.native(4)
    assert ideal.exec_bits(3) == 3 and ideal.storage_bits(3) == 3
    with pytest.raises(ValueError, match="unknown runtime"):
        get_runtime("tensorrt")


def test_residual_ties_on_a_toy_resnet_and_gaitbase():
    m = _model()
    ties = find_residual_ties(m, torch.rand(1, 1, 8, 8), NAMES)
    # the stem's output reaches block1's add only through a ReLU: no tie; block2's shortcut is the identity
    assert ties == [Tie(("block1.conv2", "block1.downsample.0"))]
    assert find_residual_ties(m, torch.rand(1, 1, 8, 8), NAMES, on="weight")[0].on == "weight"

    from qgait.models import build_model

    gb = build_model("gaitbase", width=0.25, strides=[1, 2, 2, 1], bins=[8], embed_dim=128)
    names = [t.name for t in target_layers(gb)]
    got = find_residual_ties(gb, torch.rand(1, 4, 32, 22), names)
    assert [t.layers for t in got] == [(f"backbone.module.{i}.conv2", f"backbone.module.{i}.downsample.0")
                                       for i in (4, 5, 6)]


def test_build_options_costs_and_metrics():
    m = _model()
    layers = target_layers(m)
    names = [t.name for t in layers]
    sens = layer_sensitivity(m, _loss, _batches(), names, weight_bits=(2, 3, 4, 8), act_bits=(3, 4, 8), probes=4)
    macs = count_macs(m, torch.rand(1, 1, 8, 8), names)
    ideal = build_options(sens, layers, macs, act_bits=(3, 4, 8))
    assert [o.bits for o in ideal["stem.0"]] == [(2, None), (3, None), (4, None), (8, None)]
    assert len(ideal["head"]) == 12
    o = next(o for o in ideal["block1.conv2"] if o.bits == (3, 4))
    assert o.metrics == {"size_bits": 3 * 8 * 8 * 9, "bops": macs["block1.conv2"] * 12}
    assert o.cost == pytest.approx(sens.layers["block1.conv2"].omega(3, 4))
    assert ideal["stem.0"][0].metrics["bops"] == macs["stem.0"] * 2 * 8  # exact input counted at 8 bits
    ort = build_options(sens, layers, macs, act_bits=(3, 4, 8), runtime="onnxruntime")
    assert {o.metrics["bops"] for o in ort["head"]} == {macs["head"] * 64}  # int8 kernels whatever the bits
    assert {o.metrics["size_bits"] for o in ort["head"] if o.weight_bits <= 4} == {24 * 4}
    pinned = build_options(sens, layers, macs, act_bits=(3, 4, 8), restrict={"head": [(8, 8)]})
    assert [o.bits for o in pinned["head"]] == [(8, 8)]
    with pytest.raises(ValueError, match="no option"):
        build_options(sens, layers, macs, restrict={"head": [(5, 5)]})
    with pytest.raises(ValueError, match="unknown layers"):
        build_options(sens, layers, macs, restrict={"nope": [(8, 8)]})


def test_bit_map_applies_through_quantize_and_into_a_config(tmp_path):
    m = _model()
    layers = target_layers(m)
    names = [t.name for t in layers]
    ex = torch.rand(1, 1, 8, 8)
    sens = layer_sensitivity(m, _loss, _batches(), names, act_bits=(3, 4, 8), probes=4)
    options = build_options(sens, layers, count_macs(m, ex, names), act_bits=(3, 4, 8))
    ties = find_residual_ties(m, ex, names)
    w3a3 = uniform(options, 3, 3)
    alloc = allocate(options, {"size_bits": w3a3.metrics["size_bits"], "bops": w3a3.metrics["bops"]}, ties)
    assert alloc.cost <= w3a3.cost + 1e-15
    assert alloc.choice["block1.conv2"].bits == alloc.choice["block1.downsample.0"].bits
    bm = bit_map_of(alloc)
    assert "act" not in bm["stem.0"] and set(bm) == set(names)

    q = quantize_(_model(), QuantConfig(weight_bits=4, act_bits=4, bit_map=bm))
    got = {n: (layer.weight_quantizer.bits, None if layer.input_quantizer is None else layer.input_quantizer.bits)
           for n, layer in quant_layers(q)}
    assert got == alloc.bits()
    # make the map differ from the defaults somewhere, so that the check above is not vacuous
    forced = allocate(options, {"size_bits": uniform(options, 2, 3).metrics["size_bits"]}, ties)
    q2 = quantize_(_model(), QuantConfig(weight_bits=4, act_bits=4, bit_map=bit_map_of(forced)))
    assert {layer.weight_quantizer.bits for _, layer in quant_layers(q2)} == {2}

    from qgait.config import load_config

    base = tmp_path / "configs" / "base.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump({"name": "base", "data": {"store": "stores/x"},
                                    "quant": {"config": {"weight_bits": 4, "act_bits": 4}}}))
    out = write_quant_config(tmp_path / "runs" / "mixed.yaml", bm, base=base, comment="budget: W3A3 size + BOPs")
    text = out.read_text()
    assert text.startswith("# budget: W3A3 size + BOPs\n") and "base: ../configs/base.yaml" in text
    cfg = load_config(out)
    assert cfg.name == "mixed" and cfg.quant.config.weight_bits == 4
    assert {k: v.model_dump(exclude_none=True) for k, v in cfg.quant.config.bit_map.items()} == bm
    with pytest.raises(ValueError, match="empty"):
        write_quant_config(tmp_path / "x.yaml", {}, base=base)
    with pytest.raises(ValueError):
        write_quant_config(tmp_path / "x.yaml", {"head": {"weight": 1}}, base=base)


def test_mixed_package_stays_inside_qgait_quant():
    """qgait.quant.mixed imports only from qgait.quant (model-agnostic: no qgait.models, no workflows), and
    qgait.atomic, the standard-library-only file writer every layer shares."""
    import ast
    from pathlib import Path

    import qgait.quant.mixed as M

    for f in Path(M.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level >= 1 or not (node.module or "").startswith("qgait"), f"{f.name}: {node.module}"
                assert node.level <= 2 or (node.level == 3 and node.module == "atomic"), \
                    f"{f.name}: relative import outside qgait.quant"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("qgait") for a in node.names), f.name
