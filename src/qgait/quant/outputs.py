"""Output quantizers: fake-quantize the OUTPUT of chosen modules (e.g. the two operands of a residual add).

The quantized layers of :mod:`qgait.quant.modules` quantize their INPUT (LSQ's convention): a conv's output is on
a grid only through the next layer's input quantizer. A tensor that no quantized layer reads directly, such as a
ResNet block's ``bn2(conv2(.))`` and ``downsample(x)`` (added to the identity before the ReLU), stays float in
QAT. An integer runtime cannot keep it float at no cost: ONNX Runtime runs a conv on int8 kernels
(``QLinearConv``) only if its output is quantized, so an exporter must requantize such a tensor on a grid that
training never saw (a source of export mismatch), or run the conv in float (slow).

``QuantConfig.output_quant`` names the modules (``fnmatch`` patterns) whose output gets a learned per-tensor
activation quantizer, so that training sees the grid the integer runtime will use; the exporters
(:mod:`qgait.export.fold`) read it as the conv's output grid. :func:`find_residual_outputs` finds, for any model,
the modules whose output tensors are operands of an addition (the residual branches).

The quantizer is registered as the child ``output_quantizer`` of the module (state-dict key
``<module>.output_quantizer.step``) and applied by a forward hook, so the module keeps its class, its name and its
parameters (batch-norm folding still finds it). Model-agnostic: works on any ``nn.Module`` with tensor output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .quantizers import LSQQuantizer

__all__ = ["attach_output_quantizer", "output_quantizers", "find_residual_outputs", "OUTPUT_QUANTIZER"]

OUTPUT_QUANTIZER = "output_quantizer"
"""Attribute (child module) name of an output quantizer."""


def _quantize_output_hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
    q = getattr(module, OUTPUT_QUANTIZER, None)
    if q is None or not isinstance(output, Tensor):
        return output
    y = q(output)
    # the fake-quant autograd function may return a view; a following in-place op (ReLU(inplace=True)) would fail
    return y.clone() if y._is_view() else y


def attach_output_quantizer(module: nn.Module, quantizer: nn.Module) -> nn.Module:
    """Register ``quantizer`` as ``module.output_quantizer`` and apply it to the module's output (forward hook).

    Shapes: the module's output, unchanged. Returns ``module``.

    Raises:
        ValueError: the module already has an output quantizer.
    """
    if getattr(module, OUTPUT_QUANTIZER, None) is not None:
        raise ValueError(f"{type(module).__name__} already has an output quantizer")
    module.register_module(OUTPUT_QUANTIZER, quantizer)
    module.register_forward_hook(_quantize_output_hook)
    return module


def output_quantizers(model: nn.Module) -> Iterator[tuple[str, LSQQuantizer]]:
    """``(module name, its output quantizer)`` for every module with an :class:`LSQQuantizer` output quantizer."""
    for name, m in model.named_modules():
        q = getattr(m, OUTPUT_QUANTIZER, None)
        if isinstance(q, LSQQuantizer):
            yield name, q


_ADDS = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.add_, Tensor.__iadd__}


class _AddOperands(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.operands: set[int] = set()
        self.keep: list[Tensor] = []  # keep operands alive so that their ids are not reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDS:
            for a in list(args[:2]) + [kwargs.get("other")]:
                if isinstance(a, Tensor):
                    self.operands.add(id(a))
                    self.keep.append(a)
        return func(*args, **kwargs)


@torch.no_grad()
def find_residual_outputs(model: nn.Module, example: Any, types: tuple[type, ...] | None = None) -> list[str]:
    """Names of the modules whose output tensor is an operand of an addition in ``model``'s forward (the
    pre-residual tensors), e.g. ``["layer1.0.bn2", ..., "layer2.0.downsample.1"]`` for a ResNet: the list to give
    ``QuantConfig.output_quant``.

    One eval-mode forward pass of ``example`` records, with forward hooks, which module produced each tensor and,
    with a ``TorchFunctionMode``, the operands of every ``+`` / ``torch.add``. A tensor counts for the last leaf
    module that returned it (a ``Sequential`` returning its last child's output names the child; a batch norm
    followed by an in-place ReLU does not count, the ReLU returned the tensor last).

    Args:
        model: any ``nn.Module`` (not modified; its training flag is restored).
        example: an input for ``model(example)``.
        types: only modules of these types (default: convolutions and batch norms, the tensors an integer
            runtime must requantize; a ReLU output that feeds an add is the next layer's quantized input anyway).
    """
    types = types or (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    produced: dict[int, str] = {}
    keep: list[Tensor] = []
    handles = []
    wanted = {n for n, m in model.named_modules() if n and isinstance(m, types)}

    def hook(name: str):
        def fn(_m, _inp, out):
            if isinstance(out, Tensor):
                produced[id(out)] = name  # the last leaf module that returned this tensor
                keep.append(out)

        return fn

    for name, m in model.named_modules():
        if name and not any(True for _ in m.children()):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    mode = _AddOperands()
    try:
        model.eval()
        with mode:
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    names = {produced[i] for i in mode.operands if produced.get(i) in wanted}
    return [n for n, _ in model.named_modules() if n in names]
