"""Rounding functions of the fake quantizers: hard round with the straight-through estimator and QGait soft round.

STE (LSQ, Esser et al., ICLR 2020; methods.md 1.2): ``R = round``, ``R' = 1``.

Soft quantizer (QGait, arXiv 2405.13859; formula per methods.md 1.3, the DSQ family of Gong et al., ICCV 2019)::

    n = floor(u),  r = u - n - 0.5
    softround_alpha(u)  = n + 0.5 + 0.5 * tanh(alpha r) / tanh(alpha / 2)
    softround_alpha'(u) = alpha / (2 tanh(alpha / 2)) * sech^2(alpha r)

``rounding="soft_backward"`` keeps ``R = round`` in the forward pass and uses ``R' = softround_alpha'``;
``rounding="soft_forward"`` uses ``R = softround_alpha`` while training (hard ``round`` in eval mode, so what is
evaluated and exported is the hard quantizer).

Rounding rule (decided once, used everywhere): ``torch.round``, i.e. round half to even. Ties have probability
zero for real-valued data; the fused ATen kernels use the same rule (``nearbyint``).

Numerical safety: alpha is clamped to ``[1e-4, 1e6]`` (:data:`~qgait.quant.grid.ALPHA_MIN`,
:data:`~qgait.quant.grid.ALPHA_MAX`; below 1e-4 the soft functions equal their alpha -> 0 limits to float32
precision: ``softround -> u``, derivative -> 1); ``sech^2`` is evaluated as ``4 e^{-2|z|} / (1 + e^{-2|z|})^2``
(no overflow).

The in-place ``_soft_*_math`` helpers are the single source of the soft formulas for the fake-quant op
(:mod:`qgait.quant.fake_quant`), eager and fused alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .grid import _ROUNDINGS, ALPHA_MAX, ALPHA_MIN, RoundingMode

__all__ = ["soft_round", "soft_round_derivative", "round_ste", "round_soft_backward", "round_with"]


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
