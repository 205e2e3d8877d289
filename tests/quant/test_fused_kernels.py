"""Fused (torch.compile) fake-quant kernels: same results as the eager math, and the eager fallback.

The reference is the original eager implementation of ``_LSQFakeQuant`` written out below (the formulas of
methods.md 1.2-1.3 as separate torch ops): the hard-rounding forward must be bit-identical, gradients of ``x``
and of the step equal to float32 rounding.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qgait.quant.fake_quant as fq
import qgait.quant.quantizers as qz
import qgait.quant.rounding as rnd
from qgait.quant import LSQQuantizer, grid_range, lsq_fake_quantize
from .test_quantizers import EXTREME as QUANTIZER_EXTREME

ROUNDINGS = ["ste", "soft_backward", "soft_forward"]
SETTINGS = settings(max_examples=20, deadline=None)


# ------------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def kernels(enabled: bool, min_numel: int = 0):
    """Force the fused kernels on (for any size) or off, restoring the previous state afterwards."""
    old_state, old_min = dict(fq._compile_state), fq.COMPILE_MIN_NUMEL
    fq._compile_state.update(enabled=enabled, failed=False)
    fq.COMPILE_MIN_NUMEL = min_numel
    try:
        yield
    finally:
        fq._compile_state.update(old_state)
        fq.COMPILE_MIN_NUMEL = old_min


def _ref_soft_derivative(u, a):
    coef = a / (2.0 * torch.tanh(a / 2.0))
    r = u - torch.floor(u) - 0.5
    e = torch.exp(-2.0 * (a * r).abs())
    return coef * (4.0 * e / (1.0 + e) ** 2)


def _ref_soft_value(u, a):
    n = torch.floor(u)
    return n + 0.5 + 0.5 * torch.tanh(a * (u - n - 0.5)) / torch.tanh(a / 2.0)


def reference(x, step, q_n, q_p, grad_scale, ch_axis, rounding, alpha, gout, eps=1e-8):
    """The original eager forward and closed-form backward: ``(x_q, dL/dx, dL/dstep, sum |step terms|)``."""
    a = torch.as_tensor(alpha, dtype=torch.float32).clamp(qz.ALPHA_MIN, qz.ALPHA_MAX)
    s = step.clamp_min(eps)
    sb = s if ch_axis is None else s.reshape([-1 if i == ch_axis else 1 for i in range(x.dim())])
    v = x / sb
    u = v.clamp(-q_n, q_p)
    inside = u == v
    y = (_ref_soft_value(u, a) if rounding == "soft_forward" else torch.round(u)) * sb
    if rounding == "ste":
        gx = gout * inside
        ds = torch.where(inside, torch.round(u) - u, u)
    else:
        du = _ref_soft_derivative(u, a) * inside
        gx = gout * du
        q = _ref_soft_value(u, a) if rounding == "soft_forward" else torch.round(u)
        ds = q - u * du
    prod = ds * gout
    dims = [i for i in range(x.dim()) if i != ch_axis] if ch_axis is not None else list(range(x.dim()))
    gs = prod.sum(dim=dims)
    # sum of |terms|: the scale of the float32 summation error of the step gradient
    return y, gx, gs * grad_scale, prod.abs().sum(dim=dims) * grad_scale


def run(x, step, q_n, q_p, grad_scale, ch_axis, rounding, alpha, gout):
    """``(x_q, dL/dx, dL/dstep)`` through :func:`lsq_fake_quantize`."""
    xx, ss = x.detach().clone().requires_grad_(), step.detach().clone().requires_grad_()
    y = lsq_fake_quantize(xx, ss, q_n, q_p, grad_scale, ch_axis, rounding, alpha)
    y.backward(gout)
    return y.detach(), xx.grad, ss.grad


def check_close(got, ref, rounding):
    y, gx, gs = got
    y_r, gx_r, gs_r, gs_abs = ref
    if rounding == "soft_forward":
        torch.testing.assert_close(y, y_r, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(y, y_r), "hard-rounding forward not bit-identical"
    torch.testing.assert_close(gx, gx_r, rtol=1e-5, atol=1e-6)
    assert gs.shape == gs_r.shape
    assert ((gs - gs_r).abs() <= 1e-5 * gs_abs + 1e-12).all(), (gs, gs_r)


def make_case(seed, bits, signed, per_channel, shape, ch_axis, spread):
    gen = torch.Generator().manual_seed(seed)
    q_n, q_p = grid_range(bits, signed)
    x = torch.randn(shape, generator=gen) * spread
    if not signed:
        x = x.abs() - 0.1 * spread  # mostly non-negative, a few below the grid
    c = shape[ch_axis] if per_channel else None
    step = torch.rand(c if per_channel else (), generator=gen) * 0.3 + 0.05
    gout = torch.randn(shape, generator=gen)
    g = 1.0 / math.sqrt((x.numel() / step.numel()) * q_p)
    return x, step, q_n, q_p, g, (ch_axis if per_channel else None), gout


# ------------------------------------------------------------------------------------------------ equality
@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    bits=st.sampled_from([2, 4, 8]),
    signed=st.booleans(),
    per_channel=st.booleans(),
    shape=st.lists(st.integers(2, 9), min_size=3, max_size=4).map(tuple),
    ch_axis=st.sampled_from([0, 1]),
    rounding=st.sampled_from(ROUNDINGS),
    alpha=st.sampled_from([0.5, 2.0, 5.0, 10.0, 50.0]),
    spread=st.sampled_from([0.3, 1.0, 4.0]),
)
def test_fused_equals_reference(seed, bits, signed, per_channel, shape, ch_axis, rounding, alpha, spread):
    x, step, q_n, q_p, g, ax, gout = make_case(seed, bits, signed, per_channel, shape, ch_axis, spread)
    ref = reference(x, step, q_n, q_p, g, ax, rounding, alpha, gout)
    with kernels(True):
        got = run(x, step, q_n, q_p, g, ax, rounding, alpha, gout)
        assert qz.compiled_kernels_enabled(), "the fused kernel failed and fell back"
    check_close(got, ref, rounding)
    with kernels(False):  # the eager path is the same math too
        check_close(run(x, step, q_n, q_p, g, ax, rounding, alpha, gout), ref, rounding)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_used_for_large_tensors_and_ties(rounding, per_channel):
    """Default size threshold: a [64, 16, 9, 11] activation takes the fused path; exact ties round half to even."""
    x, step, q_n, q_p, g, ax, gout = make_case(3, 4, True, per_channel, (64, 16, 9, 11), 1, 1.0)
    assert x.numel() >= fq.COMPILE_MIN_NUMEL
    with torch.no_grad():
        sb = step.clamp_min(1e-8) if ax is None else step.reshape(1, -1, 1, 1)
        x[:4] = (torch.arange(-8, 8).reshape(1, 16, 1, 1) + 0.5) * sb  # exact ties k + 0.5 (step is a float)
    called = []
    real = fq._run_kernel

    def spy(name, *args):
        called.append(name)
        return real(name, *args)

    ref = reference(x, step, q_n, q_p, g, ax, rounding, 5.0, gout)
    with kernels(True, min_numel=fq.COMPILE_MIN_NUMEL), pytest.MonkeyPatch.context() as mp:
        mp.setattr(fq, "_run_kernel", spy)
        got = run(x, step, q_n, q_p, g, ax, rounding, 5.0, gout)
        assert qz.compiled_kernels_enabled()
    assert len(called) == 2  # forward and backward
    check_close(got, ref, rounding)


EXTREME = {k: make for k, make in QUANTIZER_EXTREME.items() if k != "random"}  # zero, huge, tiny, inf


@pytest.mark.parametrize("kind", list(EXTREME))
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("step", [1e-12, 0.0, 0.3])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_extreme_inputs(kind, rounding, step, per_channel):
    torch.manual_seed(0)
    x = EXTREME[kind]()
    s = torch.full((8,) if per_channel else (), step)
    ax = 1 if per_channel else None
    gout = torch.randn_like(x)
    ref = reference(x, s, 8, 7, 0.1, ax, rounding, 50.0, gout)
    with kernels(True):
        got = run(x, s, 8, 7, 0.1, ax, rounding, 50.0, gout)
    assert all(torch.isfinite(t).all() for t in got)
    check_close(got, ref, rounding)


def test_module_training_step_fused_equals_eager():
    """LSQQuantizer in training mode (per-tensor activation and per-channel weight) gives the same step grads."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(32, 8, 16, 11)) + 0.0
    w = torch.randn(8, 8, 3, 3) * 0.1
    res = {}
    for on in (True, False):
        qa = LSQQuantizer(4, signed=None, role="activation", rounding="soft_backward", alpha=5.0)
        qw = LSQQuantizer(4, signed=True, per_channel=True, role="weight", rounding="soft_backward", alpha=5.0)
        qa.initialize(x)
        qw.initialize(w)
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        with kernels(on):
            out = torch.nn.functional.conv2d(qa(xx), qw(ww))
            out.square().mean().backward()
        res[on] = (out.detach(), xx.grad, ww.grad, qa.step.grad, qw.step.grad)
    torch.testing.assert_close(res[True][0], res[False][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(res[True][1:], res[False][1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("per_channel,ch_axis", [(False, None), (True, 0), (True, 1)])
@pytest.mark.parametrize("dims", [4, 5])
def test_fused_channels_last_keeps_memory_format(rounding, per_channel, ch_axis, dims):
    """A channels-last input is flattened as a view in its memory order (no copy into NCHW), gives the reference's
    values, and its output and input gradient stay channels-last, so the next convolution stays channels-last."""
    shape = (6, 5, 7, 4) if dims == 4 else (3, 5, 4, 3, 4)
    fmt = torch.channels_last if dims == 4 else torch.channels_last_3d
    x, step, q_n, q_p, g, ax, gout = make_case(7, 4, True, per_channel, shape, ch_axis or 0, 1.0)
    ax = ch_axis
    ref = reference(x, step, q_n, q_p, g, ax, rounding, 5.0, gout)
    x_cl = x.to(memory_format=fmt)
    assert not x_cl.is_contiguous() and fq._memory_order(x_cl) is not None and fq._memory_order(x) is None
    xf, _ = fq._flat_layout(x_cl, step, ax, fq._memory_order(x_cl))
    assert xf.data_ptr() == x_cl.data_ptr()  # a view, not a copy
    with kernels(True):
        xx, ss = x_cl.detach().clone().requires_grad_(), step.detach().clone().requires_grad_()
        assert xx.is_contiguous(memory_format=fmt)
        y = lsq_fake_quantize(xx, ss, q_n, q_p, g, ax, rounding, 5.0)
        y.backward(gout)
        assert qz.compiled_kernels_enabled()
    assert y.is_contiguous(memory_format=fmt) and xx.grad.is_contiguous(memory_format=fmt)
    check_close((y.detach(), xx.grad, ss.grad), ref, rounding)


def test_nchw_tensors_keep_the_original_flattening():
    """Contiguous (NCHW) tensors, and strided ones that are not channels-last, flatten exactly as before (logical
    order), so runs that train in NCHW are unchanged."""
    x = torch.randn(4, 3, 5, 6)
    assert fq._memory_order(x) is None
    assert fq._memory_order(x.transpose(2, 3)) is None  # strided, not channels-last
    assert fq._memory_order(torch.randn(4, 3, 1, 1).to(memory_format=torch.channels_last)) is None  # both formats
    assert fq._memory_order(torch.randn(3, 4, 5).transpose(1, 2)) is None  # 3-D


# ------------------------------------------------------------------------------------------------ fallback
def test_fallback_when_compile_fails():
    x, step, q_n, q_p, g, ax, gout = make_case(1, 4, False, False, (6, 5, 4), 0, 1.0)

    def broken(name):
        def fail(*args):
            raise RuntimeError("no compiler here")
        return fail

    ref = reference(x, step, q_n, q_p, g, ax, "soft_backward", 5.0, gout)
    with kernels(True), pytest.MonkeyPatch.context() as mp:
        mp.setattr(fq, "_kernel", broken)
        with pytest.warns(RuntimeWarning, match="fused fake-quant kernels unavailable"):
            got = run(x, step, q_n, q_p, g, ax, "soft_backward", 5.0, gout)
        assert not qz.compiled_kernels_enabled()
        check_close(got, ref, "soft_backward")
        check_close(run(x, step, q_n, q_p, g, ax, "soft_backward", 5.0, gout), ref, "soft_backward")  # no warning
        qz.set_compiled_kernels(True)  # retries after a failure
        assert qz.compiled_kernels_enabled()


def test_not_used_when_disabled_small_or_not_float32():
    x = torch.randn(70000)
    s = torch.tensor(0.1)
    with kernels(True, min_numel=1 << 16):
        assert not fq._use_kernels(x[:100], s)  # small
        assert not fq._use_kernels(x.double(), s.double())
        with torch.enable_grad():
            assert not fq._use_kernels(x, s)  # a graph is recorded through the quantizer (create_graph)
        with torch.no_grad():
            assert fq._use_kernels(x, s)
    with kernels(False), torch.no_grad():
        assert not fq._use_kernels(x, s)


def test_env_var_disables():
    code = "import qgait.quant.quantizers as q; print(q.compiled_kernels_enabled())"
    env = {**os.environ, "QGAIT_COMPILE_QUANT": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_whole_model_torch_compile_uses_eager_math():
    """Inside torch.compile the kernels are not called (inductor fuses the eager math itself)."""
    q = LSQQuantizer(4, signed=True, rounding="ste")
    x = torch.randn(8, 16)
    q.initialize(x)
    called = []
    with kernels(True), pytest.MonkeyPatch.context() as mp:
        mp.setattr(fq, "_run_kernel", lambda *a: called.append(a) or None)
        y = torch.compile(q, backend="eager")(x)
    assert not called
    assert torch.equal(y, torch.round((x / q.scale).clamp(-8, 7)) * q.scale)


@pytest.mark.parametrize("alpha", [1e-4, 0.5, 5.0, 50.0, 1e6])
def test_inplace_soft_math_bit_identical_to_public_functions(alpha):
    u = torch.cat([torch.linspace(-9, 9, 4001), torch.tensor([0.5, -0.5, 1e6, -1e6, 0.0])])
    a = torch.tensor(alpha).clamp(qz.ALPHA_MIN, qz.ALPHA_MAX)
    assert torch.equal(rnd._soft_derivative_math(u, a), qz.soft_round_derivative(u, alpha))
    assert torch.equal(rnd._soft_value_math(u, a), rnd._soft_round_value(u, alpha))
