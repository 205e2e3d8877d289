"""Quantizers: grid, LSQ gradients (closed form), soft rounding, numerical safety, PTQ calibration."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgait.quant import (
    ActObserver,
    LSQQuantizer,
    calibrate_step,
    grid_range,
    lsq_fake_quantize,
    round_soft_backward,
    round_ste,
    soft_round,
    soft_round_derivative,
)

FAST = settings(max_examples=25, deadline=None)
ROUNDINGS = ["ste", "soft_backward", "soft_forward"]


def _grid_ok(xq: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int) -> None:
    k = xq.double() / s.double()
    assert torch.allclose(k, torch.round(k), atol=1e-4), "not on the grid"
    assert k.min() >= -q_n - 1e-4 and k.max() <= q_p + 1e-4, "outside [-Q_N, Q_P]"


# ------------------------------------------------------------------------------------------------ grid
@pytest.mark.parametrize("bits", range(2, 9))
def test_grid_range(bits):
    assert grid_range(bits, True) == (2 ** (bits - 1), 2 ** (bits - 1) - 1)
    assert grid_range(bits, False) == (0, 2**bits - 1)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0])
def test_grid_range_invalid(bits):
    with pytest.raises(ValueError):
        grid_range(bits, True)


@FAST
@given(
    bits=st.integers(2, 8),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
    rounding=st.sampled_from(["ste", "soft_backward"]),
)
def test_output_on_grid_and_clipped(bits, signed, seed, scale, rounding):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 33, generator=g) * scale * 3
    q = LSQQuantizer(bits, signed=signed, rounding=rounding)
    q.initialize(x, method="lsq")
    xq = q(x)
    s = q.scale
    _grid_ok(xq, s, q.q_n, q.q_p)
    assert torch.equal(xq, torch.round((x / s).clamp(-q.q_n, q.q_p)) * s)  # the rounding rule: torch.round
    above, below = x / s > q.q_p, x / s < -q.q_n
    assert torch.allclose(xq[above], q.q_p * s.expand_as(xq)[above])
    assert torch.allclose(xq[below], -q.q_n * s.expand_as(xq)[below])
    if not signed:
        assert (xq >= 0).all()


@FAST
@given(bits=st.integers(2, 8), seed=st.integers(0, 2**16), axis=st.sampled_from([0, 1, -1]))
def test_per_channel_grid(bits, seed, axis):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, 4, generator=g) * torch.rand(6, 5, 1, generator=g)
    q = LSQQuantizer(bits, signed=True, per_channel=True, ch_axis=axis)
    xq = q(x)  # lazy init from x
    c = x.shape[axis]
    assert q.step.shape == (c,) and q.is_initialized
    shape = [1, 1, 1]
    shape[axis] = c
    _grid_ok(xq, q.scale.reshape(shape), q.q_n, q.q_p)


def test_rounding_rule_is_torch_round_half_even():
    u = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, 0.51])
    for f in (round_ste, lambda t: round_soft_backward(t, 5.0)):
        assert torch.equal(f(u), torch.round(u))
    assert torch.equal(torch.round(u), torch.tensor([-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 0.0, 1.0]))


# ------------------------------------------------------------------------------------------------ gradients
def _closed_form(x, s, q_n, q_p, g, gout, ch_axis=None):
    """LSQ gradients by hand (methods.md 1.2), float64."""
    sb = s if ch_axis is None else s.reshape([-1 if i == ch_axis else 1 for i in range(x.dim())])
    v = x / sb
    inside = (v >= -q_n) & (v <= q_p)
    ds = torch.where(inside, torch.round(v) - v, torch.where(v < -q_n, -float(q_n), float(q_p)).to(v))
    gx = gout * inside
    prod = gout * ds
    gs = prod.sum() if ch_axis is None else prod.sum(dim=[i for i in range(x.dim()) if i != ch_axis])
    return gx, gs * g


@FAST
@given(bits=st.integers(2, 8), signed=st.booleans(), seed=st.integers(0, 2**16), per_channel=st.booleans())
def test_lsq_gradient_closed_form(bits, signed, seed, per_channel):
    gen = torch.Generator().manual_seed(seed)
    q_n, q_p = grid_range(bits, signed)
    x = (torch.randn(8, 7, 3, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    ch_axis = 1 if per_channel else None
    s = (torch.rand(7 if per_channel else (), generator=gen, dtype=torch.float64) * 0.5 + 0.05).requires_grad_()
    g = 1.0 / math.sqrt((x.numel() / s.numel()) * q_p)
    gout = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y = lsq_fake_quantize(x, s, q_n, q_p, g, ch_axis)
    y.backward(gout)
    gx, gs = _closed_form(x.detach(), s.detach(), q_n, q_p, g, gout, ch_axis)
    assert torch.equal(x.grad, gx)  # 1 inside, 0 outside (STE), exactly
    assert torch.allclose(s.grad, gs, rtol=1e-10, atol=1e-12)


def test_input_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-100.0, -8.0, -3.3, 0.0, 2.2, 7.0, 7.2, 100.0], requires_grad=True)
    y = lsq_fake_quantize(x, torch.tensor(1.0), 8, 7)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 1, 1, 0, 0]))


def _composed(x, s, q_n, q_p, g, ch_axis, rounding, alpha):
    """The same quantizer written as plain autograd (grad-scale trick + rounding Functions)."""
    ss = (s - s * g).detach() + s * g
    sb = ss if ch_axis is None else ss.reshape([-1 if i == ch_axis else 1 for i in range(x.dim())])
    u = (x / sb).clamp(-q_n, q_p)
    r = {"ste": round_ste, "soft_backward": lambda t: round_soft_backward(t, alpha),
         "soft_forward": lambda t: soft_round(t, alpha)}[rounding](u)
    return r * sb


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("alpha", [0.5, 4.0, 30.0])
def test_explicit_backward_matches_autograd_composition(rounding, per_channel, alpha):
    torch.manual_seed(1)
    x1 = (torch.randn(5, 6, 4, dtype=torch.float64) * 3).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    ch_axis = 1 if per_channel else None
    s1 = (torch.rand(6 if per_channel else (), dtype=torch.float64) * 0.4 + 0.1).requires_grad_()
    s2 = s1.detach().clone().requires_grad_()
    g = 0.37
    gout = torch.randn(5, 6, 4, dtype=torch.float64)
    y1 = lsq_fake_quantize(x1, s1, 8, 7, g, ch_axis, rounding, alpha)
    y2 = _composed(x2, s2, 8, 7, g, ch_axis, rounding, alpha)
    assert torch.allclose(y1, y2, atol=1e-12)
    y1.backward(gout)
    y2.backward(gout)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-9)


def test_soft_step_gradient_uses_soft_derivative():
    """dx_q/ds = round(u) - u * softderiv(u) inside (methods.md 1.3)."""
    x = torch.tensor([0.3, 1.45, 2.5, -3.2], dtype=torch.float64)
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    lsq_fake_quantize(x, s, 8, 7, 1.0, None, "soft_backward", 3.0).sum().backward()
    expected = (torch.round(x) - x * soft_round_derivative(x, 3.0)).sum()
    assert torch.allclose(s.grad, expected)


@pytest.mark.parametrize("role,expect_n", [("weight", 4 * 9), ("activation", 9)])
def test_module_gradient_scale(role, expect_n):
    """g = 1/sqrt(N Q_P); N: weights per step for weights, features per sample per step for activations."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 9)
    q = LSQQuantizer(4, signed=True, per_channel=True, ch_axis=0 if role == "weight" else 1, role=role)
    q.initialize(x)
    gout = torch.randn_like(x)
    q(x).backward(gout)
    n = expect_n if role == "activation" else x.numel() / 6
    s = q.step.detach()
    _, gs = _closed_form(x, s, 8, 7, 1.0 / math.sqrt(n * 7), gout, q.ch_axis)
    assert torch.allclose(q.step.grad, gs, rtol=1e-5, atol=1e-7)


