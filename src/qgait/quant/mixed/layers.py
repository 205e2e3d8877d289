"""Which layers a mixed-precision search allocates bits to: exactly those :func:`qgait.quant.quantize_` targets.

The list comes from a dry run of ``quantize_`` on a deep copy of the model, so it follows the same rules (layer
types in ``QuantConfig.targets``, exact type match, ``exclude`` patterns on a name or a parent's name, the first
layer's exact input) without restating them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import QuantConfig
from ..transform import quant_layers, quantize_

__all__ = ["TargetLayer", "target_layers"]


@dataclass(frozen=True)
class TargetLayer:
    """One layer ``quantize_`` replaces.

    Attributes:
        name: module name in ``model.named_modules()`` (the key of ``QuantConfig.bit_map``).
        kind: the ``torch.nn`` class name (``"Conv2d"``, ``"Linear"``, ...).
        n_params: number of weight elements ``n_l`` (the bias is not quantized).
        exact_input: True when the layer gets no input quantizer (``first_layer_exact_input``): its activation
            bits are not a choice.
    """

    name: str
    kind: str
    n_params: int
    exact_input: bool


def target_layers(model: nn.Module, config: QuantConfig | Mapping[str, Any] | None = None) -> list[TargetLayer]:
    """The layers :func:`qgait.quant.quantize_` would replace in ``model`` under ``config``, in module order.

    Args:
        model: any ``nn.Module`` (not modified: the dry run works on a deep copy).
        config: a :class:`QuantConfig` (or a mapping validated into one); default ``QuantConfig()``. Its
            ``bit_map`` is ignored (a search is about to replace it).

    Raises:
        ValueError: what ``quantize_`` raises for this model and config (nothing to quantize, an ``exclude``
            pattern that matches nothing, an already quantized model, ...).
    """
    cfg = config if isinstance(config, QuantConfig) else QuantConfig.model_validate(config or {})
    cfg = cfg.model_copy(update={"bit_map": {}})
    dry = quantize_(copy.deepcopy(model), cfg)
    return [
        TargetLayer(name, type(layer)._FLOAT_CLS.__name__, int(layer.weight.numel()), layer.input_quantizer is None)
        for name, layer in quant_layers(dry)
    ]
