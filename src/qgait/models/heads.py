"""Training wrapper: an inference model plus its training-only head."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import BNNeckHead


class GaitWithHead(nn.Module):
    """Pairs an inference model (``[n, T, H, W] -> [n, c, p]``) with an optional BNNeck head for training.

    ``forward`` returns named outputs that losses consume by name:
    ``{"embeddings": [n, c, p], "bn_embeddings": [n, c, p], "logits": [n, C, p]}`` (the last two only with a
    head). ``model`` alone is what is evaluated, quantized and exported.
    """

    def __init__(self, model: nn.Module, num_classes: int | None) -> None:
        super().__init__()
        self.model = model
        self.head = BNNeckHead(model.embed_dim, model.parts, num_classes) if num_classes else None

    def forward(self, silhouettes: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.model(silhouettes)
        out = {"embeddings": emb}
        if self.head is not None:
            out["bn_embeddings"], out["logits"] = self.head(emb)
        return out