def test_fused_forward_matches_and_shares_backward():
    torch.manual_seed(0)
    for ch_axis, s in ((None, torch.tensor(0.07)), (0, torch.rand(16) * 0.1 + 0.01)):
        x = torch.randn(16, 32, 5)
        outs, grads = [], []
        for fused in (False, True):
            xx, ss = x.clone().requires_grad_(), s.clone().requires_grad_()
            y = lsq_fake_quantize(xx, ss, 8, 7, 0.1, ch_axis, use_fused=fused)
            y.backward(torch.ones_like(y))
            outs.append(y.detach())
            grads.append((xx.grad, ss.grad))
        # fused computes x * (1/s): at most a last-ulp tie flip, i.e. one grid step, on random data none
        assert torch.allclose(outs[0], outs[1], atol=1e-6)
        assert torch.equal(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


def test_aten_fused_learnable_differs_only_in_the_rounding_band():
    """torch's learnable fused kernel masks on round(x/s) instead of x/s: its gradients differ from LSQ's for
    Q_P < x/s < Q_P + 0.5 (and the mirror band): the reason qgait uses its own backward."""
    torch.manual_seed(0)
    s = torch.full((4,), 0.5)
    x = torch.randn(4, 500) * 3
    v = x / s[:, None]
    band = ((v > 7) & (v < 7.5)) | ((v < -8) & (v > -8.5))
    assert band.any()

    def grads(xin, fused):
        xx, ss = xin.clone().requires_grad_(), s.clone().requires_grad_()
        if fused:
            y = torch._fake_quantize_learnable_per_channel_affine(xx, ss, torch.zeros(4), 0, -8, 7, 1.0)
        else:
            y = lsq_fake_quantize(xx, ss, 8, 7, 1.0, 0)
        y.sum().backward()
        return xx.grad, ss.grad

    gx_f, gs_f = grads(x, True)
    gx_q, gs_q = grads(x, False)
    assert not torch.equal(gx_f, gx_q)
    x_out = torch.where(band, torch.zeros_like(x), x)  # move band values to 0: outside the band everywhere
    gx_f, gs_f = grads(x_out, True)
    gx_q, gs_q = grads(x_out, False)
    assert torch.equal(gx_f, gx_q) and torch.allclose(gs_f, gs_q, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------ soft rounding
def test_soft_derivative_limits_and_extrema():
    u = torch.linspace(-3, 3, 6001, dtype=torch.float64)
    for tiny in (1e-6, 1e-4, 1e-3):
        assert torch.allclose(soft_round_derivative(u, tiny), torch.ones_like(u), atol=1e-6)
        assert torch.allclose(soft_round(u, tiny), u, atol=1e-6)
    for a in (0.5, 2.0, 10.0, 100.0):
        d = soft_round_derivative(u, a)
        peak = a / (2 * math.tanh(a / 2))
        thr = torch.tensor([-2.5, -0.5, 0.5, 1.5], dtype=torch.float64)
        ints = torch.tensor([-2.0, 0.0, 1.0, 2.0], dtype=torch.float64)
        assert torch.allclose(soft_round_derivative(thr, a), torch.full_like(thr, peak))
        assert d.max() <= peak * (1 + 1e-12)
        low = peak / math.cosh(a / 2) ** 2
        assert torch.allclose(soft_round_derivative(ints, a), torch.full_like(ints, low))
        assert d.min() >= low * (1 - 1e-9)


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 1.0, 5.0, 20.0])
def test_soft_derivative_is_derivative_of_soft_round(alpha):
    u = torch.linspace(-2.9, 2.9, 301, dtype=torch.float64)
    h = 1e-6
    fd = (soft_round(u + h, alpha) - soft_round(u - h, alpha)) / (2 * h)
    assert torch.allclose(fd, soft_round_derivative(u, alpha), rtol=1e-5, atol=1e-6)
    uu = u.clone().requires_grad_()
    soft_round(uu, alpha).sum().backward()
    assert torch.allclose(uu.grad, soft_round_derivative(u, alpha))


