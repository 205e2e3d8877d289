"""The LSQ fake-quant op (closed-form gradients) and its fused ``torch.compile`` kernels.

Equations
---------
LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020, section 2, eqs. 1-3; methods.md 1.2)::

    v   = x / s,   u = clip(v, -Q_N, Q_P),   x_q = R(u) * s
    dx_q/dx = R'(u)             if -Q_N <= v <= Q_P, else 0
    dx_q/ds = R(u) - u * R'(u)  if -Q_N <= v <= Q_P;  -Q_N if v < -Q_N;  Q_P if v > Q_P
    step gradient scaled by g = 1 / sqrt(N * Q_P)       (LSQ section 2, "step size gradient scale")

with ``R = round`` and ``R' = 1`` for the straight-through estimator (STE), or the soft rounding of
:mod:`qgait.quant.rounding` (QGait, arXiv 2405.13859; methods.md 1.3). With ``step_grad="ste"`` a soft rounding
keeps ``R' = 1`` in ``dx_q/ds`` (``R(u) - u`` inside): the soft derivative then shapes only ``dL/dx``. Grids: :func:`qgait.quant.grid.grid_range`.

Numerical safety: the step is clamped to ``>= eps`` (default 1e-8) in the forward pass, with a straight-through
gradient to the raw parameter so that a step driven below ``eps`` can recover; alpha is clamped as in
:mod:`qgait.quant.rounding`. Infinite inputs clip to the grid ends with zero input gradient.

Cost: the fake quantizer is one ``torch.autograd.Function`` with the closed-form backward above. It saves only
its input (which the previous layer keeps alive anyway) and recomputes ``u`` in the backward, where plain
autograd through div/clamp/round/mul saves two full-size intermediates (see ``tests/quant/bench_fake_quant.py``).
It compiles under ``torch.compile`` without graph breaks.

Fused kernels: in eager mode the elementwise math of the forward and of the backward (with the step-gradient
reduction) runs as one ``torch.compile`` (inductor) kernel each, instead of about 4 (forward) and 8-15
(backward) separate full-size passes that each allocate a tensor: the same formulas (the ``_*_math`` functions
below and in :mod:`qgait.quant.rounding` are the single source of both paths), so the hard-rounding forward is
bit-identical and gradients agree to float rounding (the kernels evaluate ``exp``/``tanh`` with vectorised libm
and sum in a different order).
Used for float32 tensors of at least ``COMPILE_MIN_NUMEL`` elements, outside ``torch.compile``/tracing/export and
when no graph is being recorded through the quantizer (``create_graph``); everything else, and every case where
compilation is unavailable or fails (one warning, then eager for the rest of the process), runs the eager code.
Disable with the environment variable ``QGAIT_COMPILE_QUANT=0`` or :func:`set_compiled_kernels`. The first use
of each kernel compiles it (seconds to a minute on a busy CPU; inductor caches it on disk for later processes);
shapes are dynamic (inputs are flattened to ``[N]`` per tensor and ``[pre, C, post]`` per channel), so a new
batch or layer size does not recompile. A channels-last input is flattened in its memory order (a view, not a copy)
and its output and gradient stay channels-last, so the convolutions after a quantizer keep the format.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable

import torch
from torch import Tensor

from .grid import _ROUNDINGS, RoundingMode
from .rounding import _alpha_tensor, _compute_dtype, _soft_derivative_math, _soft_value_math

__all__ = ["lsq_fake_quantize", "COMPILE_MIN_NUMEL", "set_compiled_kernels", "compiled_kernels_enabled"]


def _bshape(x: Tensor, ch_axis: int | None) -> list[int]:
    """Shape that broadcasts a per-channel vector along ``ch_axis`` of ``x``."""
    if ch_axis is None:
        return []
    shape = [1] * x.dim()
    shape[ch_axis] = x.shape[ch_axis]
    return shape


_MODE = {"ste": 0, "soft_backward": 1, "soft_forward": 2}
_STE_STEP = 2
"""Offset of the op's mode for a soft rounding whose step gradient keeps LSQ's STE form: 3 = soft_backward,
4 = soft_forward (``step_grad="ste"``)."""


def _op_mode(rounding: RoundingMode, step_grad: str = "soft") -> int:
    """The op's integer mode: 0 ste, 1 soft_backward, 2 soft_forward; +2 for a soft mode with ``step_grad="ste"``.

    Raises:
        ValueError: unknown ``rounding`` or ``step_grad``.
    """
    if rounding not in _MODE:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    if step_grad not in ("soft", "ste"):
        raise ValueError(f"step_grad must be 'soft' or 'ste', got {step_grad!r}")
    mode = _MODE[rounding]
    return mode + _STE_STEP if mode and step_grad == "ste" else mode


def _soft_fwd(mode: int) -> bool:
    """Whether ``mode`` rounds softly in the forward pass (soft_forward, with either step gradient)."""
    return mode in (2, 4)


def _lsq_forward_math(x: Tensor, s: Tensor, a: Tensor, lo: float | Tensor, hi: float | Tensor, soft: bool) -> Tensor:
    """``R(clip(x/s, lo, hi)) * s``; ``s`` broadcasts against ``x``, ``R`` = round or softround_a. A new tensor."""
    u = (x / s).clamp_(lo, hi)
    q = _soft_value_math(u, a) if soft else u.round_()
    return q.mul_(s)


def _lsq_grad_math(x: Tensor, s: Tensor, a: Tensor, g: Tensor, lo: float | Tensor, hi: float | Tensor, mode: int):
    """Closed-form LSQ gradients (module docstring): ``(dL/dx, dx_q/ds)``, both of ``x``'s shape (elementwise).

    ``mode``: 0 ste, 1 soft_backward, 2 soft_forward, 3 / 4 = 1 / 2 with the step gradient in LSQ's STE form
    ``R(u) - u`` inside (the soft derivative then drives only ``dL/dx``). ``u`` and the ``inside`` mask are computed
    once; the temporaries are reused in place.
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
        q = _soft_value_math(u, a) if _soft_fwd(mode) else torch.round(u)
        if mode > 2:  # step gradient with R' = 1 (LSQ's form): R(u) - u inside, R(u) = the clip bound outside
            ds = q.sub_(u.mul_(inside))
        else:
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


