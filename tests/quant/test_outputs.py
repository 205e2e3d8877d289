"""Output quantizers (QuantConfig.output_quant) and the residual-operand finder, on generic modules and GaitBase."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qgait.quant import (
    LSQQuantizer,
    QuantConfig,
    calibrate_,
    find_residual_outputs,
    output_quantizers,
    quant_summary,
    quant_summary_dict,
    quantize_,
)


class ResBlock(nn.Module):
    """A generic residual block (not a qgait model): conv-bn-relu-conv-bn + projection, added, ReLU."""

    def __init__(self, c_in: int = 3, c: int = 8) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.proj = nn.Conv2d(c_in, c, 1)  # no batch norm: the conv itself is the operand
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.proj(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
        self.block = ResBlock()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 1, 8, 8, generator=g) for _ in range(n)]


def test_find_residual_outputs_names_the_add_operands():
    # the stem's batch norm feeds an in-place ReLU (the ReLU returned the tensor last): not an operand
    assert find_residual_outputs(Net(), _batches(1)[0]) == ["block.bn2", "block.proj"]


def test_find_residual_outputs_on_gaitbase():
    from qgait.models import build_model

    m = build_model("gaitbase", width=0.125, strides=[1, 2, 2, 1], bins=[8], embed_dim=16)
    names = find_residual_outputs(m, torch.rand(1, 3, 32, 22))
    blocks = [n.rsplit(".", 1)[0] for n in names if n.endswith(".bn2")]
    assert len(blocks) == 4 and all(n.endswith(".bn2") or n.endswith(".downsample.1") for n in names)
    assert sum(n.endswith(".downsample.1") for n in names) == 3  # the three blocks that change width / stride
    assert m.training  # training flag restored


def test_output_quantizers_put_the_operands_on_their_grid():
    m = Net().eval()
    x = _batches(1)[0]
    quantize_(m, QuantConfig(weight_bits=8, act_bits=4, output_quant=["block.bn2", "block.proj"],
                             bit_map={"block.proj": {"act": 6}}))
    qs = dict(output_quantizers(m))
    assert set(qs) == {"block.bn2", "block.proj"} and all(isinstance(q, LSQQuantizer) for q in qs.values())
    assert qs["block.bn2"].bits == 4 and qs["block.proj"].bits == 6
    calibrate_(m, _batches())
    assert all(q.is_initialized for q in qs.values())
    seen = {}
    m.block.bn2.register_forward_hook(lambda _m, _i, o: seen.__setitem__("bn2", o.detach()))
    m(x)
    q = qs["block.bn2"]
    k = seen["bn2"] / q.scale
    assert torch.allclose(k, k.round(), atol=1e-4)  # on the grid s * k
    assert int(k.round().min()) >= -q.q_n and int(k.round().max()) <= q.q_p
    assert q.is_signed  # a pre-residual tensor has both signs
    rows = [r for r in quant_summary_dict(m) if r["name"].endswith("(output)")]
    assert [r["name"] for r in rows] == ["block.bn2 (output)", "block.proj (output)"]
    assert "2 output quantizers" in quant_summary(m)


def test_output_quantizers_train_save_and_reload():
    m = Net()
    cfg = QuantConfig(weight_bits=4, act_bits=4, output_quant=["*.bn2", "block.proj"])
    quantize_(m, cfg)
    calibrate_(m, _batches())
    m.train()
    m(_batches(1)[0]).square().sum().backward()
    for _, q in output_quantizers(m):
        assert q.step.grad is not None and torch.isfinite(q.step.grad).all() and q.step.grad.abs().sum() > 0
    state = copy.deepcopy(m.state_dict())
    assert "block.bn2.output_quantizer.step" in state
    m2 = Net()
    quantize_(m2, cfg)
    m2.load_state_dict(state)
    m.eval(), m2.eval()
    x = _batches(1, seed=5)[0]
    assert torch.equal(m(x), m2(x))
    m3 = copy.deepcopy(m)  # deep copies keep the hooks
    assert torch.equal(m3(x), m(x))


def test_output_quantizer_before_an_inplace_relu():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    quantize_(m, QuantConfig(weight_bits=8, act_bits=8, output_quant=["1"]))
    calibrate_(m, _batches())
    m.train()
    out = m(_batches(1)[0])
    out.sum().backward()
    assert (out >= 0).all() and m[1].output_quantizer.step.grad is not None


def test_output_quant_pattern_must_match():
    with pytest.raises(ValueError, match="output_quant pattern"):
        quantize_(Net(), QuantConfig(output_quant=["block.nothing"]))


def test_output_quantizers_stay_on_the_ste_in_the_soft_stage_by_default():
    from qgait.quant import iter_quantizers, set_rounding_

    cfg = QuantConfig(weight_bits=4, act_bits=4, quantizer="soft", output_quant=["block.bn2", "block.proj"])
    m = quantize_(Net(), cfg)
    outs = {id(q) for _, q in output_quantizers(m)}
    others = [q for _, q in iter_quantizers(m) if id(q) not in outs]
    assert len(outs) == 2 and others
    assert all(q.rounding == "ste" for _, q in output_quantizers(m))  # SoftQuantConfig.outputs == "ste"
    assert all(q.rounding == "soft_backward" for q in others)
    soft_outs = quantize_(Net(), cfg.model_copy(update={"soft": cfg.soft.model_copy(update={"outputs": "soft"})}))
    assert all(q.rounding == "soft_backward" for _, q in output_quantizers(soft_outs))
    # the stage switch: set_rounding_(..., outputs=) overrides the output quantizers only
    set_rounding_(soft_outs, "soft_forward", outputs="ste")
    assert all(q.rounding == "ste" for _, q in output_quantizers(soft_outs))
    assert all(q.rounding == "soft_forward" for _, q in iter_quantizers(soft_outs) if id(q) not in
               {id(o) for _, o in output_quantizers(soft_outs)})
    with pytest.raises(ValueError, match="rounding must be one of"):
        set_rounding_(soft_outs, "ste", outputs="fuzzy")

