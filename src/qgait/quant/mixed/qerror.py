"""Quantization errors for the sensitivity cost: ``||Q_b(W) - W||^2`` of a weight and the per-element squared
error of a layer input, each on its MSE-calibrated uniform grid.

The steps are the project's MSE calibration (:func:`qgait.quant.calibrate_step` with ``method="mse"``: the step
that minimises the squared error over a geometric grid of clipping ratios), per output channel for weights (as
``QuantConfig(per_channel=True)`` trains them) and per tensor for activations, on the grids of
:func:`qgait.quant.grid_range` (weights signed; activations unsigned when every observed value is ``>= 0``, the
``act_signed="auto"`` rule). Rounding is ``torch.round`` (half to even), the rule of the quantizers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..calibration import ActObserver, calibrate_step
from ..grid import grid_range

__all__ = ["fake_quantize", "weight_quant_error", "act_quant_mse"]


def fake_quantize(x: Tensor, step: Tensor, bits: int, signed: bool) -> Tensor:
    """``round(clamp(x / s, -Q_N, Q_P)) * s`` (LSQ grid, methods.md 1.2); ``step`` broadcasts against ``x``.

    Raises:
        ValueError: ``bits`` not in 2..8.
    """
    q_n, q_p = grid_range(bits, signed)
    return torch.round((x / step).clamp(-q_n, q_p)) * step


def weight_quant_error(weight: Tensor, bits: int, *, per_channel: bool = True, ch_axis: int = 0) -> float:
    """``||Q_b(W) - W||^2`` (sum over all elements, float64) with MSE-calibrated signed steps.

    Args:
        weight: any shape; per channel along ``ch_axis`` (axis 0: output channels, also right for grouped convs).
        bits: 2..8.
        per_channel: one step per index of ``ch_axis`` (default, as QAT) or one step for the tensor.

    Raises:
        ValueError: ``bits`` not in 2..8, an empty weight.
    """
    w = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    s = calibrate_step(w, bits, signed=True, per_channel=per_channel, ch_axis=ch_axis, method="mse").to(w)
    if per_channel:
        shape = [1] * w.dim()
        shape[ch_axis % w.dim()] = -1
        s = s.reshape(shape)
    return float(((fake_quantize(w, s, bits, True) - w) ** 2).sum(dtype=torch.float64))


def act_quant_mse(observer: ActObserver, bits_list: Iterable[int]) -> dict[int, float]:
    """Mean squared error per element of quantizing the observed activations, per bit width.

    The step of each width is the observer's MSE step (per tensor); the error is averaged over the observer's
    weighted sample (:meth:`qgait.quant.ActObserver.sample`: exact while everything seen fits in it). Signed iff
    some observed value was negative.

    Returns:
        ``{bits: mse}`` in squared activation units.

    Raises:
        RuntimeError: the observer saw no data. ValueError: bits outside 2..8.
    """
    signed = not observer.non_negative()
    vals, w = observer.sample()
    vals = vals.double()
    out = {}
    for b in bits_list:
        s = observer.step(int(b), signed, "mse").double()
        err = (fake_quantize(vals, s, int(b), signed) - vals) ** 2
        out[int(b)] = float((err * w).sum() / w.sum()) if w is not None else float(err.mean())
    return out
