"""Issue 13's soft-quantizer variants: the step-size gradient kept in LSQ's STE form (``step_grad="ste"``), the soft
stage applied to weights only or activations only (``apply_to``), and the soft derivative's value, peak and limits
at DSQ-range and QGait-range alphas against the closed form."""

from __future__ import annotations

import math

import pytest
import torch

from qgait.quant import LSQQuantizer, QuantConfig, lsq_fake_quantize, quantize_, set_rounding_, soft_round_derivative
from qgait.quant.config import SoftQuantConfig
from qgait.quant.fake_quant import set_compiled_kernels


def _grads(x, s, rounding, alpha, step_grad, ch_axis=None):
    xx, ss = x.clone().requires_grad_(), s.clone().requires_grad_()
    gout = torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    lsq_fake_quantize(xx, ss, 8, 7, 1.0, ch_axis, rounding, alpha, step_grad=step_grad).backward(gout)
    return xx.grad, ss.grad, gout


@pytest.mark.parametrize("rounding", ["soft_backward", "soft_forward"])
def test_ste_step_grad_keeps_lsq_step_gradient_and_soft_input_gradient(rounding):
    x = torch.tensor([0.3, 1.45, 2.5, -3.2, -9.0, 8.4], dtype=torch.float64)  # two outside [-8, 7]
    s = torch.tensor(1.0, dtype=torch.float64)
    gx_soft, gs_soft, gout = _grads(x, s, rounding, 3.0, "soft")
    gx_ste_step, gs_ste_step, _ = _grads(x, s, rounding, 3.0, "ste")
    # input gradient: the soft derivative inside the clip range in both variants
    assert torch.equal(gx_soft, gx_ste_step)
    inside = (x >= -8) & (x <= 7)
    assert torch.allclose(gx_ste_step, gout * soft_round_derivative(x, 3.0) * inside)
    # step gradient: R(u) - u inside (R' = 1, LSQ's form), the clip bound outside
    u = x.clamp(-8, 7)
    r = torch.round(u) if rounding == "soft_backward" else \
        u.floor() + 0.5 + 0.5 * torch.tanh(3.0 * (u - u.floor() - 0.5)) / math.tanh(1.5)
    ds = torch.where(inside, r - u, r)
    assert torch.allclose(gs_ste_step, (gout * ds).sum())
    assert not torch.allclose(gs_ste_step, gs_soft)  # the option changes something


def test_ste_step_grad_equals_ste_step_gradient_for_soft_backward():
    """soft_backward forward is the hard round, so with step_grad='ste' its step gradient IS LSQ's."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, dtype=torch.float64) * 3
    s = torch.rand(6, dtype=torch.float64) * 0.4 + 0.1
    _, gs_ste, _ = _grads(x, s, "ste", 1.0, "soft", ch_axis=1)
    _, gs_var, _ = _grads(x, s, "soft_backward", 5.0, "ste", ch_axis=1)
    assert torch.allclose(gs_ste, gs_var, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_fused_kernels_agree_for_ste_step_grad(fused):
    torch.manual_seed(1)
    x = torch.randn(1 << 17) * 2  # above COMPILE_MIN_NUMEL: the fused kernels when enabled
    s = torch.tensor(0.3)
    ref = _grads(x.double(), s.double(), "soft_backward", 4.0, "ste")
    set_compiled_kernels(fused)
    try:
        got = _grads(x, s, "soft_backward", 4.0, "ste")
    finally:
        set_compiled_kernels(True)
    torch.testing.assert_close(got[0], ref[0].float(), rtol=1e-5, atol=1e-6)
    assert abs(got[1].item() - ref[1].item()) <= 1e-4 * (ref[2].abs().sum().item() + 1)


def test_step_grad_validation():
    with pytest.raises(ValueError, match="step_grad"):
        LSQQuantizer(4, step_grad="soft_ish")
    q = LSQQuantizer(4)
    with pytest.raises(ValueError, match="step_grad"):
        q.set_step_grad("nope")
    with pytest.raises(ValueError, match="step_grad"):
        lsq_fake_quantize(torch.ones(3), torch.tensor(1.0), 8, 7, step_grad="x")


def _small_model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    quantize_(m, QuantConfig(weight_bits=4, act_bits=4))
    m(torch.rand(2, 1, 8, 8))
    return m


@pytest.mark.parametrize("apply_to,soft_roles", [("both", {"weight", "activation"}), ("weights", {"weight"}),
                                                 ("activations", {"activation"})])
def test_apply_to_rounds_only_the_chosen_role_softly(apply_to, soft_roles):
    m = _small_model()
    set_rounding_(m, "soft_backward", apply_to=apply_to, step_grad="ste")
    qs = [q for q in m.modules() if isinstance(q, LSQQuantizer)]
    assert {q.role for q in qs} == {"weight", "activation"}
    for q in qs:
        assert q.rounding == ("soft_backward" if q.role in soft_roles else "ste")
        assert q.step_grad == "ste"
    set_rounding_(m, "ste")
    assert all(q.rounding == "ste" for q in qs)
    with pytest.raises(ValueError, match="apply_to"):
        set_rounding_(m, "soft_backward", apply_to="bias")


def test_soft_config_defaults_and_validation():
    c = SoftQuantConfig()
    assert (c.step_grad, c.apply_to) == ("soft", "both")  # methods.md 1.3's reading stays the default
    with pytest.raises(ValueError):
        SoftQuantConfig(apply_to="everything")


@pytest.mark.parametrize("alpha", [1.0, 2.2, 3.0, 10.0])
def test_soft_derivative_value_peak_and_floor_against_closed_form(alpha):
    """d softround/du = alpha / (2 tanh(alpha/2)) sech^2(alpha r): peak at r = 0 (thresholds), floor at r = +-1/2
    (grid points); its mean over a unit interval is 1 (softround rises by exactly 1 per step)."""
    coef = alpha / (2 * math.tanh(alpha / 2))
    u = torch.tensor([0.5, 1.5, 0.0, 1.0, 0.25], dtype=torch.float64)
    d = soft_round_derivative(u, alpha)
    sech2 = lambda z: 1 / math.cosh(z) ** 2  # noqa: E731
    expected = [coef, coef, coef * sech2(alpha / 2), coef * sech2(alpha / 2), coef * sech2(alpha * 0.25)]
    assert torch.allclose(d, torch.tensor(expected, dtype=torch.float64), rtol=1e-6)  # alpha is held in float32
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)
    mean = torch.trapezoid(soft_round_derivative(grid, alpha), grid)
    assert abs(mean.item() - 1.0) < 1e-6
    # DSQ's range (alpha <= 3) keeps the peak gain under 1.7; QGait's 10 gives 5
    assert (coef < 1.7) == (alpha <= 3.0)
