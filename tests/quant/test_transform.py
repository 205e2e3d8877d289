"""quantize_ / calibrate_ / quantized layers on a toy gait-like model (no qgait.models import: model-agnostic)."""

from __future__ import annotations

import ast
import copy
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import qgait.quant as Q
from qgait.quant import (
    LSQQuantizer,
    QuantConfig,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    calibrate_,
    quant_layers,
    quant_summary,
    quant_summary_dict,
    quantize_,
    iter_quantizers,
    set_alpha_,
    set_quant_enabled_,
    set_rounding_,
    step_parameters,
)


class SepFC(nn.Module):
    """GaitBase-style per-part FC as a grouped 1x1 Conv1d: [n, c_in, p] -> [n, c_out, p]."""

    def __init__(self, p: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.p, self.c_out = p, c_out
        self.fc = nn.Conv1d(p * c_in, p * c_out, 1, groups=p, bias=False)

    def forward(self, x):
        n, c, p = x.shape
        y = self.fc(x.permute(0, 2, 1).reshape(n, p * c, 1))  # [n, p*c_out, 1]
        return y.reshape(n, p, self.c_out).permute(0, 2, 1)


class Toy(nn.Module):
    """Silhouettes [n, t, h, w] in {0,1} -> (embeddings [n, 6, 4], logits [n, 5])."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for _ in range(2)]
        )
        self.temporal = nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0))
        self.head = nn.ModuleDict({"fc": SepFC(4, 8, 6), "cls": nn.Linear(24, 5)})

    def forward(self, sil):
        n, t, h, w = sil.shape
        x = self.stem(sil.reshape(n * t, 1, h, w))
        for b in self.blocks:
            x = b(x)
        x = x.reshape(n, t, 8, h, w).transpose(1, 2)  # [n, c, t, h, w]
        x = self.temporal(x).amax(2)  # [n, c, h, w], signed (no ReLU)
        parts = x.reshape(n, 8, 4, -1).mean(-1)  # [n, c, p]
        emb = self.head["fc"](parts)  # [n, 6, p]
        return emb, self.head["cls"](emb.flatten(1))


ALL = ["stem.0", "blocks.0.0", "blocks.1.0", "temporal", "head.fc.fc", "head.cls"]


def _model(seed=0):
    torch.manual_seed(seed)
    m = Toy()
    # non-trivial BN statistics
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(_sil(4))
    return m.eval()


def _sil(n, t=3, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.rand(n, t, 16, 8, generator=g) > 0.5).float()


def _calib():
    return [_sil(4, seed=i) for i in range(3)]


def test_every_target_replaced_and_is_still_nn_class():
    m = quantize_(_model(), QuantConfig())
    layers = dict(quant_layers(m))
    assert list(layers) == ALL
    assert isinstance(layers["stem.0"], QuantConv2d) and isinstance(layers["stem.0"], nn.Conv2d)
    assert isinstance(layers["temporal"], QuantConv3d) and isinstance(layers["head.fc.fc"], QuantConv1d)
    assert isinstance(layers["head.cls"], QuantLinear) and isinstance(layers["head.cls"], nn.Linear)
    fc = layers["head.fc.fc"]
    assert fc.groups == 4 and fc.weight_quantizer.step.shape == (24,)  # per output channel of the grouped conv
    assert layers["stem.0"].input_quantizer is None  # exact silhouette input
    assert all(layers[n].input_quantizer is not None for n in ALL[1:])
    keys = set(m.state_dict())
    assert {"stem.0.weight", "head.fc.fc.weight", "head.cls.bias"} <= keys
    assert "stem.0.weight_quantizer.step" in keys and "head.cls.input_quantizer.initialized" in keys
    assert len(step_parameters(m)) == len(list(iter_quantizers(m))) == 6 + 5


def test_parameters_shared_not_copied():
    fp = _model()
    w = fp.blocks[0][0].weight
    m = quantize_(fp, QuantConfig())
    assert m.blocks[0][0].weight is w


def test_exclude_bitmap_and_keep_first_last():
    cfg = QuantConfig(
        weight_bits=4,
        act_bits=4,
        exclude=["blocks.1"],  # a container: its children are excluded too
        bit_map={"blocks.*": {"weight": 2}, "blocks.0.0": {"act": 3}, "temporal": {"weight": 6, "act": 5}},
        keep_first_last_8bit=True,
    )
    m = quantize_(_model(), cfg)
    assert type(m.blocks[1][0]) is nn.Conv2d
    rows = {r["name"]: r for r in quant_summary_dict(m)}
    assert "blocks.1.0" not in rows
    assert (rows["stem.0"]["weight_bits"], rows["stem.0"]["act_bits"]) == (8, None)
    assert (rows["head.cls"]["weight_bits"], rows["head.cls"]["act_bits"]) == (8, 8)
    # exact name wins over the pattern for "act", the pattern still gives "weight"
    assert (rows["blocks.0.0"]["weight_bits"], rows["blocks.0.0"]["act_bits"]) == (4, 3)
    assert (rows["temporal"]["weight_bits"], rows["temporal"]["act_bits"]) == (6, 5)
    assert (rows["head.fc.fc"]["weight_bits"], rows["head.fc.fc"]["act_bits"]) == (4, 4)


def test_bitmap_pattern_precedence():
    cfg = QuantConfig(bit_map={"blocks.*": {"weight": 2}, "blocks.1.*": {"weight": 5}})
    rows = {r["name"]: r for r in quant_summary_dict(quantize_(_model(), cfg))}
    assert rows["blocks.0.0"]["weight_bits"] == 2 and rows["blocks.1.0"]["weight_bits"] == 5


def test_first_last_options_and_targets():
    m = quantize_(_model(), QuantConfig(first_layer_exact_input=False, targets=["Conv2d", "Linear"]))
    assert m.stem[0].input_quantizer is not None
    assert type(m.temporal) is nn.Conv3d and type(m.head["fc"].fc) is nn.Conv1d
    m = quantize_(_model(), QuantConfig(first_layer="blocks.0.0", last_layer="head.fc.fc", keep_first_last_8bit=True))
    assert m.blocks[0][0].input_quantizer is None and m.stem[0].input_quantizer is not None
    assert m.head["fc"].fc.weight_quantizer.bits == 8 and m.head["cls"].weight_quantizer.bits == 4


@pytest.mark.parametrize(
    "cfg",
    [
        dict(exclude=["no_such_layer*"]),
        dict(bit_map={"blocks.9.0": {"weight": 2}}),
        dict(first_layer="stem.1"),
        dict(last_layer="nope"),
        dict(exclude=["*"]),
    ],
)
def test_quantize_errors(cfg):
    with pytest.raises(ValueError):
        quantize_(_model(), QuantConfig(**cfg))


def test_refuses_double_quantization_and_bad_config():
    m = quantize_(_model(), QuantConfig())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(m, QuantConfig())
    with pytest.raises(ValidationError):
        quantize_(_model(), {"weigth_bits": 4})
    with pytest.raises(ValueError, match="root"):
        quantize_(nn.Linear(3, 3), QuantConfig())


def test_shared_module_replaced_everywhere():
    conv = nn.Conv2d(2, 2, 1)
    m = nn.Module()
    m.a = conv
    m.b = nn.Sequential(conv)
    quantize_(m, QuantConfig())
    assert isinstance(m.a, QuantConv2d) and m.b[0] is m.a


def _cos(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize(
    "cfg,min_cos",
    [
        (dict(lsq_init="mse"), 0.999),
        (dict(lsq_init="minmax"), 0.999),
        (dict(quantizer="ptq"), 0.999),
        (dict(quantizer="ptq", ptq_method="percentile"), 0.999),
        # LSQ's paper init 2 mean|x| / sqrt(Q_P) is a training start, not a PTQ: at 8 bits it spans only
        # about +-21 of the +-127 levels for Gaussian weights (measured cosine here: 0.998)
        (dict(), 0.99),
    ],
)
def test_w8a8_close_to_fp(cfg, min_cos):
    fp = _model()
    q = quantize_(copy.deepcopy(fp), QuantConfig(weight_bits=8, act_bits=8, **cfg))
    calibrate_(q, _calib())
    assert all(qq.is_initialized for _, qq in iter_quantizers(q))
    x = _sil(6, seed=99)
    with torch.no_grad():
        (e_fp, l_fp), (e_q, l_q) = fp(x), q(x)
    assert _cos(e_fp, e_q) > min_cos and _cos(l_fp, l_q) > min_cos
    q4 = quantize_(copy.deepcopy(fp), QuantConfig(weight_bits=4, act_bits=4, **cfg))
    calibrate_(q4, _calib())
    with torch.no_grad():
        assert _cos(e_fp, q4(x)[0]) < _cos(e_fp, e_q)  # coarser grid, larger error


def test_calibrate_auto_sign_and_training_flag():
    m = quantize_(_model(), QuantConfig(act_bits=8))
    m.train()
    bn_mean = m.stem[1].running_mean.clone()
    calibrate_(m, _calib(), method="minmax")
    assert m.training and torch.equal(m.stem[1].running_mean, bn_mean)
    signs = {r["name"]: r["act_signed"] for r in quant_summary_dict(m)}
    assert signs["blocks.0.0"] is False and signs["temporal"] is False  # after ReLU
    assert signs["head.fc.fc"] is True  # after the Conv3d without ReLU
    assert m.head["fc"].fc.input_quantizer.q_n == 128
    forced = quantize_(_model(), QuantConfig(act_signed="signed"))
    calibrate_(forced, _calib())
    assert all(r["act_signed"] is True for r in quant_summary_dict(forced) if r["act_bits"])


def test_calibrate_errors_and_custom_forward():
    with pytest.raises(ValueError):
        calibrate_(_model(), _calib())  # not quantized
    m = quantize_(_model(), QuantConfig())
    with pytest.raises(ValueError):
        calibrate_(m, [])
    assert not any(q.observer is not None for _, q in iter_quantizers(m))
    calls = []

    def fwd(model, batch):
        calls.append(1)
        return model(batch["sil"])

    calibrate_(m, [{"sil": s} for s in _calib()], forward_fn=fwd, max_batches=2)
    assert len(calls) == 2

    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x)

    p = quantize_(Partial(), QuantConfig(first_layer_exact_input=False))
    with pytest.raises(RuntimeError, match="unused"):
        calibrate_(p, [torch.randn(2, 3)])
    calibrate_(p, [torch.randn(2, 3)], strict=False)
    assert not p.unused.input_quantizer.is_initialized and p.unused.weight_quantizer.is_initialized


def test_lazy_init_on_first_forward():
    m = quantize_(_model(), QuantConfig())
    m(_sil(2))
    assert all(q.is_initialized for _, q in iter_quantizers(m))


def _train_steps(m, n=3, rounding=None):
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    m.train()
    for i in range(n):
        emb, logits = m(_sil(4, seed=10 + i))
        loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + emb.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for p in m.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        opt.step()
    m.eval()


def test_save_reload_identical_outputs(tmp_path):
    cfg = QuantConfig(weight_bits=4, act_bits=4, bit_map={"temporal": {"weight": 3}})
    m = quantize_(_model(), cfg)
    calibrate_(m, _calib())
    _train_steps(m)
    steps_before = [q.step.detach().clone() for _, q in iter_quantizers(m)]
    path = tmp_path / "q.pt"
    torch.save(m.state_dict(), path)
    fresh = quantize_(_model(seed=123), cfg)
    fresh.load_state_dict(torch.load(path), strict=True)
    assert [q.is_signed for _, q in iter_quantizers(fresh)] == [q.is_signed for _, q in iter_quantizers(m)]
    assert all(torch.equal(a, q.step) for a, (_, q) in zip(steps_before, iter_quantizers(fresh)))
    x = _sil(3, seed=7)
    with torch.no_grad():
        for a, b in zip(m(x), fresh(x)):
            assert torch.equal(a, b)


def test_stage2_soft_rounding_and_alpha():
    m = quantize_(_model(), QuantConfig(quantizer="soft", soft={"alpha_start": 3.0}))
    assert all(q.rounding == "soft_backward" and float(q.alpha) == 3.0 for _, q in iter_quantizers(m))
    calibrate_(m, _calib())
    set_alpha_(m, 7.5)
    _train_steps(m, 2)
    set_rounding_(m, "soft_forward")
    _train_steps(m, 2)
    set_rounding_(m, "ste")
    assert all(q.rounding == "ste" and float(q.alpha) == 7.5 for _, q in iter_quantizers(m))
    with pytest.raises(ValueError):
        set_rounding_(m, "fuzzy")
    # stage-1 checkpoint loads into a stage-2 model (same keys)
    s1 = quantize_(_model(), QuantConfig())
    s1.load_state_dict(m.state_dict())


def test_quant_enabled_toggle_gives_fp():
    fp = _model()
    m = quantize_(copy.deepcopy(fp), QuantConfig(weight_bits=2, act_bits=2))
    calibrate_(m, _calib())
    x = _sil(2, seed=5)
    set_quant_enabled_(m, False)
    with torch.no_grad():
        assert torch.allclose(m(x)[0], fp(x)[0], atol=1e-6)
    set_quant_enabled_(m, True, weights=True, activations=True)
    with torch.no_grad():
        assert not torch.allclose(m(x)[0], fp(x)[0], atol=1e-3)


def test_summary_lists_every_layer_and_is_json():
    m = quantize_(_model(), QuantConfig(keep_first_last_8bit=True))
    text = quant_summary(m)
    for name in ALL:
        assert name in text
    assert "exact" in text and "auto" in text
    calibrate_(m, _calib())
    rows = quant_summary_dict(m)
    assert [r["name"] for r in rows] == ALL and all(r["initialized"] for r in rows)
    json.dumps(rows)
    assert all(r["weight_step_min"] <= r["weight_step_mean"] <= r["weight_step_max"] for r in rows)


def test_module_constructor_from_float_and_int_weight():
    conv = nn.Conv1d(8, 12, 1, groups=4, bias=False)
    q = QuantConv1d.from_float(conv, weight_bits=4, act_bits=8)
    assert "w_bits=4, a_bits=8" in repr(q)
    x = torch.randn(2, 8, 5)
    y = q(x)
    assert y.shape == (2, 12, 5)
    w_int, s = q.int_weight()
    assert w_int.dtype == torch.int8 and w_int.min() >= -8 and w_int.max() <= 7
    assert torch.allclose(w_int.float() * s[:, None, None], q.quantized_weight().detach())
    direct = QuantConv2d(3, 4, 3, padding=1, weight_bits=5, act_bits=6, quantize_input=False)
    assert direct.input_quantizer is None and direct.weight_quantizer.bits == 5
    assert direct(torch.randn(1, 3, 6, 6)).shape == (1, 4, 6, 6)
    custom = LSQQuantizer(3, signed=True, per_channel=False)
    lin = QuantLinear(4, 2, weight_quantizer=custom)
    assert lin.weight_quantizer is custom
    with pytest.raises(TypeError):
        QuantConv2d.from_float(conv)
    with pytest.raises(TypeError):
        QuantLinear.from_float(nn.Linear(2, 2), wbits=3)


def test_quant_package_is_model_agnostic():
    """qgait.quant imports nothing from other qgait packages."""
    root = Path(Q.__file__).parent
    for f in root.glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                assert node.level >= 1 or not mod.startswith("qgait"), f"{f.name} imports {mod}"
                assert node.level <= 1, f"{f.name}: relative import outside qgait.quant"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("qgait") for a in node.names), f"{f.name}"


def test_state_dict_roundtrip_via_buffer(tmp_path):
    """steps, initialized and signed_state are all in the state dict (BytesIO roundtrip)."""
    m = quantize_(_model(), QuantConfig())
    calibrate_(m, _calib())
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert sd["blocks.0.0.input_quantizer.initialized"].item() is True
    assert sd["blocks.0.0.input_quantizer.signed_state"].item() == 0
    assert "blocks.0.0.input_quantizer.alpha" in sd
