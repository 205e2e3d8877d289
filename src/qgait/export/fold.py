"""Batch-norm folding and the integer view of a quantized model, shared by every exporter.

A conv followed by a batch norm (eval mode) computes, per output channel ``o``,
``BN(conv(x))[o] = g[o] * (conv(x)[o] + b[o] - mean[o]) + beta[o]`` with ``g = gamma / sqrt(var + eps)``, which is
one conv with weight ``W'[o] = g[o] * W[o]`` and bias ``b'[o] = beta[o] + g[o] * (b[o] - mean[o])``.

For a quantized conv (``qgait.quant.QuantLayer``: weight ``W_int * s`` on a per-channel integer grid) the fold keeps
the grid: ``W'[o] = (sign(g[o]) * W_int[o]) * (s[o] * |g[o]|)``, integer weights negated where ``g < 0``, step
``s' = s * |g|`` (methods.md 1.2: BN is not folded during QAT, it is folded here for export). A weight at ``-Q_N``
negates to ``Q_N``, one level above the grid's ``Q_P``: below 8 bits it still fits the int8 container and is kept
exactly (a negated 4-bit channel holds values in [-7, 8]; the packed 4-bit format stores the sign per channel
instead); at 8 bits +128 does not fit int8, so it is clamped to 127 and counted (``overflow``). A channel
with ``g == 0`` outputs the constant ``beta``: its integer weights are set to 0 (its step is kept, so the scale stays
positive). The layer's input quantizer (the activation grid) is not touched.

Pairs are found by running the model once with forward hooks: a batch norm whose input tensor is the very output
tensor of a conv is folded into it. Every fold is checked numerically (the folded copy must reproduce the model).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..quant import LSQQuantizer, QuantLayer, output_quantizers

__all__ = ["ActSpec", "ConvSpec", "FoldError", "conv_bn_pairs", "fold_model", "conv_specs"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FoldError(ValueError):
    """The model cannot be folded / exported as it is (the message says which layer and why)."""


@dataclass(frozen=True)
class ActSpec:
    """A per-tensor activation quantizer at a layer input: ``x_q = clip(round(x / scale), -q_n, q_p) * scale``."""

    scale: float
    bits: int
    signed: bool
    q_n: int
    q_p: int
    learned: bool = True  # False: added at export (e.g. the exact first-layer input at 1/255)


@dataclass
class ConvSpec:
    """One conv of the deploy graph after batch-norm folding.

    ``weight``/``bias`` are the folded float tensors (for a quantized conv ``weight == w_int * w_scale``);
    ``w_int`` (int8, ``[C_out, ...]``), ``w_scale`` (``[C_out]``, float32) and ``weight_bits`` are set for quantized
    convs; ``act`` is the input quantizer (``None``: float / exact input); ``out_act`` the learned grid of the
    (folded) output, from an output quantizer on the conv or on its batch norm (``QuantConfig.output_quant``).
    """

    name: str
    weight: Tensor
    bias: Tensor
    bn: str | None = None
    w_int: Tensor | None = None
    w_scale: Tensor | None = None
    weight_bits: int | None = None
    act: ActSpec | None = None
    overflow: int = 0
    meta: dict = field(default_factory=dict)
    out_act: ActSpec | None = None

    @property
    def quantized(self) -> bool:
        return self.w_int is not None


def conv_bn_pairs(model: nn.Module, example: Tensor) -> dict[str, str]:
    """``{conv name: batch-norm name}`` for every batch norm fed directly by a conv's output tensor.

    Found by one forward pass of ``example`` with hooks (works for any model whose convs and batch norms are
    modules). Raises FoldError if a batch norm is fed by the same conv twice, or a conv feeds two batch norms.
    """
    produced: dict[int, tuple[str, Tensor]] = {}
    pairs: dict[str, str] = {}
    bn_of: dict[str, str] = {}
    handles = []

    def conv_hook(name):
        def hook(_m, _inp, out):
            produced[id(out)] = (name, out)  # keep the tensor alive so that its id is not reused

        return hook

    def bn_hook(name):
        def hook(_m, inp, _out):
            hit = produced.get(id(inp[0]))
            if hit is None:
                return
            conv = hit[0]
            if pairs.get(conv, name) != name or bn_of.get(name, conv) != conv:
                raise FoldError(f"{conv} -> {name}: a conv / batch norm used more than once cannot be folded")
            pairs[conv], bn_of[name] = name, conv

        return hook

    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            handles.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, _BN):
            handles.append(m.register_forward_hook(bn_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return pairs


def _bn_factor(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(g, shift)`` with ``BN(y) = g * y + shift`` per channel (eval mode, running statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise FoldError(f"{type(bn).__name__} without running statistics cannot be folded")
    var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    g = gamma / torch.sqrt(var + bn.eps)
    return g, beta - mean * g


def _act_spec(q: nn.Module | None, name: str) -> ActSpec | None:
    if q is None:
        return None
    if not isinstance(q, LSQQuantizer):
        raise FoldError(f"{name}: input quantizer {type(q).__name__} is not an LSQQuantizer; cannot export it")
    if not q.is_initialized or q.is_signed is None:
        raise FoldError(f"{name}: activation quantizer not initialised (calibrate the model before export)")
    if not q.enabled:
        raise FoldError(f"{name}: activation quantizer is disabled; enable it or export the FP model")
    return ActSpec(float(q.scale), q.bits, bool(q.is_signed), q.q_n, q.q_p)


def conv_specs(model: nn.Module, example: Tensor) -> dict[str, ConvSpec]:
    """Every conv of ``model`` with its batch norm folded in (see the module docstring), by module name.

    Raises:
        FoldError: a quantized layer that is not a conv (``QuantLinear``: not supported by the exporters), an
            uninitialised or disabled quantizer, a batch norm without running statistics.
    """
    for name, m in model.named_modules():
        if isinstance(m, QuantLayer) and not isinstance(m, _CONV):
            raise FoldError(f"{name}: {type(m).__name__} is not supported by the exporters (convolutions only)")
    pairs = conv_bn_pairs(model, example)
    mods = dict(model.named_modules())
    bn_conv = {b: c for c, b in pairs.items()}
    out_q: dict[str, nn.Module] = {}  # conv name -> the quantizer of its folded output
    for name, q in output_quantizers(model):
        conv = name if isinstance(mods[name], _CONV) else bn_conv.get(name)
        if conv is None:
            raise FoldError(f"{name}: an output quantizer is exported only on a conv or on the batch norm that "
                            f"follows one ({type(mods[name]).__name__} here)")
        if conv in out_q:
            raise FoldError(f"{conv}: output quantizers on both the conv and its batch norm")
        out_q[conv] = q
    specs: dict[str, ConvSpec] = {}
    for name, conv in mods.items():
        if not isinstance(conv, _CONV):
            continue
        if conv.padding_mode != "zeros":
            raise FoldError(f"{name}: padding_mode={conv.padding_mode!r} is not supported (zeros only)")
        c_out = conv.out_channels
        bn_name = pairs.get(name)
        if bn_name is not None:
            g, shift = _bn_factor(mods[bn_name])
        else:
            g, shift = torch.ones(c_out, dtype=torch.float64), torch.zeros(c_out, dtype=torch.float64)
        b0 = conv.bias.detach().double() if conv.bias is not None else torch.zeros(c_out, dtype=torch.float64)
        bias = (g * b0 + shift).float()
        bshape = [-1] + [1] * (conv.weight.dim() - 1)
        if isinstance(conv, QuantLayer):
            wq = conv.weight_quantizer
            if not isinstance(wq, LSQQuantizer) or not wq.is_initialized:
                raise FoldError(f"{name}: weight quantizer not initialised (calibrate the model before export)")
            if not wq.enabled:
                raise FoldError(f"{name}: weight quantizer is disabled; enable it or export the FP model")
            w_int, s = conv.int_weight()
            s = s.double().expand(c_out) if s.dim() == 0 else s.double()
            sign = torch.where(g < 0, -1, 1).to(torch.int32)
            w = (w_int.to(torch.int32) * sign.reshape(bshape)) * (g != 0).to(torch.int32).reshape(bshape)
            # negation maps the grid [-Q_N, Q_P] to [-Q_P, Q_N]: exact in the int8 container below 8 bits (the
            # packed 4-bit format stores the per-channel sign, see qgait.export.int4); at 8 bits +128 does not
            # fit in int8 and is clamped to 127 (counted)
            overflow = int((w > 127).sum())
            w = w.clamp(-128, 127).to(torch.int8)
            scale = torch.where(g != 0, s * g.abs(), s).float()
            specs[name] = ConvSpec(
                name, (w.float() * scale.reshape(bshape)), bias, bn_name, w, scale, wq.bits,
                _act_spec(conv.input_quantizer, name), overflow, {"negated_channels": int((g < 0).sum())},
            )
        else:
            weight = (conv.weight.detach().double() * g.reshape(bshape)).float()
            specs[name] = ConvSpec(name, weight, bias, bn_name)
        if name in out_q:
            specs[name].out_act = _act_spec(out_q[name], f"{name} output")
    return specs


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[child] = new


def plain_conv(conv: nn.Module, weight: Tensor, bias: Tensor) -> nn.Module:
    """A plain ``nn.ConvNd`` with ``conv``'s geometry and the given weight and bias."""
    cls = next(c for c in _CONV if isinstance(conv, c))
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
              dilation=conv.dilation, groups=conv.groups, bias=True)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new.eval()


