"""Uniform fake quantizers: LSQ with hard (STE) or soft rounding, and PTQ step calibration.

Equations
---------
LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020, section 2, eqs. 1-3; methods.md 1.2)::

    v   = x / s,   u = clip(v, -Q_N, Q_P),   x_q = R(u) * s
    dx_q/dx = R'(u)             if -Q_N <= v <= Q_P, else 0
    dx_q/ds = R(u) - u * R'(u)  if -Q_N <= v <= Q_P;  -Q_N if v < -Q_N;  Q_P if v > Q_P
    step gradient scaled by g = 1 / sqrt(N * Q_P)       (LSQ section 2, "step size gradient scale")

with ``R = round`` and ``R' = 1`` for the straight-through estimator (STE). Signed grids use
``Q_N = 2^(b-1), Q_P = 2^(b-1) - 1``; unsigned grids ``Q_N = 0, Q_P = 2^b - 1``.

Soft quantizer (QGait, arXiv 2405.13859; formula per methods.md 1.3, the DSQ family of Gong et al., ICCV 2019)::

    n = floor(u),  r = u - n - 0.5
    softround_alpha(u)  = n + 0.5 + 0.5 * tanh(alpha r) / tanh(alpha / 2)
    softround_alpha'(u) = alpha / (2 tanh(alpha / 2)) * sech^2(alpha r)

``rounding="soft_backward"`` keeps ``R = round`` in the forward pass and uses ``R' = softround_alpha'``;
``rounding="soft_forward"`` uses ``R = softround_alpha`` while training (hard ``round`` in eval mode, so what is
evaluated and exported is the hard quantizer).

Rounding rule (decided once, used everywhere): ``torch.round``, i.e. round half to even. Ties have probability
zero for real-valued data; the fused ATen kernels use the same rule (``nearbyint``).

Numerical safety: the step is clamped to ``>= eps`` (default 1e-8) in the forward pass, with a straight-through
gradient to the raw parameter so that a step driven below ``eps`` can recover; alpha is clamped to
``[1e-4, 1e6]`` (below 1e-4 the soft functions equal their alpha -> 0 limits to float32 precision:
``softround -> u``, derivative -> 1); ``sech^2`` is evaluated as ``4 e^{-2|z|} / (1 + e^{-2|z|})^2`` (no
overflow). Infinite inputs clip to the grid ends with zero input gradient.

Cost: the fake quantizer is one ``torch.autograd.Function`` with the closed-form backward above. It saves only
its input (which the previous layer keeps alive anyway) and recomputes ``u`` in the backward, where plain
autograd through div/clamp/round/mul saves two full-size intermediates (see ``tests/quant/bench_fake_quant.py``).
It compiles under ``torch.compile`` without graph breaks.

Fused kernels: in eager mode the elementwise math of the forward and of the backward (with the step-gradient
reduction) runs as one ``torch.compile`` (inductor) kernel each, instead of about 4 (forward) and 8-15
(backward) separate full-size passes that each allocate a tensor: the same formulas (the ``_*_math`` functions
below are the single source of both paths), so the hard-rounding forward is bit-identical and gradients agree
to float rounding (the kernels evaluate ``exp``/``tanh`` with vectorised libm and sum in a different order).
Used for float32 tensors of at least ``COMPILE_MIN_NUMEL`` elements, outside ``torch.compile``/tracing/export and
when no graph is being recorded through the quantizer (``create_graph``); everything else, and every case where
compilation is unavailable or fails (one warning, then eager for the rest of the process), runs the eager code.
Disable with the environment variable ``QGAIT_COMPILE_QUANT=0`` or :func:`set_compiled_kernels`. The first use
of each kernel compiles it (seconds to a minute on a busy CPU; inductor caches it on disk for later processes);
shapes are dynamic (inputs are flattened to ``[N]`` per tensor and ``[pre, C, post]`` per channel), so a new
batch or layer size does not recompile.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ALPHA_MIN",
    "ALPHA_MAX",
    "STEP_MAX",
    "grid_range",
    "soft_round",
    "soft_round_derivative",
    "round_ste",
    "round_soft_backward",
    "round_with",
    "lsq_fake_quantize",
    "calibrate_step",
    "ActObserver",
    "LSQQuantizer",
    "COMPILE_MIN_NUMEL",
    "set_compiled_kernels",
    "compiled_kernels_enabled",
]

ALPHA_MIN = 1e-4
"""Alpha values below this are treated as this value (the soft functions are at their alpha -> 0 limit)."""
ALPHA_MAX = 1e6
"""Alpha values above this are treated as this value (keeps ``alpha * sech^2`` finite)."""
STEP_MAX = 1e36
"""Largest step size calibration returns (``255 * STEP_MAX`` is still a finite float32)."""

RoundingMode = Literal["ste", "soft_backward", "soft_forward"]
InitMethod = Literal["lsq", "minmax", "percentile", "mse"]
_ROUNDINGS = ("ste", "soft_backward", "soft_forward")
_INITS = ("lsq", "minmax", "percentile", "mse")


def grid_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid ``(Q_N, Q_P)`` of a uniform quantizer (methods.md 1.2, LSQ section 2).

    Signed: ``(2^(b-1), 2^(b-1) - 1)``; unsigned: ``(0, 2^b - 1)``.

    Raises:
        ValueError: ``bits`` not in 2..8.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


# --------------------------------------------------------------------------------------------------------------
# Rounding functions
# --------------------------------------------------------------------------------------------------------------
def _alpha_tensor(alpha: float | Tensor, like: Tensor) -> Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float32, device=like.device)
    return a.clamp(ALPHA_MIN, ALPHA_MAX)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def soft_round_derivative(u: Tensor, alpha: float | Tensor) -> Tensor:
    """``d softround_alpha / du = alpha / (2 tanh(alpha/2)) * sech^2(alpha r)``, ``r = u - floor(u) - 0.5``.

    Source: methods.md 1.3 (QGait soft quantizer; DSQ, Gong et al., ICCV 2019). Shape: same as ``u`` (any shape);
    computed in float32 (float64 kept). Value at the thresholds ``u = n + 0.5``: ``alpha / (2 tanh(alpha/2))``
    (the maximum); at integers: ``alpha / (2 tanh(alpha/2)) * sech^2(alpha/2)`` (the minimum); -> 1 as alpha -> 0.
    Never NaN/inf for finite ``u``; alpha is clamped to ``[ALPHA_MIN, ALPHA_MAX]``.
    """
    dt = _compute_dtype(u)
    u = u.to(dt)
    a = _alpha_tensor(alpha, u).to(dt)
    coef = a / (2.0 * torch.tanh(a / 2.0))
    r = u - torch.floor(u) - 0.5
    e = torch.exp(-2.0 * (a * r).abs())
    return coef * (4.0 * e / (1.0 + e) ** 2)


def _soft_round_value(u: Tensor, alpha: float | Tensor) -> Tensor:
    """``softround_alpha(u)`` (module docstring), computed in float32 (float64 kept). Shape: same as ``u``."""
    dt = _compute_dtype(u)
    u = u.to(dt)
    a = _alpha_tensor(alpha, u).to(dt)
    n = torch.floor(u)
    r = u - n - 0.5
    return n + 0.5 + 0.5 * torch.tanh(a * r) / torch.tanh(a / 2.0)


# The two functions below are the same operations in the same order as soft_round_derivative / _soft_round_value
# (bit-identical results), in place on their own temporaries: fewer full-size allocations in eager mode. For the
# quantizer's forward/backward only, where autograd records nothing (in-place ops would break a recorded graph).
def _soft_derivative_math(u: Tensor, a: Tensor) -> Tensor:
    """:func:`soft_round_derivative` for ``a`` already clamped and in ``u``'s dtype; a new tensor (``u`` untouched).

    ``sech^2(z) = 4 e / (1 + e)^2`` with ``e = exp(-2|z|)`` (no overflow); two full-size allocations in eager mode.
    """
    coef = a / (2.0 * torch.tanh(a / 2.0))
    e = (u - torch.floor(u)).sub_(0.5).mul_(a).abs_().mul_(-2.0).exp_()  # exp(-2 |a r|)
    den = (e + 1.0).square_()
    return e.mul_(4.0).div_(den).mul_(coef)


def _soft_value_math(u: Tensor, a: Tensor) -> Tensor:
    """``n + 0.5 + 0.5 tanh(a r) / tanh(a/2)`` for ``a`` already clamped and in ``u``'s dtype; a new tensor."""
    n = torch.floor(u)
    t = (u - n).sub_(0.5).mul_(a).tanh_()  # tanh(a r)
    return t.mul_(0.5).div_(torch.tanh(a / 2.0)).add_(n.add_(0.5))


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:  # noqa: D102
        return torch.round(u)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: D102
        return g


