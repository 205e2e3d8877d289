"""Drop-in quantized layers: ``nn.Conv1d/2d/3d`` and ``nn.Linear`` with composable quantizers attached.

Each ``QuantX`` is a subclass of ``nn.X`` (so ``isinstance(m, nn.Conv2d)`` holds and the ``weight``/``bias``
state-dict keys are unchanged) with two submodules:

- ``weight_quantizer``: :class:`~qgait.quant.quantizers.LSQQuantizer`, signed, per output channel (axis 0 of the
  weight, which is also right for grouped convolutions such as GaitBase's per-part FC
  ``nn.Conv1d(p*c_in, p*c_out, 1, groups=p)``: every output channel belongs to exactly one part) or per tensor;
- ``input_quantizer``: per-tensor LSQQuantizer (signed, unsigned or automatic), or ``None`` for an exact input
  (the first layer, whose input is the binary silhouette: methods.md 1.2).

Forward (methods.md 1.2): ``y = op(Q_a(x), Q_w(W), b)``; the bias stays in floating point (it becomes an int32
bias with scale ``s_a * s_w`` at export).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantizers import InitMethod, LSQQuantizer, RoundingMode

__all__ = ["QuantLayer", "QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantLinear", "QUANT_TWINS"]

_QUANT_KWARGS = (
    "weight_bits",
    "act_bits",
    "per_channel",
    "act_signed",
    "rounding",
    "quantize_input",
    "weight_init",
    "act_init",
    "percentile",
    "weight_quantizer",
    "input_quantizer",
    "narrow_weights",
)


class QuantLayer:
    """Mixin of the quantized layers (do not instantiate alone).

    Constructor keywords (besides the ``nn`` class's own arguments):
        weight_bits, act_bits: 2..8.
        per_channel: per-output-channel weight steps (default True).
        act_signed: ``True``/``False``/``None`` (None: decided from data at initialisation).
        rounding: ``"ste"`` | ``"soft_backward"`` | ``"soft_forward"`` for both quantizers.
        quantize_input: False gives ``input_quantizer = None`` (exact input).
        weight_init, act_init: step initialisation methods (``"lsq"``, ``"minmax"``, ``"percentile"``, ``"mse"``).
        percentile: for ``"percentile"`` initialisation.
        weight_quantizer, input_quantizer: ready quantizer objects to use instead of building them (composability:
            any ``nn.Module`` mapping a tensor to a tensor of the same shape).
        narrow_weights: the weight grid is the narrow signed ``[-Q_P, Q_P]`` (:func:`qgait.quant.grid_range`).
    """

    _FLOAT_CLS: ClassVar[type[nn.Module]]
    weight: nn.Parameter
    weight_quantizer: nn.Module
    input_quantizer: nn.Module | None

    def __init__(
        self,
        *args: Any,
        weight_bits: int = 8,
        act_bits: int = 8,
        per_channel: bool = True,
        act_signed: bool | None = None,
        rounding: RoundingMode = "ste",
        quantize_input: bool = True,
        weight_init: InitMethod = "lsq",
        act_init: InitMethod = "lsq",
        percentile: float = 99.99,
        weight_quantizer: nn.Module | None = None,
        input_quantizer: nn.Module | None = None,
        narrow_weights: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # the nn class
        dev = self.weight.device if self.weight.device.type != "meta" else None
        if weight_quantizer is None:
            weight_quantizer = LSQQuantizer(
                weight_bits, signed=True, per_channel=per_channel, ch_axis=0, rounding=rounding,
                num_channels=self.weight.shape[0] if per_channel else None, role="weight",
                init_method=weight_init, percentile=percentile, narrow=narrow_weights,
            )
            if dev is not None:
                weight_quantizer.to(dev)
        if input_quantizer is None and quantize_input:
            input_quantizer = LSQQuantizer(
                act_bits, signed=act_signed, per_channel=False, rounding=rounding, role="activation",
                init_method=act_init, percentile=percentile,
            )
            if dev is not None:
                input_quantizer.to(dev)
        self.weight_quantizer = weight_quantizer
        self.register_module("input_quantizer", input_quantizer if quantize_input else None)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def _float_args(cls, module: nn.Module) -> tuple[tuple, dict]:
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, weight_bits: int = 8, act_bits: int = 8, **quant_kwargs: Any):
        """Build the quantized twin of a float ``module``, sharing its ``weight``/``bias`` Parameters.

        The Parameters are the same objects (optimizer references stay valid; no copy), the device and the
        training flag are kept. ``quant_kwargs``: the constructor keywords of :class:`QuantLayer`.

        Raises:
            TypeError: ``module`` is not exactly the float class (e.g. already quantized, or a subclass).
            ValueError: bad bits / options (from the quantizers).
        """
        if type(module) is not cls._FLOAT_CLS:
            raise TypeError(
                f"{cls.__name__}.from_float expects an {cls._FLOAT_CLS.__name__}, got {type(module).__name__}"
            )
        unknown = set(quant_kwargs) - set(_QUANT_KWARGS)
        if unknown:
            raise TypeError(f"unknown keyword(s) for {cls.__name__}: {sorted(unknown)}")
        args, kwargs = cls._float_args(module)
        dev = module.weight.device
        new = cls(*args, **kwargs, device="meta", dtype=module.weight.dtype,
                  weight_bits=weight_bits, act_bits=act_bits, **quant_kwargs)
        new.weight = module.weight
        if getattr(module, "bias", None) is not None:
            new.bias = module.bias
        new.weight_quantizer.to(dev)
        if new.input_quantizer is not None:
            new.input_quantizer.to(dev)
        new.train(module.training)
        return new

    # ------------------------------------------------------------------ helpers
    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight ``Q_w(W)`` (same shape as ``weight``), as used in the forward pass."""
        return self.weight_quantizer(self.weight)

    @torch.no_grad()
    def int_weight(self) -> tuple[Tensor, Tensor]:
        """Integer weights and their scale for export: ``(W_int int8 [C_out, ...], scale [C_out] or [])`` with
        ``W_int * scale == Q_w(W)`` (hard rounding). A 4-bit grid is returned as int8 values in [-8, 7].

        Raises:
            RuntimeError: the weight quantizer is not an initialised LSQQuantizer.
        """
        q = self.weight_quantizer
        if not isinstance(q, LSQQuantizer) or not q.is_initialized:
            raise RuntimeError("int_weight() needs an initialised LSQQuantizer weight_quantizer")
        s = q.scale
        sb = s.reshape([-1] + [1] * (self.weight.dim() - 1)) if q.per_channel else s
        w = torch.round((self.weight.detach().float() / sb).clamp(-q.q_n, q.q_p)).to(torch.int8)
        return w, s

    def _quant_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _bits_repr(self) -> str:
        wq, aq = self.weight_quantizer, self.input_quantizer
        wb = getattr(wq, "bits", "?")
        ab = "exact" if aq is None else getattr(aq, "bits", "?")
        return f"w_bits={wb}, a_bits={ab}"

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, {self._bits_repr()}"


def _conv_args(module: nn.modules.conv._ConvNd) -> tuple[tuple, dict]:
    return (module.in_channels, module.out_channels, module.kernel_size), dict(
        stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
        bias=module.bias is not None, padding_mode=module.padding_mode,
    )


class _QuantConvNd(QuantLayer):
    _float_args = classmethod(lambda cls, m: _conv_args(m))

    def forward(self, x: Tensor) -> Tensor:
        """``x [n, C_in, *spatial] -> y [n, C_out, *spatial']``: conv of ``Q_a(x)`` with ``Q_w(W)``."""
        return self._conv_forward(self._quant_input(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with LSQ/soft weight and input quantizers (see :class:`QuantLayer`). Input ``[n, C_in, L]``.

    Grouped convolutions (GaitBase ``SeparateFCs``: ``groups = p``) are quantized per output channel.
    """

    _FLOAT_CLS = nn.Conv1d


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with LSQ/soft weight and input quantizers (see :class:`QuantLayer`). Input ``[n, C_in, H, W]``."""

    _FLOAT_CLS = nn.Conv2d


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """``nn.Conv3d`` with LSQ/soft weight and input quantizers (see :class:`QuantLayer`).
    Input ``[n, C_in, T, H, W]``."""

    _FLOAT_CLS = nn.Conv3d


class QuantLinear(QuantLayer, nn.Linear):
    """``nn.Linear`` with LSQ/soft weight and input quantizers (see :class:`QuantLayer`).
    Input ``[..., in_features]`` -> ``[..., out_features]``; per-channel = per output feature."""

    _FLOAT_CLS = nn.Linear

    @classmethod
    def _float_args(cls, module: nn.Linear) -> tuple[tuple, dict]:
        return (module.in_features, module.out_features), dict(bias=module.bias is not None)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in] -> y [..., out]``: ``F.linear(Q_a(x), Q_w(W), b)``."""
        return F.linear(self._quant_input(x), self.weight_quantizer(self.weight), self.bias)


QUANT_TWINS: dict[type[nn.Module], type[QuantLayer]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.Linear: QuantLinear,
}
"""Float class -> quantized twin (exact types)."""
