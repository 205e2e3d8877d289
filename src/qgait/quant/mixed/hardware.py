"""Hardware-aware costs of a bit choice (LCPAQ, arXiv 2402.17706, its hardware-aware module):
multiply-accumulates per layer, and what each deployment runtime here executes and stores at each bit width.

- MACs are measured, not derived from shapes by hand: one forward pass of an example input with a hook on every
  layer, ``MACs = output elements * (in_channels / groups) * prod(kernel)`` for a convolution and
  ``output elements * in_features`` for a linear layer (a layer called several times counts every call). They
  scale with the example: for a gait model, per sequence of the example's frames.
- Size of a layer's weights: ``n_l * storage_bits(w)``; ``BOPs = MACs * exec_w * exec_a`` (bit operations,
  Baskin et al. 2021 / HAWQ-V3's BOPs), with the bits the runtime actually computes with.

Runtimes (:data:`RUNTIMES`; measured facts in ``../shared/docs/gait-protocols.md``, "Deployment facts", and
docs/deployment.md):

=============  =====================  ==========================================================================
runtime        computes               stores weights
=============  =====================  ==========================================================================
``ideal``      every width 2..8       ``bits`` per weight, packed (the bit-exact accounting of LCPAQ / HAWQ)
``onnxruntime`` int8 only (QDQ ->      <= 4-bit weights as nibbles in a ``.qgpack`` (:mod:`qgait.export.int4`,
               QLinearConv / int8      2- and 3-bit weights take a 4-bit nibble too), 5-8 bits as int8
               MatMul, u8s8 VNNI)
``pt2e``       int8 only (oneDNN       int8 (the ``.pt2`` program keeps int8 initialisers; no packing)
               ``qconv_pointwise``)
=============  =====================  ==========================================================================

On ``onnxruntime`` and ``pt2e`` a sub-8-bit choice is a storage (and accuracy) decision only: every layer runs on
int8 kernels, so its BOPs are those of 8 x 8 bits and nothing below 8 bits is faster. A per-layer latency table is
not measured here (see docs/mixed_precision.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["RuntimeProfile", "RUNTIMES", "get_runtime", "count_macs"]


@dataclass(frozen=True)
class RuntimeProfile:
    """What a runtime does with a bit width.

    Attributes:
        name: key in :data:`RUNTIMES`.
        compute_bits: the widths its kernels compute with natively (ascending); a narrower width runs on the
            next native one.
        weight_storage: ``{bits: stored bits per weight}`` for 2..8.
        note: one line on where this comes from.
    """

    name: str
    compute_bits: tuple[int, ...]
    weight_storage: Mapping[int, int]
    note: str

    def exec_bits(self, bits: int) -> int:
        """The width a ``bits``-wide operand is computed with: the smallest native width ``>= bits``.

        Raises:
            ValueError: ``bits`` wider than every native width.
        """
        for c in self.compute_bits:
            if c >= bits:
                return c
        raise ValueError(f"runtime {self.name!r} computes at most {self.compute_bits[-1]} bits, asked {bits}")

    def storage_bits(self, bits: int) -> int:
        """Bits stored per weight of a ``bits``-wide layer.

        Raises:
            ValueError: ``bits`` not in the table (2..8).
        """
        if bits not in self.weight_storage:
            raise ValueError(f"runtime {self.name!r}: no storage for {bits}-bit weights")
        return self.weight_storage[bits]

    def native(self, bits: int) -> bool:
        """True if the runtime computes at exactly ``bits``."""
        return bits in self.compute_bits


RUNTIMES: dict[str, RuntimeProfile] = {
    "ideal": RuntimeProfile(
        "ideal", tuple(range(2, 9)), {b: b for b in range(2, 9)},
        "bit-exact accounting: kernels at every width, weights packed at their width (LCPAQ / HAWQ BOPs)"),
    "onnxruntime": RuntimeProfile(
        "onnxruntime", (8,), {b: (4 if b <= 4 else 8) for b in range(2, 9)},
        "ONNX Runtime QDQ: int8 kernels only (QLinearConv, u8s8); <= 4-bit weights packed as nibbles (.qgpack)"),
    "pt2e": RuntimeProfile(
        "pt2e", (8,), {b: 8 for b in range(2, 9)},
        "PT2E + x86 inductor: oneDNN int8 kernels only; int8 weights in the .pt2 program"),
}
"""The runtimes of this project (module docstring table)."""


def get_runtime(name: str | RuntimeProfile) -> RuntimeProfile:
    """A profile by name (or the profile itself).

    Raises:
        ValueError: unknown name (the message lists :data:`RUNTIMES`).
    """
    if isinstance(name, RuntimeProfile):
        return name
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; known: {sorted(RUNTIMES)}")
    return RUNTIMES[name]


def _macs(mod: nn.Module, out: torch.Tensor) -> int:
    if isinstance(mod, nn.modules.conv._ConvNd):
        return out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
    if isinstance(mod, nn.Linear):
        return out.numel() * mod.in_features
    raise ValueError(f"count_macs: {type(mod).__name__} is neither a convolution nor a linear layer")


@torch.no_grad()
def count_macs(model: nn.Module, example: Any, layers: Sequence[str]) -> dict[str, int]:
    """Multiply-accumulates of each layer in one eval-mode forward of ``example`` (module doc).

    Args:
        model: any ``nn.Module`` (training flag restored).
        example: passed as ``model(example)`` (a tuple / list is unpacked).
        layers: names of convolution / linear modules (``nn.Conv1d/2d/3d``, ``nn.Linear`` or subclasses).

    Returns:
        ``{name: MACs}`` for one pass of ``example``.

    Raises:
        ValueError: unknown name, a layer of another type, a layer the forward never ran.
    """
    mods = dict(model.named_modules())
    unknown = [n for n in layers if n not in mods]
    if unknown:
        raise ValueError(f"count_macs: no modules named {unknown}")
    counts = {n: 0 for n in layers}
    seen: set[str] = set()

    def hook(name: str):
        def fn(mod, _inp, out):
            counts[name] += _macs(mod, out)
            seen.add(name)

        return fn

    handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
    was_training = model.training
    try:
        model.eval()
        model(*example) if isinstance(example, (tuple, list)) else model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in layers if n not in seen]
    if missing:
        raise ValueError(f"count_macs: these layers did not run on the example: {missing}")
    return counts