class _RoundSoftBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, alpha: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(u, alpha)
        return torch.round(u)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        u, alpha = ctx.saved_tensors
        return (g * soft_round_derivative(u, alpha)).to(g.dtype), None


class _SoftRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, alpha: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(u, alpha)
        return _soft_round_value(u, alpha).to(u.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        u, alpha = ctx.saved_tensors
        return (g * soft_round_derivative(u, alpha)).to(g.dtype), None


def round_ste(u: Tensor) -> Tensor:
    """Hard ``torch.round(u)`` (half to even) with the straight-through gradient ``d/du = 1`` (LSQ, methods.md 1.2).

    Shape: any, preserved.
    """
    return _RoundSTE.apply(u)


def round_soft_backward(u: Tensor, alpha: float | Tensor) -> Tensor:
    """Hard ``torch.round(u)`` forward, soft derivative :func:`soft_round_derivative` backward.

    The ``backward_only`` mode of methods.md 1.3. Shape: any, preserved.
    """
    return _RoundSoftBackward.apply(u, torch.as_tensor(alpha, dtype=torch.float32, device=u.device))


def soft_round(u: Tensor, alpha: float | Tensor) -> Tensor:
    """``softround_alpha(u) = n + 0.5 + 0.5 tanh(alpha r) / tanh(alpha/2)`` with its true derivative.

    The ``soft_forward`` mode of methods.md 1.3 (DSQ family, Gong et al., ICCV 2019). ``alpha -> 0``: identity;
    ``alpha -> inf``: hard round (away from the ties ``u = n + 0.5``, where it equals ``n + 0.5``). Continuous:
    integers map to themselves. Shape: any, preserved.
    """
    return _SoftRound.apply(u, torch.as_tensor(alpha, dtype=torch.float32, device=u.device))


def round_with(u: Tensor, rounding: RoundingMode, alpha: float | Tensor = 1.0) -> Tensor:
    """Dispatch to :func:`round_ste`, :func:`round_soft_backward` or :func:`soft_round` by name.

    Raises:
        ValueError: unknown ``rounding``.
    """
    if rounding == "ste":
        return round_ste(u)
    if rounding == "soft_backward":
        return round_soft_backward(u, alpha)
    if rounding == "soft_forward":
        return soft_round(u, alpha)
    raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")


# --------------------------------------------------------------------------------------------------------------
# LSQ fake quantization with explicit gradients
# --------------------------------------------------------------------------------------------------------------
def _bshape(x: Tensor, ch_axis: int | None) -> list[int]:
    """Shape that broadcasts a per-channel vector along ``ch_axis`` of ``x``."""
    if ch_axis is None:
        return []
    shape = [1] * x.dim()
    shape[ch_axis] = x.shape[ch_axis]
    return shape


_MODE = {"ste": 0, "soft_backward": 1, "soft_forward": 2}


def _lsq_forward_math(x: Tensor, s: Tensor, a: Tensor, lo: float | Tensor, hi: float | Tensor, soft: bool) -> Tensor:
    """``R(clip(x/s, lo, hi)) * s``; ``s`` broadcasts against ``x``, ``R`` = round or softround_a. A new tensor."""
    u = (x / s).clamp_(lo, hi)
    q = _soft_value_math(u, a) if soft else u.round_()
    return q.mul_(s)


def _lsq_grad_math(x: Tensor, s: Tensor, a: Tensor, g: Tensor, lo: float | Tensor, hi: float | Tensor, mode: int):
    """Closed-form LSQ gradients (module docstring): ``(dL/dx, dx_q/ds)``, both of ``x``'s shape (elementwise).

    ``mode``: 0 ste, 1 soft_backward, 2 soft_forward. ``u`` and the ``inside`` mask are computed once; the
    temporaries are reused in place.
    """
    v = x / s
    u = v.clamp(lo, hi)
    inside = u == v  # lo <= v <= hi
    del v
    if mode == 0:
        grad_x = g * inside
        # dx_q/ds: round(u) - u inside; lo below, hi above (there u = round(u) = the clip bound)
        ds = torch.where(inside, torch.round(u).sub_(u), u)
    else:
        du = _soft_derivative_math(u, a).mul_(inside)
        grad_x = g * du
        q = _soft_value_math(u, a) if mode == 2 else torch.round(u)
        ds = q.sub_(u.mul_(du))  # R(u) - u R'(u) inside; R(u) = the clip bound outside
    return grad_x, ds


# ---------------------------------------------------------------- fused (torch.compile) kernels
COMPILE_MIN_NUMEL = 1 << 16
"""Tensors with fewer elements run the eager code (a kernel call costs more than it saves on small tensors)."""
_COMPILE_ENV = "QGAIT_COMPILE_QUANT"
_compile_state = {"enabled": os.environ.get(_COMPILE_ENV, "1").strip().lower() not in ("0", "false", "no", "off"),
                  "failed": False}
_kernels: dict[str, Callable] = {}


def set_compiled_kernels(enabled: bool) -> None:
    """Turn the fused ``torch.compile`` kernels of the fake quantizer on or off (process-wide).

    The default is on unless the environment variable ``QGAIT_COMPILE_QUANT`` is ``0``. Turning them on again also
    retries after a compilation failure. Results do not depend on it beyond float rounding (module docstring).
    """
    _compile_state["enabled"] = bool(enabled)
    if enabled:
        _compile_state["failed"] = False


def compiled_kernels_enabled() -> bool:
    """Whether the fused kernels are in use (enabled, ``torch.compile`` present, and no failure so far)."""
    return _compile_state["enabled"] and not _compile_state["failed"] and hasattr(torch, "compile")


def _fwd_hard(x, s, a, lo: float | Tensor, hi: float | Tensor):
    return _lsq_forward_math(x, s, a, lo, hi, False)


def _fwd_soft(x, s, a, lo: float | Tensor, hi: float | Tensor):
    return _lsq_forward_math(x, s, a, lo, hi, True)


def _grad_reduced(x, s, a, g, lo: float | Tensor, hi: float | Tensor, mode: int):
    """``(dL/dx, dL/ds before grad_scale)`` for ``x [pre, C, post]``, ``s [C, 1]`` (reduced over dims 0 and 2)."""
    grad_x, ds = _lsq_grad_math(x, s, a, g, lo, hi, mode)
    return grad_x, (ds * g).sum(dim=(0, 2))


def _bwd_ste(x, s, a, g, lo: float | Tensor, hi: float | Tensor):
    return _grad_reduced(x, s, a, g, lo, hi, 0)


def _bwd_soft_backward(x, s, a, g, lo: float | Tensor, hi: float | Tensor):
    return _grad_reduced(x, s, a, g, lo, hi, 1)


def _bwd_soft_forward(x, s, a, g, lo: float | Tensor, hi: float | Tensor):
    return _grad_reduced(x, s, a, g, lo, hi, 2)


# one function (one dynamo code cache) per kernel, so modes do not compete for the recompile limit
_KERNEL_FNS = {"fwd0": _fwd_hard, "fwd2": _fwd_soft, "bwd0": _bwd_ste, "bwd1": _bwd_soft_backward,
               "bwd2": _bwd_soft_forward}


def _kernel(name: str) -> Callable:
    """The compiled kernel ``name`` (``fwd<mode>`` / ``bwd<mode>``), compiled lazily on first call."""
    k = _kernels.get(name)
    if k is None:
        k = _kernels[name] = torch.compile(_KERNEL_FNS[name], dynamic=True)
    return k


def _use_kernels(x: Tensor, step: Tensor) -> bool:
    """Whether the fused kernels apply to this call (see the module docstring)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False  # the surrounding compiler fuses the eager math itself
    if not compiled_kernels_enabled() or x.dtype != torch.float32 or step.dtype != torch.float32:
        return False
    if x.numel() < COMPILE_MIN_NUMEL or x.device.type not in ("cpu", "cuda") or torch.is_grad_enabled():
        return False
    return not torch.onnx.is_in_onnx_export()


def _flat_layout(x: Tensor, s: Tensor, ch_axis: int | None) -> tuple[Tensor, Tensor]:
    """``x`` as ``[pre, C, post]`` and the step as ``[C, 1]``; per tensor ``C = 1`` (``[1, 1, N]``, ``[1, 1]``).

    One rank for both layouts, so that each kernel compiles once (dynamo guards on tensor ranks)."""
    if ch_axis is None:
        return x.reshape(1, 1, -1), s.reshape(1, 1)
    c = x.shape[ch_axis]
    return x.reshape(math.prod(x.shape[:ch_axis]), c, -1), s.reshape(c, 1)


def _grid_tensors(q_n: int, q_p: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The clip bounds ``-Q_N, Q_P`` as 0-dim tensors: dynamo specializes Python floats (one compilation per grid)."""
    return (torch.tensor(float(-q_n), dtype=like.dtype, device=like.device),
            torch.tensor(float(q_p), dtype=like.dtype, device=like.device))


def _run_kernel(name: str, *args: Tensor | float):
    """Call the compiled kernel; on any failure warn once, switch the kernels off and return ``None``."""
    try:
        return _kernel(name)(*args)
    except Exception as e:  # noqa: BLE001 - any compiler/toolchain problem: fall back to the eager code
        _compile_state["failed"] = True
        warnings.warn(f"qgait: fused fake-quant kernels unavailable ({type(e).__name__}: {e}); using eager ops. "
                      f"Set {_COMPILE_ENV}=0 to skip the attempt.", RuntimeWarning, stacklevel=3)
        return None


def _fused_forward(x: Tensor, s: Tensor, a: Tensor, q_n: int, q_p: int, ch_axis: int | None, mode: int):
    """Forward through the compiled kernel, or ``None`` when it failed."""
    xf, sf = _flat_layout(x, s, ch_axis)
    out = _run_kernel("fwd2" if mode == 2 else "fwd0", xf, sf, a, *_grid_tensors(q_n, q_p, x))
    return None if out is None else out.view(x.shape)


def _fused_grads(x: Tensor, s: Tensor, a: Tensor, g: Tensor, q_n: int, q_p: int, ch_axis: int | None, mode: int):
    """``(dL/dx, dL/ds before grad_scale)`` through the compiled kernel, or ``None`` when it failed."""
    xf, sf = _flat_layout(x, s, ch_axis)
    out = _run_kernel(f"bwd{mode}", xf, sf, a, g.reshape(xf.shape), *_grid_tensors(q_n, q_p, x))
    return None if out is None else (out[0].view(x.shape), out[1])


def _eager_grads(x: Tensor, s: Tensor, a: Tensor, g: Tensor, q_n: int, q_p: int, ch_axis: int | None, mode: int):
    """``(dL/dx, dL/ds before grad_scale)`` with eager torch ops (``x`` any shape, ``s`` ``[]`` or ``[C]``)."""
    grad_x, ds = _lsq_grad_math(x, s.reshape(_bshape(x, ch_axis)), a, g, -q_n, q_p, mode)
    if ch_axis is None:
        return grad_x, torch.dot(g.reshape(-1), ds.reshape(-1))
    prod = ds.mul_(g)
    dims = [i for i in range(x.dim()) if i != ch_axis]
    return grad_x, (prod.sum(dim=dims) if dims else prod)


class _LSQFakeQuant(torch.autograd.Function):
    """``x_q = R(clip(x/s, -Q_N, Q_P)) * s`` with the gradients of the module docstring.

    Inputs: x [any], step [] or [C] (C = x.shape[ch_axis]). Saves only x and step; the backward recomputes u
    (cheaper in memory than autograd through div/clamp/round/mul, which keeps two full-size intermediates).
    Forward and backward run the fused kernels when :func:`_use_kernels` allows, else the same math eagerly.
    """

    @staticmethod
    def forward(ctx, x, step, alpha, q_n, q_p, grad_scale, ch_axis, mode, eps, use_fused):  # noqa: D102
        ctx.save_for_backward(x, step, alpha)
        ctx.conf = (q_n, q_p, grad_scale, ch_axis, mode, eps)
        s = step.detach().clamp_min(eps)
        if use_fused and mode != 2 and x.dtype == torch.float32 and s.dtype == torch.float32:
            # one fused ATen pass: clamp(nearbyint(x * (1/s)), -Q_N, Q_P) * s (same grid, same tie rule)
            if ch_axis is None:
                return torch.fake_quantize_per_tensor_affine(
                    x, s.reshape(()), torch.zeros((), dtype=torch.int32, device=x.device), -q_n, q_p
                )
            zp = torch.zeros(s.shape, dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_channel_affine(x, s, zp, ch_axis, -q_n, q_p)
        dt = _compute_dtype(x)
        a = _alpha_tensor(alpha, x).to(dt)
        if _use_kernels(x, step):
            out = _fused_forward(x, s, a, q_n, q_p, ch_axis, mode)
            if out is not None:
                return out
        sb = s.to(dt).reshape(_bshape(x, ch_axis))
        return _lsq_forward_math(x.to(dt), sb, a, -q_n, q_p, mode == 2).to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, step, alpha = ctx.saved_tensors
        q_n, q_p, grad_scale, ch_axis, mode, eps = ctx.conf
        dt = _compute_dtype(x)
        s = step.detach().clamp_min(eps)
        a = _alpha_tensor(alpha, x).to(dt)
        fused = _fused_grads(x, s, a, g, q_n, q_p, ch_axis, mode) if _use_kernels(x, step) else None
        if fused is not None:
            grad_x, grad_s = fused
        else:
            grad_x, grad_s = _eager_grads(x.to(dt), s.to(dt), a, g.to(dt), q_n, q_p, ch_axis, mode)
        grad_x = grad_x.to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_s = (grad_s * grad_scale).reshape(step.shape).to(step.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_s, None, None, None, None, None, None, None, None


def lsq_fake_quantize(
    x: Tensor,
    step: Tensor,
    q_n: int,
    q_p: int,
    grad_scale: float = 1.0,
    ch_axis: int | None = None,
    rounding: RoundingMode = "ste",
    alpha: float | Tensor = 1.0,
    eps: float = 1e-8,
    use_fused: bool = False,
) -> Tensor:
    """Functional LSQ fake quantizer (Esser et al. ICLR 2020, section 2, eqs. 1-3; soft modes: methods.md 1.3).

    Args:
        x: input, any shape ``[...]``; float32/float64 computed natively, other float dtypes in float32.
        step: ``[]`` (per tensor) or ``[C]`` with ``C = x.shape[ch_axis]`` (per channel).
        q_n, q_p: the integer grid ``[-q_n, q_p]`` (see :func:`grid_range`).
        grad_scale: ``g``, multiplies the step gradient (LSQ: ``1/sqrt(N Q_P)``).
        ch_axis: channel axis of ``x`` for a per-channel step, ``None`` for per tensor.
        rounding: ``"ste"`` | ``"soft_backward"`` | ``"soft_forward"``.
        alpha: soft-rounding sharpness (ignored for ``"ste"``).
        eps: the step is clamped to ``>= eps`` (straight-through gradient to ``step``).
        use_fused: compute hard-rounding forwards with ATen's fused ``fake_quantize_per_*_affine`` kernels
            (float32 only; slower than torch ops on CPU, see :class:`LSQQuantizer`); the backward is always this
            module's closed form. Independent of this flag, large float32 tensors run the forward and backward
            as ``torch.compile`` kernels of the same math (module docstring, :func:`set_compiled_kernels`).

    Returns:
        ``x_q``, same shape and dtype as ``x``, on the grid ``step * k``, ``k`` integer in ``[-q_n, q_p]``
        (for ``soft_forward``: ``step * softround(u)``).

    Raises:
        ValueError: unknown rounding, step shape not matching ``ch_axis``.
    """
    if rounding not in _MODE:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    if ch_axis is not None:
        ch_axis = ch_axis % x.dim()
        if step.dim() != 1 or step.numel() != x.shape[ch_axis]:
            raise ValueError(
                f"per-channel step must have shape [{x.shape[ch_axis]}] for axis {ch_axis}, got {tuple(step.shape)}"
            )
    elif step.numel() != 1:
        raise ValueError(f"per-tensor step must have one element, got shape {tuple(step.shape)}")
    a = torch.as_tensor(alpha, dtype=torch.float32, device=x.device)
    return _LSQFakeQuant.apply(
        x, step, a, int(q_n), int(q_p), float(grad_scale), ch_axis, _MODE[rounding], float(eps), bool(use_fused)
    )


# --------------------------------------------------------------------------------------------------------------
# Step calibration (PTQ and LSQ initialisation)
# --------------------------------------------------------------------------------------------------------------
def _channels_first(x: Tensor, per_channel: bool, ch_axis: int) -> Tensor:
    """[C, K] for per-channel, [1, K] for per-tensor, in float32 (float64 kept), non-finite values removed."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.detach().to(dt)
    if per_channel:
        ch_axis = ch_axis % x.dim()
        x = x.movedim(ch_axis, 0)
        x = x.reshape(x.shape[0], -1)
    else:
        x = x.reshape(1, -1)
    # +-inf would make every candidate step infinite: clip them to the float32 range; NaN -> 0
    return torch.nan_to_num(x, nan=0.0, posinf=3.0e38, neginf=-3.0e38)


def _minmax_step(xmin: Tensor, xmax: Tensor, q_n: int, q_p: int) -> Tensor:
    """Smallest step whose grid ``[-Q_N s, Q_P s]`` covers ``[xmin, xmax]`` (0 always on the grid)."""
    s = xmax.clamp_min(0) / q_p
    if q_n > 0:
        s = torch.maximum(s, (-xmin).clamp_min(0) / q_n)
    return s


def _quant_mse(xc: Tensor, steps: Tensor, q_n: int, q_p: int, weights: Tensor | None = None) -> Tensor:
    """Per-channel (weighted) squared quantization error. xc [C, K], steps [R, C], weights [K] -> [R, C]."""
    out = torch.empty(steps.shape, dtype=xc.dtype, device=xc.device)
    for i in range(steps.shape[0]):
        s = steps[i].clamp_min(1e-30)[:, None]
        err = (torch.round((xc / s).clamp(-q_n, q_p)) * s - xc) ** 2
        out[i] = (err * weights).sum(1) if weights is not None else err.sum(1)
    return out


def _finalize_step(s: Tensor, eps: float) -> Tensor:
    s = s.to(torch.float32)
    # a channel / tensor with no range (all zeros): any step quantizes it exactly; 1.0 is a neutral choice
    s = torch.where(s > 0, s, torch.ones_like(s))
    s = torch.nan_to_num(s, nan=1.0, posinf=STEP_MAX)
    return s.clamp(eps, STEP_MAX)


def calibrate_step(
    x: Tensor,
    bits: int,
    signed: bool,
    per_channel: bool = False,
    ch_axis: int = 0,
    method: InitMethod = "minmax",
    percentile: float = 99.99,
    *,
    weights: Tensor | None = None,
    mse_ratios: tuple[float, float, int] = (0.01, 1.0, 100),
    max_samples: int = 2**20,
    eps: float = 1e-8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Step size(s) for quantizing ``x`` on the grid of ``bits``/``signed`` (post-training calibration).

    Methods:
        - ``"minmax"``: smallest step covering the range, ``max(max(x)/Q_P, -min(x)/Q_N)``.
        - ``"percentile"``: the same with the ``percentile`` / ``100 - percentile`` percentiles instead of max/min.
        - ``"mse"``: minimise ``sum (Q(x; s) - x)^2`` over ``s = ratio * s_minmax``, ``ratio`` on a geometric grid
          of ``mse_ratios = (lo, hi, count)`` (default 100 values in [0.01, 1]; geometric so that the resolution
          is 5 % at every scale: heavy-tailed data at 2-4 bits has optimal clipping well below 0.2 of max|x|).
          The first minimum (smallest step) wins ties.
        - ``"lsq"``: ``2 mean|x| / sqrt(Q_P)`` (Esser et al. ICLR 2020, section 2; methods.md 1.2).

    Args:
        x: data, any shape; per channel: ``C = x.shape[ch_axis]``.
        bits, signed: the grid (:func:`grid_range`).
        per_channel, ch_axis: one step per index of ``ch_axis`` or a single step.
        percentile: in (50, 100], for ``"percentile"``.
        weights: per-tensor only: non-negative weight of each element of ``x`` (a weighted sample of a larger
            population, as :class:`ActObserver` gives); same number of elements as ``x``.
        max_samples: per-tensor unweighted ``"percentile"``/``"mse"`` use a random subsample of at most this
            many values.
        eps: lower bound of the returned step; channels with no range (all zero) get step 1.0.
        generator: random generator for the subsample.

    Returns:
        float32 step, shape ``[C]`` (per channel) or ``[]``, finite, in ``[eps, STEP_MAX]``.

    Raises:
        ValueError: unknown method, empty ``x``, percentile outside (50, 100], bad ``mse_ratios``, ``weights``
            with ``per_channel`` or of the wrong size.
    """
    if method not in _INITS:
        raise ValueError(f"method must be one of {_INITS}, got {method!r}")
    if x.numel() == 0:
        raise ValueError("cannot calibrate a step on an empty tensor")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    q_n, q_p = grid_range(bits, signed)
    xc = _channels_first(x, per_channel, ch_axis)
    w = None
    if weights is not None:
        if per_channel or weights.numel() != x.numel():
            raise ValueError("weights: per-tensor only, one weight per element of x")
        w = weights.detach().reshape(-1).to(xc)
        w = w / w.sum().clamp_min(1e-30)
    if method == "lsq":
        a = xc.abs()
        s = 2.0 * ((a * w).sum(1) if w is not None else a.mean(1)) / math.sqrt(q_p)
    elif method == "minmax":
        s = _minmax_step(xc.amin(1), xc.amax(1), q_n, q_p)
    else:
        if w is None and xc.shape[1] > max_samples:
            idx = torch.randint(xc.shape[1], (max_samples,), generator=generator).to(xc.device)
            xc = xc[:, idx]
        if method == "percentile":
            s = _percentile_step(xc, q_n, q_p, percentile, w)
        else:
            s = _mse_step(xc, q_n, q_p, mse_ratios, w)
    s = _finalize_step(s, eps)
    return s if per_channel else s.reshape(())


def _percentile_step(xc: Tensor, q_n: int, q_p: int, percentile: float, w: Tensor | None) -> Tensor:
    p = percentile / 100.0
    hi = _quantile_rows(xc, p, w)
    lo = _quantile_rows(xc, 1.0 - p, w)
    return _minmax_step(lo, hi, q_n, q_p)


def _quantile_rows(xc: Tensor, p: float, w: Tensor | None = None) -> Tensor:
    """Row-wise quantile with linear interpolation (torch.quantile is limited to 2^24 elements); weighted: the
    smallest value whose cumulative weight reaches p."""
    srt, order = torch.sort(xc, dim=1)
    k = xc.shape[1]
    if w is not None:
        cw = torch.cumsum(w[order[0]], 0)
        i = int(torch.searchsorted(cw, torch.tensor([p], dtype=cw.dtype, device=cw.device)).clamp(max=k - 1))
        return srt[:, i]
    pos = p * (k - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, k - 1)
    frac = pos - lo
    return srt[:, lo] * (1 - frac) + srt[:, hi] * frac


def _mse_step(
    xc: Tensor, q_n: int, q_p: int, mse_ratios: tuple[float, float, int], w: Tensor | None = None
) -> Tensor:
    lo, hi, count = mse_ratios
    if not (0 < lo <= hi and int(count) >= 1):
        raise ValueError(f"mse_ratios must be (lo, hi, count) with 0 < lo <= hi, count >= 1, got {mse_ratios}")
    base = _minmax_step(xc.amin(1), xc.amax(1), q_n, q_p)  # [C]
    ratios = torch.logspace(math.log10(lo), math.log10(hi), int(count), dtype=xc.dtype, device=xc.device)
    cands = ratios[:, None] * base[None, :]  # [R, C]
    err = _quant_mse(xc, cands, q_n, q_p, w)  # [R, C]
    best = err.argmin(0)  # first minimum: the smallest ratio among ties
    return cands.gather(0, best[None, :])[0]


class ActObserver:
    """Collects activation statistics across calibration batches with bounded memory.

    Keeps, over all batches:

    - exact running ``min``, ``max``, ``sum |x|`` and count (float64);
    - the exact ``tail_samples`` largest and smallest values (streaming top-k), so rare extremes, which dominate
      min-max, high percentiles and the squared error of clipping, are never missed;
    - a uniform random subsample of at most ``max_samples`` values (weighted reservoir sampling, Efraimidis &
      Spirakis 2006: each batch contributes up to ``max_samples`` values drawn with replacement, each standing
      for ``numel / drawn`` elements, keys ``U^(1/w)``, the largest keys kept).

    :meth:`sample` combines them into a weighted sample of the population (while everything seen fits in the
    subsample it is the data itself, weights 1): the tails with weight 1, the subsample values strictly between
    the tails with weight ``(count - tails) / kept``. ``minmax`` and ``lsq`` steps use the exact statistics
    (``lsq``: mean ``|x|`` over all batches); ``percentile`` and ``mse`` use the weighted sample.
    Memory: ``O(max_samples + tail_samples)`` whatever the number or size of batches.

    Raises:
        ValueError: ``max_samples < 1``, ``tail_samples < 0``.
    """

    def __init__(self, max_samples: int = 2**18, tail_samples: int = 1024, seed: int = 0) -> None:
        if max_samples < 1 or tail_samples < 0:
            raise ValueError("max_samples must be >= 1 and tail_samples >= 0")
        self.max_samples = int(max_samples)
        self.tail_samples = int(tail_samples)
        self.min = math.inf
        self.max = -math.inf
        self.abs_sum = 0.0
        self.count = 0
        self.batches = 0
        self._exact = True  # the subsample holds every value seen
        self._values: Tensor | None = None
        self._logkeys: Tensor | None = None
        self._top = torch.empty(0)
        self._bottom = torch.empty(0)
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: Tensor) -> None:
        """Add one batch ``x`` (any shape; non-finite values are ignored)."""
        x = x.detach()
        if x.numel() == 0:
            return
        x = x.reshape(-1).float()
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            x = x[finite]
            if x.numel() == 0:
                return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.abs_sum += float(x.abs().sum(dtype=torch.float64))
        self.count += x.numel()
        self.batches += 1
        n = x.numel()
        if self.tail_samples:
            k = min(n, self.tail_samples)
            top = torch.cat([self._top, torch.topk(x, k).values.cpu()])
            bottom = torch.cat([self._bottom, torch.topk(x, k, largest=False).values.cpu()])
            self._top = torch.topk(top, min(top.numel(), self.tail_samples)).values
            self._bottom = torch.topk(bottom, min(bottom.numel(), self.tail_samples), largest=False).values
        m = min(n, self.max_samples)
        if m == n:
            vals = x.cpu()
        else:
            self._exact = False
            idx = torch.randint(n, (m,), generator=self._gen)
            vals = x[idx.to(x.device)].cpu()
        w = n / m
        logkeys = torch.log(torch.rand(m, generator=self._gen, dtype=torch.float64).clamp_min(1e-300)) / w
        if self._values is not None:
            vals = torch.cat([self._values, vals])
            logkeys = torch.cat([self._logkeys, logkeys])
        if vals.numel() > self.max_samples:
            self._exact = False
            keep = torch.topk(logkeys, self.max_samples).indices
            vals, logkeys = vals[keep], logkeys[keep]
        self._values, self._logkeys = vals, logkeys

    @property
    def values(self) -> Tensor:
        """The uniform subsample, float32 ``[<= max_samples]`` on CPU.

        Raises:
            RuntimeError: nothing observed yet.
        """
        if self._values is None:
            raise RuntimeError("ActObserver has seen no data")
        return self._values

    def sample(self) -> tuple[Tensor, Tensor | None]:
        """Weighted sample ``(values [K], weights [K] or None)`` standing for all observed values (see class doc).

        Raises:
            RuntimeError: nothing observed yet.
        """
        vals = self.values
        if self._exact or self.tail_samples == 0:
            return vals, None
        hi_thr, lo_thr = float(self._top.min()), float(self._bottom.max())
        body = vals[(vals < hi_thr) & (vals > lo_thr)]
        n_body = max(self.count - self._top.numel() - self._bottom.numel(), 0)
        out = torch.cat([self._bottom, body, self._top])
        w = torch.cat([
            torch.ones(self._bottom.numel()),
            torch.full((body.numel(),), n_body / max(body.numel(), 1)),
            torch.ones(self._top.numel()),
        ]).to(torch.float64)
        return out, w

    @property
    def is_empty(self) -> bool:
        """True until a batch with finite values was observed."""
        return self.count == 0

    def non_negative(self) -> bool:
        """True when every observed value was ``>= 0`` (the ``act_signed="auto"`` rule)."""
        return self.min >= 0.0

    def step(
        self, bits: int, signed: bool, method: InitMethod = "lsq", percentile: float = 99.99, eps: float = 1e-8
    ) -> Tensor:
        """Per-tensor step ``[]`` from the observed data (methods as :func:`calibrate_step`).

        Raises:
            RuntimeError: nothing observed. ValueError: unknown method.
        """
        if self.is_empty:
            raise RuntimeError("ActObserver has seen no data")
        if method not in _INITS:
            raise ValueError(f"method must be one of {_INITS}, got {method!r}")
        q_n, q_p = grid_range(bits, signed)
        if method == "lsq":
            s = torch.tensor(2.0 * (self.abs_sum / self.count) / math.sqrt(q_p))
            return _finalize_step(s, eps).reshape(())
        if method == "minmax":
            s = _minmax_step(torch.tensor([self.min]), torch.tensor([self.max]), q_n, q_p)
            return _finalize_step(s, eps).reshape(())
        vals, w = self.sample()
        return calibrate_step(
            vals, bits, signed, per_channel=False, method=method, percentile=percentile, eps=eps, weights=w,
            generator=self._gen,
        )


# --------------------------------------------------------------------------------------------------------------
# The quantizer module
# --------------------------------------------------------------------------------------------------------------
class LSQQuantizer(nn.Module):
    """Learned-step uniform fake quantizer with STE or soft rounding (LSQ, Esser et al. ICLR 2020; QGait soft
    quantizer, arXiv 2405.13859 / methods.md 1.2-1.3).

    Args:
        bits: 2..8.
        signed: ``True`` / ``False``, or ``None`` to decide at initialisation (unsigned if the data's min >= 0).
        per_channel: one step per index of ``ch_axis`` (weights: output channels) instead of one step.
        ch_axis: channel axis of the input for ``per_channel``.
        rounding: ``"ste"`` (stage 1) | ``"soft_backward"`` | ``"soft_forward"`` (stage 2, methods.md 1.3).
        num_channels: size of the per-channel step; if ``None`` it is sized at initialisation from the data.
        role: ``"weight"`` or ``"activation"``; sets N in the gradient scale ``g = 1/sqrt(N Q_P)``:
            weights: ``N = numel / (number of steps)`` (the weights sharing one step; LSQ's N_W for per-tensor);
            activations: ``N = numel / (number of steps) / batch`` (features per sample; LSQ's N_F), with batch
            ``= x.shape[0]`` for ``x.dim() > 1``.
        init_method: ``"lsq"`` (``2 mean|x| / sqrt(Q_P)``) | ``"minmax"`` | ``"percentile"`` | ``"mse"``.
        percentile: for ``init_method="percentile"``.
        eps: step lower bound in the forward pass.
        use_fused: use ATen's fused fake-quant kernels for hard-rounding forwards (same grid and tie rule).
            Off by default: on this project's CPU build (torch 2.13) they measured about 5x slower than the
            vectorised torch ops for the forward (see ``tests/quant/bench_fake_quant.py``). Without it, large
            float32 inputs use the fused ``torch.compile`` kernels of the module docstring
            (:func:`set_compiled_kernels`, ``QGAIT_COMPILE_QUANT=0`` to turn them off).
        alpha: initial soft-rounding sharpness (see :meth:`set_alpha`).

    State (all in ``state_dict``): ``step`` (Parameter ``[C]`` or ``[]``), ``initialized`` (bool ``[]``),
    ``signed_state`` (int8 ``[]``: -1 undecided, 0 unsigned, 1 signed), ``alpha`` (float32 ``[]``).

    Forward: ``x [...] -> x_q [...]`` (same shape/dtype). When not yet initialised, the first forward initialises
    from its input (activations: that batch; use :func:`qgait.quant.calibrate_` to initialise from several
    batches). ``soft_forward`` rounds softly only in training mode (hard in eval). ``enabled = False`` bypasses.

    Raises:
        ValueError: bad bits, rounding, role, init_method or percentile.
    """

    def __init__(
        self,
        bits: int,
        signed: bool | None = None,
        per_channel: bool = False,
        ch_axis: int = 0,
        rounding: RoundingMode = "ste",
        *,
        num_channels: int | None = None,
        role: Literal["weight", "activation"] = "weight",
        init_method: InitMethod = "lsq",
        percentile: float = 99.99,
        eps: float = 1e-8,
        use_fused: bool = False,
        alpha: float = 2.0,
    ) -> None:
        super().__init__()
        grid_range(bits, True)  # validates bits
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        if role not in ("weight", "activation"):
            raise ValueError(f"role must be 'weight' or 'activation', got {role!r}")
        if init_method not in _INITS:
            raise ValueError(f"init_method must be one of {_INITS}, got {init_method!r}")
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self._bits = int(bits)
        self.per_channel = bool(per_channel)
        self.ch_axis = int(ch_axis)
        self.rounding: RoundingMode = rounding
        self.role = role
        self.init_method: InitMethod = init_method
        self.percentile = float(percentile)
        self.eps = float(eps)
        self.use_fused = bool(use_fused)
        self.enabled = True
        self.observer: ActObserver | None = None
        shape = (int(num_channels) if num_channels else 1,) if per_channel else ()
        self.step = nn.Parameter(torch.ones(shape))
        sign = -1 if signed is None else int(bool(signed))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed_state", torch.tensor(sign, dtype=torch.int8))
        # python mirrors of the two buffers: forward reads these (no device sync, no torch.compile graph break);
        # kept in sync by _decide_sign, _set_step and _load_from_state_dict
        self._initialized_py = False
        self._signed_py = sign
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    # ------------------------------------------------------------------ properties
    @property
    def bits(self) -> int:
        """Bit width (2..8)."""
        return self._bits

    @property
    def is_signed(self) -> bool | None:
        """``True``/``False``, or ``None`` while ``signed`` is automatic and not yet decided."""
        v = self._signed_py
        return None if v < 0 else bool(v)

    def _grid(self) -> tuple[int, int]:
        signed = self.is_signed
        if signed is None:
            raise RuntimeError("signedness not decided yet: initialise the quantizer (calibrate_ or a forward)")
        return grid_range(self._bits, signed)

    @property
    def q_n(self) -> int:
        """``Q_N`` (0 for unsigned). Raises RuntimeError while the signedness is undecided."""
        return self._grid()[0]

    @property
    def q_p(self) -> int:
        """``Q_P``. Raises RuntimeError while the signedness is undecided."""
        return self._grid()[1]

    @property
    def scale(self) -> Tensor:
        """The effective step ``max(step, eps)``, detached: the ONNX ``QuantizeLinear`` scale. ``[C]`` or ``[]``."""
        return self.step.detach().clamp_min(self.eps)

    @property
    def zero_point(self) -> Tensor:
        """Zero point (always 0: symmetric signed or unsigned-from-zero grids), int32, shape of :attr:`scale`."""
        return torch.zeros(self.step.shape, dtype=torch.int32, device=self.step.device)

    @property
    def is_initialized(self) -> bool:
        """Whether the step has been initialised from data."""
        return self._initialized_py

    # ------------------------------------------------------------------ state changes
    def set_alpha(self, alpha: float) -> None:
        """Set the soft-rounding sharpness (used by ``soft_backward``/``soft_forward``).

        Raises:
            ValueError: ``alpha`` not a positive finite number.
        """
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be positive and finite, got {alpha}")
        self.alpha.fill_(alpha)

    def set_rounding(self, rounding: RoundingMode) -> None:
        """Switch between ``"ste"``, ``"soft_backward"`` and ``"soft_forward"`` (e.g. stage 1 -> stage 2).

        Raises:
            ValueError: unknown rounding.
        """
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        self.rounding = rounding

    def _decide_sign(self, non_negative: bool) -> bool:
        if self.is_signed is None:
            self._signed_py = 0 if non_negative else 1
            self.signed_state.fill_(self._signed_py)
        return bool(self.is_signed)

    def _set_step(self, s: Tensor) -> None:
        s = s.to(device=self.step.device, dtype=self.step.dtype)
        if self.per_channel:
            s = s.reshape(-1)
        else:
            s = s.reshape(())
        if s.shape != self.step.shape:
            self.step.data = s.clone()
        else:
            self.step.data.copy_(s)
        self.initialized.fill_(True)
        self._initialized_py = True

    @torch.no_grad()
    def initialize(self, x: Tensor, method: InitMethod | None = None) -> None:
        """Initialise the step (and an automatic signedness) from the data ``x``.

        Args:
            x: weights (``[C_out, ...]`` with ``ch_axis``) or an activation batch; any shape.
            method: overrides :attr:`init_method` (``"lsq"``, ``"minmax"``, ``"percentile"``, ``"mse"``).

        Raises:
            ValueError: empty ``x``, unknown method, per-channel size mismatch with ``num_channels``.
        """
        method = method or self.init_method
        finite = x.detach()[torch.isfinite(x.detach())] if x.numel() else x.detach()
        non_negative = bool(finite.numel() == 0 or finite.min() >= 0)
        signed = self._decide_sign(non_negative)
        s = calibrate_step(
            x, self._bits, signed, self.per_channel, self.ch_axis, method, self.percentile, eps=self.eps
        )
        self._set_step(s)

    def start_observing(self, max_samples: int = 2**18) -> ActObserver:
        """Attach a fresh :class:`ActObserver`; until :meth:`finish_observing`, forward records and returns ``x``."""
        self.observer = ActObserver(max_samples=max_samples)
        return self.observer

    @torch.no_grad()
    def finish_observing(self, method: InitMethod | None = None) -> bool:
        """Detach the observer and initialise from it. Returns False (step untouched) if it saw no data.

        Raises:
            RuntimeError: not observing. ValueError: unknown method.
        """
        obs = self.observer
        if obs is None:
            raise RuntimeError("finish_observing() without start_observing()")
        self.observer = None
        if obs.is_empty:
            return False
        if self.per_channel:
            raise RuntimeError("observers give per-tensor steps; this quantizer is per-channel")
        signed = self._decide_sign(obs.non_negative())
        method = method or self.init_method
        self._set_step(obs.step(self._bits, signed, method, self.percentile, self.eps))
        return True

    def _grad_scale(self, x: Tensor) -> float:
        n = x.numel() / max(self.step.numel(), 1)
        if self.role == "activation" and x.dim() > 1:
            n /= max(x.shape[0], 1)
        return 1.0 / math.sqrt(max(n, 1.0) * self.q_p)

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x`` (any shape; per channel: ``x.shape[ch_axis] == C``). Returns the same shape/dtype."""
        if not self.enabled:
            return x
        if self.observer is not None:
            self.observer.update(x)
            return x
        if not self._initialized_py:
            self.initialize(x)
        q_n, q_p = self._grid()
        rounding = self.rounding
        if rounding == "soft_forward" and not self.training:
            rounding = "ste"
        ch_axis = self.ch_axis % x.dim() if self.per_channel else None
        return _LSQFakeQuant.apply(
            x, self.step, self.alpha, q_n, q_p, self._grad_scale(x), ch_axis, _MODE[rounding], self.eps,
            self.use_fused,
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D102
        key = prefix + "step"
        if key in state_dict and state_dict[key].shape != self.step.shape and self.per_channel:
            self.step.data = torch.empty_like(state_dict[key], device=self.step.device, dtype=self.step.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized_py = bool(self.initialized)
        self._signed_py = int(self.signed_state)

    def extra_repr(self) -> str:  # noqa: D102
        signed = {None: "auto", True: "signed", False: "unsigned"}[self.is_signed]
        pc = f"per_channel(axis={self.ch_axis}, C={self.step.numel()})" if self.per_channel else "per_tensor"
        return (
            f"bits={self._bits}, {signed}, {pc}, rounding={self.rounding}, role={self.role}, "
            f"init={self.init_method}, initialized={self.is_initialized}, enabled={self.enabled}"
        )