def test_soft_round_properties():
    ints = torch.arange(-5, 6, dtype=torch.float32)
    for a in (1e-3, 1.0, 10.0, 1e3):
        assert torch.allclose(soft_round(ints, a), ints)
        u = torch.linspace(-3, 3, 1001)
        y = soft_round(u, a)
        assert (y[1:] >= y[:-1] - 1e-6).all()  # monotone
    u = torch.linspace(-3, 3, 1001)
    away = (u - torch.floor(u) - 0.5).abs() > 0.05
    for a, tol in ((100.0, 1e-3), (500.0, 1e-6), (1e3, 1e-6)):
        assert torch.allclose(soft_round(u, a)[away], torch.round(u)[away], atol=tol)


def test_soft_forward_is_hard_in_eval():
    x = torch.randn(100)
    q = LSQQuantizer(4, signed=True, rounding="soft_forward")
    q.initialize(x)
    q.set_alpha(1.0)
    q.train()
    y_train = q(x)
    q.eval()
    y_eval = q(x)
    assert not torch.allclose(y_train, y_eval)
    assert torch.equal(y_eval, torch.round((x / q.scale).clamp(-8, 7)) * q.scale)


# ------------------------------------------------------------------------------------------------ safety
EXTREME = {
    "random": lambda: torch.randn(4, 8, 5),
    "zero": lambda: torch.zeros(4, 8, 5),
    "huge": lambda: torch.randn(4, 8, 5).sign() * 1e30,
    "tiny": lambda: torch.randn(4, 8, 5) * 1e-30,
    "inf": lambda: torch.tensor([math.inf, -math.inf, 1.0, 0.0, -2.0]).repeat(4, 8, 1),
}


