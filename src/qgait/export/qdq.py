"""Deploy modules holding real integers: int8 weights and explicit quantize / dequantize ops.

:class:`QDQConv` is the "reference quantized" form of a folded quantized conv, the representation that both
exporters read:

- ``torch.onnx.export`` (dynamo) maps ``quantized_decomposed.quantize_per_tensor`` / ``dequantize_per_tensor`` /
  ``dequantize_per_channel`` to ONNX ``QuantizeLinear`` / ``DequantizeLinear`` with the int8 weight buffer as an int8
  initializer: a QDQ graph that ONNX Runtime fuses into ``QLinearConv``;
- PT2E / inductor (``torch.compile``) pattern-matches the same ops into oneDNN int8 convolutions (the graph that
  ``torchao.quantization.pt2e.convert_pt2e`` would produce, here with the learned steps instead of observers).

The activation grid of ``b < 8`` bits (methods.md 1.2: ``[-Q_N, Q_P]``) is an 8-bit QuantizeLinear (ONNX takes only
8-bit ranges) followed by an integer clamp to ``[-Q_N, Q_P]``: ``clamp(round(clip(x / s, 0, 255)), 0, Q_P)`` equals
``round(clip(x / s, 0, Q_P))`` because rounding is monotonic and ``Q_P`` is an integer. The clamp runs on the
integer tensor (ONNX ``Clip`` on uint8), so ONNX Runtime still fuses the producing conv with its ``QuantizeLinear``.
The PT2E graph instead gives the grid's own ``quant_min`` / ``quant_max`` to ``quantize_per_tensor`` (``native_ranges``):
inductor's int8 conv fusion matches that form, and fails to lower the clamped one (torch 2.13: ``KeyError:
'o_inv_scale'``), while ``torch.onnx.export`` cannot express it (``QuantizeLinear`` saturates to the dtype's range).
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
import torch.nn.functional as F
from torch import Tensor, nn

from .fold import ActSpec, ConvSpec

__all__ = ["QDQConv", "fake_quant_act", "fake_quant_output"]

_qd = torch.ops.quantized_decomposed
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _qdtype(signed: bool) -> tuple[torch.dtype, int, int]:
    return (torch.int8, -128, 127) if signed else (torch.uint8, 0, 255)


def fake_quant_act(x: Tensor, act: ActSpec, native_ranges: bool = False) -> Tensor:
    """``x -> DequantizeLinear(clamp(QuantizeLinear(x)))`` on ``act``'s grid (8-bit container, see module doc);
    ``native_ranges``: the grid's range as the quantize op's ``quant_min`` / ``quant_max`` (PT2E), no clamp."""
    dt, lo, hi = _qdtype(act.signed)
    if native_ranges:
        q = _qd.quantize_per_tensor.default(x, act.scale, 0, -act.q_n, act.q_p, dt)
        return _qd.dequantize_per_tensor.default(q, act.scale, 0, -act.q_n, act.q_p, dt)
    q = _qd.quantize_per_tensor.default(x, act.scale, 0, lo, hi, dt)
    if (act.q_n, act.q_p) != (-lo, hi):
        q = torch.clamp(q, -act.q_n, act.q_p)
    return _qd.dequantize_per_tensor.default(q, act.scale, 0, lo, hi, dt)


def fake_quant_output(y: Tensor, act: ActSpec, native_ranges: bool = False) -> Tensor:
    """A conv output on ``act``'s learned grid (``QuantConfig.output_quant``), always as uint8: a signed grid
    ``k * s`` (``k`` in ``[-Q_N, Q_P]``) is stored as ``k + 128`` (zero point 128), so that ONNX Runtime fuses
    the conv into a u8s8 ``QLinearConv`` with a uint8 output like every other; levels outside the grid are
    clamped on the integers (``Clip`` on uint8), as for the input grids."""
    zp = 128 if act.signed else 0
    lo, hi = zp - act.q_n, zp + act.q_p
    if native_ranges:
        q = _qd.quantize_per_tensor.default(y, act.scale, zp, lo, hi, torch.uint8)
        return _qd.dequantize_per_tensor.default(q, act.scale, zp, lo, hi, torch.uint8)
    q = _qd.quantize_per_tensor.default(y, act.scale, zp, 0, 255, torch.uint8)
    if (lo, hi) != (0, 255):
        q = torch.clamp(q, lo, hi)
    return _qd.dequantize_per_tensor.default(q, act.scale, zp, 0, 255, torch.uint8)


class QDQConv(nn.Module):
    """A folded quantized conv: ``conv(Q_a(x), DQ(W_int8, s_w per channel), bias)``.

    Shapes as the original conv (``[N, C_in, *spatial] -> [N, C_out, *spatial']``).

    Args:
        conv: the original conv (geometry: stride, padding, dilation, groups).
        spec: its :class:`~qgait.export.fold.ConvSpec` (``w_int``, ``w_scale``, folded ``bias``).
        act: the input grid, or None for a float input.
        out_q: optional ``(scale, zero_point)`` of a uint8 requantization of the output (ONNX Runtime needs the
            output of a conv quantized to run it as ``QLinearConv``).
        out_act: optional learned output grid (``spec.out_act``, :func:`fake_quant_output`); excludes ``out_q``.
        native_ranges: grids below 8 bits as the quantize op's own range instead of a clamp (the PT2E form, see
            the module doc); the same values either way.

    Raises:
        ValueError: ``spec`` is not quantized; both ``out_q`` and ``out_act``.
    """

    def __init__(self, conv: nn.Module, spec: ConvSpec, act: ActSpec | None,
                 out_q: tuple[float, int] | None = None, out_act: ActSpec | None = None,
                 native_ranges: bool = False) -> None:
        super().__init__()
        if spec.w_int is None or spec.w_scale is None:
            raise ValueError(f"{spec.name}: QDQConv needs a quantized conv spec")
        if out_q is not None and out_act is not None:
            raise ValueError(f"{spec.name}: give out_q or out_act, not both")
        self.dims = conv.weight.dim() - 2
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.register_buffer("w_int", spec.w_int.clone().to(torch.int8))
        self.register_buffer("w_scale", spec.w_scale.clone().float())
        self.register_buffer("w_zero_point", torch.zeros(spec.w_int.shape[0], dtype=torch.int32))
        self.register_buffer("bias", spec.bias.clone().float())
        self.act = act
        self.out_q = out_q
        self.out_act = out_act
        self.native_ranges = native_ranges
        self.weight_bits = spec.weight_bits

    def forward(self, x: Tensor) -> Tensor:
        if self.act is not None:
            x = fake_quant_act(x, self.act, self.native_ranges)
        w = _qd.dequantize_per_channel.default(self.w_int, self.w_scale, self.w_zero_point, 0, -128, 127, torch.int8)
        y = _CONV_FN[self.dims](x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.out_q is not None:
            s, zp = self.out_q
            y = _qd.dequantize_per_tensor.default(
                _qd.quantize_per_tensor.default(y, s, zp, 0, 255, torch.uint8), s, zp, 0, 255, torch.uint8)
        if self.out_act is not None:
            y = fake_quant_output(y, self.out_act, self.native_ranges)
        return y

    def extra_repr(self) -> str:
        a = self.act
        a = "float" if a is None else f"{a.bits}-bit {'s' if a.signed else 'u'} {a.scale:.4g}"
        return f"w_bits={self.weight_bits}, C_out={self.w_int.shape[0]}, input={a}"
