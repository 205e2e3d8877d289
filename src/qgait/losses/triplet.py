"""Batch-all triplet loss per part (Hermans et al., 2017; as used by GaitSet and GaitBase)."""

from __future__ import annotations

import torch
from torch import nn


def pairwise_part_distance(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between all samples, per part: ``[n, c, p] -> [p, n, n]``.

    Computed as ``sqrt(max(|a|^2 + |b|^2 - 2ab, eps))`` so the gradient stays finite on the diagonal.
    """
    x = emb.float().permute(2, 0, 1)  # [p, n, c]
    sq = (x * x).sum(-1)  # [p, n]
    d2 = sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * x.bmm(x.transpose(1, 2))
    return d2.clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-all triplet loss, computed per part and averaged over the non-zero terms.

    For every part, every anchor a, positive p (same label, p != a) and negative q (other label):
    ``relu(d(a, p) - d(a, q) + margin)``; each part's loss is the sum over triplets divided by the number of
    non-zero terms (all triplets if none is non-zero); the parts are averaged.

    Consumes ``outputs["embeddings"]`` ``[n, c, p]`` and ``labels`` ``[n]`` (int64). Returns the scalar loss and
    statistics: ``triplet_nonzero`` (mean count of non-zero triplets per part), ``triplet_ap`` / ``triplet_an``
    (mean anchor-positive / anchor-negative distance).
    """

    def __init__(self, margin: float = 0.2, key: str = "embeddings") -> None:
        super().__init__()
        self.margin = margin
        self.key = key

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        dist = pairwise_part_distance(outputs[self.key])  # [p, n, n]
        same = labels.unsqueeze(0) == labels.unsqueeze(1)  # [n, n]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same
        # [p, a, pos, neg]: d(a, pos) - d(a, neg) + margin, masked to valid triplets
        valid = (pos.unsqueeze(2) & neg.unsqueeze(1)).unsqueeze(0)
        terms = (dist.unsqueeze(3) - dist.unsqueeze(2) + self.margin).clamp_min(0) * valid
        nonzero = (terms > 0).flatten(1).sum(1)  # [p]
        total = valid.sum().clamp_min(1)
        denom = torch.where(nonzero > 0, nonzero, total).to(terms.dtype)
        loss = (terms.flatten(1).sum(1) / denom).mean()
        with torch.no_grad():
            info = {
                "triplet_nonzero": nonzero.float().mean().item(),
                "triplet_ap": (dist * pos).sum().item() / max(1, pos.sum().item() * dist.shape[0]),
                "triplet_an": (dist * neg).sum().item() / max(1, neg.sum().item() * dist.shape[0]),
            }
        return loss, info