@pytest.mark.parametrize("kind", list(EXTREME))
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("step", [None, 1e-12, 0.0, -1.0])
@pytest.mark.parametrize("per_channel", [False, True])
def test_finite_everywhere(kind, rounding, step, per_channel):
    x = EXTREME[kind]().requires_grad_()
    q = LSQQuantizer(4, signed=None, per_channel=per_channel, ch_axis=1, rounding=rounding, alpha=50.0)
    q.train()
    if step is not None:
        q.initialize(x)
        with torch.no_grad():
            q.step.fill_(step)
    y = q(x)
    assert torch.isfinite(y).all()
    y.backward(torch.randn_like(y))
    assert torch.isfinite(x.grad).all() and torch.isfinite(q.step.grad).all()
    assert torch.isfinite(q.step).all() and (q.scale > 0).all()


@pytest.mark.parametrize("alpha", [1e-3, 1e-1, 1.0, 1e2, 1e3, 1e6, 1e9])
def test_soft_functions_finite_for_alpha_range(alpha):
    u = torch.cat([torch.linspace(-5, 5, 1001), torch.tensor([0.5, -0.5, 1e6, -1e6])])
    for v in (soft_round(u, alpha), soft_round_derivative(u, alpha)):
        assert torch.isfinite(v).all()


# ------------------------------------------------------------------------------------------------ PTQ
def test_calibrate_step_methods():
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3) * torch.linspace(0.1, 2, 8)[:, None, None, None]
    s = calibrate_step(w, 4, True, per_channel=True, method="minmax")
    wc = w.reshape(8, -1)
    assert torch.allclose(s, torch.maximum(wc.amax(1) / 7, -wc.amin(1) / 8))
    s_lsq = calibrate_step(w, 4, True, per_channel=True, method="lsq")
    assert torch.allclose(s_lsq, 2 * wc.abs().mean(1) / math.sqrt(7))
    s_pct = calibrate_step(w, 4, True, per_channel=True, method="percentile", percentile=90)
    assert (s_pct < s).all()
    assert calibrate_step(w, 4, True, method="minmax").shape == ()
    z = calibrate_step(torch.zeros(3, 4), 4, True, per_channel=True, method="mse")
    assert torch.equal(z, torch.ones(3))
    with pytest.raises(ValueError):
        calibrate_step(w, 4, True, method="kl")
    with pytest.raises(ValueError):
        calibrate_step(torch.empty(0), 4, True)


def _qmse(x, s, bits, signed):
    q_n, q_p = grid_range(bits, signed)
    return ((torch.round((x / s).clamp(-q_n, q_p)) * s - x) ** 2).mean()


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_mse_beats_minmax_on_heavy_tails(bits):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    student = torch.distributions.StudentT(torch.tensor(1.5)).sample((20000,))
    for x, factor in ((laplace, 0.8 if bits <= 4 else 1.0), (student, 1.0)):
        s_mm = calibrate_step(x, bits, True, method="minmax")
        s_mse = calibrate_step(x, bits, True, method="mse", generator=g)
        assert _qmse(x, s_mse, bits, True) < factor * _qmse(x, s_mm, bits, True)
        assert s_mse < s_mm


