"""A weighted sum of named losses; adding a loss touches no trainer code."""

from __future__ import annotations

import torch
from torch import nn


class LossSum(nn.Module):
    """Sums ``weight * loss(outputs, labels)`` over named terms.

    Each term is a module ``(outputs: dict, labels: Tensor[n]) -> (scalar, info: dict)``. Returns the total and
    a flat dict of floats: ``loss/<name>`` per term, ``loss/total`` and every term's info.
    """

    def __init__(self, terms: dict[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict({k: m for k, (m, _) in terms.items()})
        self.weights = {k: float(w) for k, (_, w) in terms.items()}

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        total = None
        info: dict[str, float] = {}
        for name, module in self.terms.items():
            value, extra = module(outputs, labels)
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
            info[f"loss/{name}"] = value.item()
            info.update(extra)
        assert total is not None, "LossSum needs at least one term"
        info["loss/total"] = total.item()
        return total, info