def fold_model(
    model: nn.Module,
    example: Tensor,
    make_conv=None,
    check_atol: float | None = 1e-3,
    specs: dict[str, ConvSpec] | None = None,
) -> tuple[nn.Module, dict[str, ConvSpec]]:
    """A deploy copy of ``model`` (eval mode) with every batch norm that follows a conv folded into it.

    Args:
        model: any model whose convs are modules (FP or ``quantize_``-d; not modified).
        example: an input for the tracing forward pass (small: ``[1, 2, h, w]``).
        make_conv: ``make_conv(original_conv, spec) -> nn.Module`` builds each deploy conv; default a plain float
            conv with the folded weights (for a quantized conv: the dequantized grid ``w_int * w_scale``, without
            its input quantizer).
        check_atol: for FP models, the folded copy must reproduce ``model(example)`` within this absolute
            tolerance relative to the output scale (None: no check).
        specs: :func:`conv_specs` of ``model`` for ``example`` when the caller has them already.

    Returns:
        ``(deploy_model, specs)``. Folded batch norms are replaced by ``nn.Identity``.
    """
    specs = conv_specs(model, example) if specs is None else specs
    deploy = copy.deepcopy(model).eval()
    mods = dict(model.named_modules())
    for name, spec in specs.items():
        new = make_conv(mods[name], spec) if make_conv is not None else plain_conv(mods[name], spec.weight, spec.bias)
        _set_module(deploy, name, new)
        if spec.bn is not None:
            _set_module(deploy, spec.bn, nn.Identity())
    if check_atol is not None and make_conv is None and not any(isinstance(m, QuantLayer) for m in mods.values()):
        with torch.no_grad():
            ref, got = model.eval()(example), deploy(example)
        err = float((ref - got).abs().max()) / max(float(ref.abs().max()), 1e-6)
        if err > check_atol:
            raise FoldError(f"batch-norm folding changed the output (relative error {err:.2e}); a folded conv "
                            "output is probably used elsewhere too")
    return deploy, specs
