"""IDD: Inter-class Distance-guided Distillation, QGait v1's framing of IDC (arXiv 2405.13859 v1; methods.md 1.5):
the frozen FP model is a teacher whose distance structure the quantized student matches, as a distillation loss.

Ours (issue 13) distils the teacher's *neighbour distribution* rather than its distances: retrieval ranks by
distance, so what a quantized student must keep is which sequences are near which. For a batch of n sequences
with part embeddings ``E [n, c, p]``, let ``D(i, j)`` be the retrieval distance (the mean over parts of the
per-part Euclidean distances, as the evaluator ranks; ``per_part=True``: each part on its own), each model's
divided by its own mean over the pairs ``i != j`` (so the 2x scale-up of quantized embeddings costs nothing)::

    P^T(j | i) = softmax_{j != i}( -D^T(i, j) / tau )       (teacher, no gradient)
    P^S(j | i) = softmax_{j != i}( -D^S(i, j) / tau )       (student)
    L_IDD      = tau^2 * mean_i KL( P^T(. | i) || P^S(. | i) )

It is the relational / similarity-distribution family of distillation (Park et al., "Relational Knowledge
Distillation", CVPR 2019; Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018) applied to the teacher's pairwise distances; ``tau^2`` keeps the gradient scale independent
of the temperature (Hinton et al., 2015). Every pair counts (intra- and inter-class): a distillation target needs
no labels. The differences from IDC (:mod:`qgait.losses.idc`): IDC regresses normalised inter-class distances
with a squared error; IDD matches the softmax over each anchor's neighbours, which weights the nearest ones, where
rank-1 is decided, most.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .idc import pairwise_distances

__all__ = ["idd_loss", "IDDTerm"]

_EPS = 1e-12


def _normalised_distance(emb: Tensor, per_part: bool) -> Tensor:
    """``[q, n, n]`` distances (q = p parts if ``per_part`` else 1) divided by their mean over ``i != j``."""
    d = pairwise_distances(emb)  # [p, n, n]
    if not per_part:
        d = d.mean(dim=0, keepdim=True)
    n = d.shape[-1]
    mu = d.sum(dim=(1, 2), keepdim=True) / (n * (n - 1))  # the diagonal is exactly 0
    return d / mu.clamp_min(_EPS)


def idd_loss(emb_s: Tensor, emb_t: Tensor, temperature: float = 0.1, per_part: bool = False) -> Tensor:
    """IDD loss between the student's and the frozen teacher's part embeddings (module docstring).

    Args:
        emb_s: ``[n, c, p]`` student (quantized model) embeddings; the gradient flows here.
        emb_t: ``[n, c, p]`` teacher (FP model) embeddings; detached.
        temperature: ``tau`` (> 0) on distances normalised to mean 1; 0.1 makes each anchor's distribution
            concentrate on its few nearest sequences.
        per_part: one distribution per part (averaged) instead of one on the retrieval distance.

    Returns:
        Scalar (float32, float64 kept); 0 when ``emb_s`` and ``emb_t`` are equal up to a positive scale; 0
        (connected to ``emb_s``'s graph) for ``n < 3``, where each anchor has a single neighbour.

    Raises:
        ValueError: shapes differ or are not ``[n, c, p]``; ``temperature <= 0``.
    """
    if emb_s.dim() != 3 or emb_s.shape != emb_t.shape:
        raise ValueError(f"emb_s and emb_t must both be [n, c, p]; got {tuple(emb_s.shape)}, {tuple(emb_t.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dt = emb_s.dtype if emb_s.dtype == torch.float64 else torch.float32
    n = emb_s.shape[0]
    if n < 3:
        return emb_s.sum().to(dt) * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=emb_s.device)
    with torch.no_grad():
        logit_t = -_normalised_distance(emb_t.detach().to(dt), per_part) / temperature
    logit_s = -_normalised_distance(emb_s.to(dt), per_part) / temperature
    # drop the diagonal: [q, n, n-1]
    q = logit_s.shape[0]
    logit_t = logit_t[:, off].reshape(q, n, n - 1)
    logit_s = logit_s[:, off].reshape(q, n, n - 1)
    log_p_t = F.log_softmax(logit_t, dim=-1)
    log_p_s = F.log_softmax(logit_s, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # [q, n]
    return kl.mean() * temperature**2


class IDDTerm(nn.Module):
    """IDD as a named-output loss term for :class:`qgait.losses.LossSum`: consumes ``outputs["embeddings"]``
    (student) and ``outputs["fp_embeddings"]`` (frozen FP teacher), returns ``(L_IDD, {})``; the weight is the
    term's weight in the sum.

    Raises:
        ValueError: ``temperature <= 0`` (at construction).
    """

    def __init__(self, temperature: float = 0.1, per_part: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.per_part = float(temperature), bool(per_part)

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, dict]:  # noqa: D102
        return idd_loss(outputs["embeddings"], outputs["fp_embeddings"], self.temperature, self.per_part), {}

    def extra_repr(self) -> str:  # noqa: D102
        return f"temperature={self.temperature}, per_part={self.per_part}"