def test_act_observer_streams_with_bounded_memory():
    torch.manual_seed(0)
    obs = ActObserver(max_samples=1000, tail_samples=64)
    batches = [torch.relu(torch.distributions.StudentT(torch.tensor(3.0)).sample((5, 700))) for _ in range(6)]
    batches[2][0, 0] = 1e3
    for b in batches:
        obs.update(b)
    allx = torch.cat([b.reshape(-1) for b in batches])
    assert obs.values.numel() == 1000 and obs.batches == 6 and obs.count == allx.numel()
    assert obs.max == 1e3 and obs.min == 0.0 and obs.non_negative()
    vals, w = obs.sample()
    assert vals.numel() <= 1000 + 2 * 64 and w.sum() == pytest.approx(allx.numel(), rel=1e-3)
    assert 1e3 in vals.tolist()  # the rare extreme is kept exactly (tails)
    assert obs.step(8, False, "lsq") == pytest.approx(float(2 * allx.abs().mean() / math.sqrt(255)), rel=1e-5)
    assert obs.step(8, False, "minmax") == pytest.approx(1e3 / 255)
    # without the outlier, clipping pays off: the streamed MSE step is close to the full-data optimum
    allx[allx == 1e3] = 0.0
    obs2 = ActObserver(max_samples=1000, tail_samples=64)
    for b in batches:
        obs2.update(torch.where(b == 1e3, torch.zeros_like(b), b))
    s_full = calibrate_step(allx, 4, False, method="mse")
    s_mse = obs2.step(4, False, "mse")
    assert _qmse(allx, s_mse, 4, False) < 1.1 * _qmse(allx, s_full, 4, False)
    assert _qmse(allx, s_mse, 4, False) < _qmse(allx, obs2.step(4, False, "minmax"), 4, False)
    s_pct = obs2.step(8, False, "percentile", percentile=99.9)
    assert s_pct * 255 == pytest.approx(float(torch.quantile(allx, 0.999)), rel=0.05)
    obs.update(torch.tensor([math.nan, math.inf, -1.0]))
    assert obs.min == -1.0 and not obs.non_negative() and math.isfinite(obs.max)
    small = ActObserver(max_samples=100)
    small.update(torch.arange(10.0))
    v, w = small.sample()
    assert w is None and torch.equal(v, torch.arange(10.0))  # everything fits: the data itself


def test_quantizer_observer_mode_and_auto_sign():
    q = LSQQuantizer(8, signed=None, role="activation")
    assert q.is_signed is None
    with pytest.raises(RuntimeError):
        q.q_n
    q.start_observing()
    x = torch.rand(4, 10)
    assert torch.equal(q(x), x)  # observing: pass-through
    q(x + 1)
    assert q.finish_observing(method="minmax")
    assert q.is_signed is False and (q.q_n, q.q_p) == (0, 255)
    assert q.scale == pytest.approx(float((x + 1).max()) / 255)
    q2 = LSQQuantizer(8, signed=None, role="activation")
    q2(torch.randn(3, 5))  # lazy init on first forward
    assert q2.is_signed is True and q2.is_initialized


def test_quantizer_enabled_and_validation():
    q = LSQQuantizer(3, signed=True)
    q.enabled = False
    x = torch.randn(10)
    assert q(x) is x and not q.is_initialized
    with pytest.raises(ValueError):
        LSQQuantizer(3, rounding="floor")
    with pytest.raises(ValueError):
        LSQQuantizer(1)
    with pytest.raises(ValueError):
        q.set_alpha(0.0)
    with pytest.raises(ValueError):
        q.set_alpha(math.inf)
    assert q.zero_point.dtype == torch.int32 and q.bits == 3


def test_low_precision_input_dtype():
    x = torch.randn(4, 6).bfloat16().requires_grad_()
    q = LSQQuantizer(4, signed=True, per_channel=True, rounding="soft_backward")
    y = q(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
    assert q.step.dtype == torch.float32 and torch.isfinite(q.step.grad).all()