def _bwd_soft_backward_ste_step(x, s, a, g, lo: float | Tensor, hi: float | Tensor):
    return _grad_reduced(x, s, a, g, lo, hi, 3)


def _bwd_soft_forward_ste_step(x, s, a, g, lo: float | Tensor, hi: float | Tensor):
    return _grad_reduced(x, s, a, g, lo, hi, 4)


# one function (one dynamo code cache) per kernel, so modes do not compete for the recompile limit
_KERNEL_FNS = {"fwd0": _fwd_hard, "fwd2": _fwd_soft, "bwd0": _bwd_ste, "bwd1": _bwd_soft_backward,
               "bwd2": _bwd_soft_forward, "bwd3": _bwd_soft_backward_ste_step, "bwd4": _bwd_soft_forward_ste_step}


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


def _memory_order(x: Tensor) -> tuple[int, ...] | None:
    """The dimension order of a channels-last ``x`` (4-D ``(0, 2, 3, 1)``, 5-D ``(0, 2, 3, 4, 1)``), in which
    ``x.permute(order)`` is a contiguous view; ``None`` for any other tensor (contiguous ones included)."""
    if x.is_contiguous():
        return None
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return (0, 2, 3, 1)
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return (0, 2, 3, 4, 1)
    return None


def _flat_layout(x: Tensor, s: Tensor, ch_axis: int | None,
                 order: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
    """``x`` as ``[pre, C, post]`` and the step as ``[C, 1]``; per tensor ``C = 1`` (``[1, 1, N]``, ``[1, 1]``).

    One rank for both layouts, so that each kernel compiles once (dynamo guards on tensor ranks). With ``order``
    (:func:`_memory_order`) ``x`` is first permuted into its memory order, so a channels-last tensor is flattened
    as a view instead of copied into NCHW order (``ch_axis``, in ``x``'s own dimensions, stays the channel axis)."""
    if order is not None:
        if ch_axis is not None:
            ch_axis = order.index(ch_axis)
        x = x.permute(order)
    if ch_axis is None:
        return x.reshape(1, 1, -1), s.reshape(1, 1)
    c = x.shape[ch_axis]
    return x.reshape(math.prod(x.shape[:ch_axis]), c, -1), s.reshape(c, 1)


def _unflatten(out: Tensor, x: Tensor, order: tuple[int, ...] | None) -> Tensor:
    """A kernel's flat output back in ``x``'s shape and memory format (the inverse of :func:`_flat_layout`)."""
    if order is None:
        return out.view(x.shape)
    inverse = tuple(order.index(i) for i in range(len(order)))
    return out.view(x.permute(order).shape).permute(inverse)


def _grid_tensors(q_n: int, q_p: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The clip bounds ``-Q_N, Q_P`` as 0-dim tensors: dynamo specializes Python floats (one compilation per grid)."""
    return (torch.tensor(float(-q_n), dtype=like.dtype, device=like.device),
            torch.tensor(float(q_p), dtype=like.dtype, device=like.device))


def _run_kernel(name: str, *args: Tensor | float):
    """Call the compiled kernel; on any failure warn once, switch the kernels off and return ``None``."""
    # detached: the kernels run without autograd (no-grad forward, or inside the backward), and a tensor that
    # requires grad (a weight) would otherwise cost dynamo a recompilation of its own (dispatch-key guard)
    args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
    try:
        return _kernel(name)(*args)
    except Exception as e:  # noqa: BLE001 - any compiler/toolchain problem: fall back to the eager code
        _compile_state["failed"] = True
        warnings.warn(f"qgait: fused fake-quant kernels unavailable ({type(e).__name__}: {e}); using eager ops. "
                      f"Set {_COMPILE_ENV}=0 to skip the attempt.", RuntimeWarning, stacklevel=3)
        return None


def _fused_forward(x: Tensor, s: Tensor, a: Tensor, q_n: int, q_p: int, ch_axis: int | None, mode: int):
    """Forward through the compiled kernel, or ``None`` when it failed."""
    order = _memory_order(x)
    xf, sf = _flat_layout(x, s, ch_axis, order)
    out = _run_kernel("fwd2" if _soft_fwd(mode) else "fwd0", xf, sf, a, *_grid_tensors(q_n, q_p, x))
    return None if out is None else _unflatten(out, x, order)


def _fused_grads(x: Tensor, s: Tensor, a: Tensor, g: Tensor, q_n: int, q_p: int, ch_axis: int | None, mode: int):
    """``(dL/dx, dL/ds before grad_scale)`` through the compiled kernel, or ``None`` when it failed."""
    order = _memory_order(x)
    xf, sf = _flat_layout(x, s, ch_axis, order)
    gf = (g if order is None else g.permute(order)).reshape(xf.shape)
    out = _run_kernel(f"bwd{mode}", xf, sf, a, gf, *_grid_tensors(q_n, q_p, x))
    return None if out is None else (_unflatten(out[0], x, order), out[1])


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
        if use_fused and not _soft_fwd(mode) and x.dtype == torch.float32 and s.dtype == torch.float32:
            # one fused ATen pass: clamp(nearbyint(x * (1/s)), -Q_N, Q_P) * s: the same grid and tie rule, but x * (1/s)
            # is not x / s, so inputs within an ulp of a threshold can round differently (quant/inference.py)
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
        return _lsq_forward_math(x.to(dt), sb, a, -q_n, q_p, _soft_fwd(mode)).to(x.dtype)

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
    step_grad: str = "soft",
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
        step_grad: for the soft roundings, ``"soft"`` (default) uses ``R'`` = the soft derivative in ``dx_q/ds``
            too; ``"ste"`` keeps LSQ's ``round(u) - u`` there, so the soft derivative drives only ``dL/dx``
            (issue 13's variant; ignored for ``"ste"``).

    Returns:
        ``x_q``, same shape and dtype as ``x``, on the grid ``step * k``, ``k`` integer in ``[-q_n, q_p]``
        (for ``soft_forward``: ``step * softround(u)``).

    Raises:
        ValueError: unknown rounding or step_grad, step shape not matching ``ch_axis``.
    """
    mode = _op_mode(rounding, step_grad)
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
        x, step, a, int(q_n), int(q_p), float(grad_scale), ch_axis, mode, float(eps), bool(use_fused)
    )
