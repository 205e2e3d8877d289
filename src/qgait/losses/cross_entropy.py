"""Per-part cross-entropy on scaled cosine logits (GaitBase's BNNeck classifier loss)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PartCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing on ``scale * logits`` for every part, averaged over parts.

    Consumes ``outputs["logits"]`` ``[n, C, p]`` (cosines) and ``labels`` ``[n]``. Returns the loss and
    ``ce_accuracy`` (fraction of (sample, part) entries whose arg-max is the label).
    """

    def __init__(self, scale: float = 16.0, label_smoothing: float = 0.1, key: str = "logits") -> None:
        super().__init__()
        self.scale, self.label_smoothing, self.key = scale, label_smoothing, key

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = outputs[self.key].float()
        n, _, p = logits.shape
        target = labels.unsqueeze(1).expand(n, p)
        loss = F.cross_entropy(logits * self.scale, target, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(1) == target).float().mean().item()
        return loss, {"ce_accuracy": acc}
