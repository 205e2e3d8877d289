"""Layers that must share bits (:class:`Tie`) and a finder for the obvious ones: the two branches of a residual add.

Our reading of "a residual's two branches" (issue 15): in a ResNet block ``relu(bn2(conv2(.)) + downsample(x))``
the add's operands are the outputs of ``conv2`` and of the shortcut's ``downsample.0``, each through a batch norm
only. An integer runtime adds the two operands on one grid (after requantizing both), and they come out of the
same block in the same kernel schedule; giving the two convolutions the same bits keeps the two operands at the
same precision, so neither branch's error dominates the sum and a block maps to one precision. An identity
shortcut has no layer of its own: the tensor it carries came through a nonlinearity (the previous block's ReLU)
and is already some layer's quantized input, so it ties nothing.

:func:`find_residual_ties` finds these from one forward pass, for any model: every target layer's output tensor is
marked with the layer's name; the mark follows the tensor through ops that do not change what it is a
quantization of (normalisations, dropout, reshapes and views; the list is :data:`PASS_THROUGH`) and stops at any
other op (a ReLU, a pooling, an add); an addition whose operands carry marks of two or more layers ties them.
Groups sharing a layer are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["Tie", "TieOn", "PASS_THROUGH", "find_residual_ties"]

TieOn = Literal["both", "weight", "act"]


@dataclass(frozen=True)
class Tie:
    """Layers that get the same bits: ``on="weight"`` the same weight bits, ``"act"`` the same input bits,
    ``"both"`` the same (weight, act) pair.

    Raises:
        ValueError: fewer than two distinct layers, or ``on`` not one of ``both`` / ``weight`` / ``act``.
    """

    layers: tuple[str, ...]
    on: TieOn = "both"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if len(set(self.layers)) < 2:
            raise ValueError(f"a tie needs at least two distinct layers, got {self.layers}")
        if self.on not in ("both", "weight", "act"):
            raise ValueError(f"Tie.on must be 'both', 'weight' or 'act', got {self.on!r}")


PASS_THROUGH = frozenset({
    "batch_norm", "instance_norm", "group_norm", "layer_norm", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "contiguous",
    "clone", "permute", "transpose", "movedim", "to", "float",
})
"""Names of the torch functions a layer's output mark passes through (module docstring)."""

_ADDS = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.add_, Tensor.__iadd__}


class _Marks(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.mark: dict[int, str] = {}
        self.keep: list[Tensor] = []  # keep marked tensors alive so that their ids are not reused
        self.groups: list[set[str]] = []

    def set(self, t: Tensor, name: str) -> None:
        self.mark[id(t)] = name
        self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        marks = {self.mark[id(t)] for t in tensors if id(t) in self.mark}
        if func in _ADDS:
            if len(marks) >= 2:
                self.groups.append(marks)
            self.mark.pop(id(out), None)  # an in-place add's result is a new quantity
        elif isinstance(out, Tensor):
            first = args[0] if args else None
            if getattr(func, "__name__", "") in PASS_THROUGH and isinstance(first, Tensor) and id(first) in self.mark:
                self.set(out, self.mark[id(first)])
            else:  # any other op (an in-place ReLU returns its input object) makes a new, unmarked quantity
                self.mark.pop(id(out), None)
        return out


@torch.no_grad()
def find_residual_ties(model: nn.Module, example: Any, layers: Sequence[str], on: TieOn = "both") -> list[Tie]:
    """Ties of the layers whose outputs meet in an addition (module docstring), e.g. for GaitBase
    ``[Tie(("backbone.module.4.conv2", "backbone.module.4.downsample.0")), ...]``.

    Args:
        model: any ``nn.Module`` (one eval-mode forward; training flag restored).
        example: an input for ``model(example)`` (a tuple / list is unpacked).
        layers: the candidate layers (e.g. the names of :func:`target_layers`); others are ignored.
        on: what the ties equalise (:class:`Tie`).

    Returns:
        One :class:`Tie` per group of layers meeting in additions, layers and ties in module order.

    Raises:
        ValueError: a name in ``layers`` that is not a module of ``model``.
    """
    mods = dict(model.named_modules())
    unknown = [n for n in layers if n not in mods]
    if unknown:
        raise ValueError(f"find_residual_ties: no modules named {unknown}")
    mode = _Marks()

    def hook(name: str):
        def fn(_m, _inp, out):
            if isinstance(out, Tensor):
                mode.set(out, name)

        return fn

    handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
    was_training = model.training
    try:
        model.eval()
        with mode:
            model(*example) if isinstance(example, (tuple, list)) else model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    merged: list[set[str]] = []
    for g in mode.groups:
        g = {n for n in g if n in mods}
        for other in [m for m in merged if m & g]:
            g |= other
            merged.remove(other)
        merged.append(g)
    order = {n: i for i, n in enumerate(mods)}
    ties = [Tie(tuple(sorted(g, key=order.__getitem__)), on) for g in merged if len(g) >= 2]
    return sorted(ties, key=lambda t: order[t.layers[0]])
