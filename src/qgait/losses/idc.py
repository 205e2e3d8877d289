"""IDC: Inter-class Distance-guided Calibration loss (QGait, arXiv 2405.13859; formula per methods.md 1.5).

For each part k of the part embeddings ``E [n, c, p]``::

    D^Q_k(i, j) = || E^Q[i, :, k] - E^Q[j, :, k] ||_2          (D^F_k likewise, no gradient)
    M(i, j)     = [y_i != y_j]   (pairs="inter";  pairs="all": [i != j])
    mu_k        = sum(M D_k) / sum(M)                           (normalize="part"; "relative" distances)
    L_IDC       = mean_k  sum_{i,j} M(i,j) l(D^Q_k / mu^Q_k, D^F_k / mu^F_k) / sum M

``l`` is the squared error (or Huber). Ordered pairs are used: each unordered pair counts twice, which leaves the
loss unchanged. The loss is the mean over parts of the per-part means over the masked pairs.

Normalisation (issue 13's variants; each model is scaled by its own mean, the FP model's without gradient):

- ``"part"`` (methods.md 1.5, ``True``): per part, ``mu_k`` as above. Scale-invariant per part, so a drift of
  one part's scale against the others costs nothing.
- ``"global"``: one ``mu = mean_k mu_k`` for all parts: a uniform scale-up still costs nothing, but a part that
  grows more than the others does.
- ``"none"`` (``False``): raw distances: the quantized model must also keep the FP model's absolute scale.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["idc_loss", "IDCLoss", "pairwise_distances", "normalize_mode"]

_EPS = 1e-12


def pairwise_distances(emb: Tensor) -> Tensor:
    """Per-part Euclidean distance matrices.

    Args:
        emb: ``[n, c, p]`` part embeddings.

    Returns:
        ``[p, n, n]`` distances, exactly 0 on the diagonal and between duplicate embeddings.

    Uses ``torch.cdist`` without the matrix-product shortcut (exact differences, no cancellation; no
    ``[p, n, n, c]`` intermediate); its gradient is 0, not NaN, where a distance is 0.
    """
    x = emb.permute(2, 0, 1)  # [p, n, c]
    return torch.cdist(x, x, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")


_NORMALIZE = {True: "part", False: "none", "part": "part", "global": "global", "none": "none"}


def normalize_mode(normalize: bool | str) -> str:
    """``"part"``, ``"global"`` or ``"none"`` from the option (``True`` = ``"part"``, ``False`` = ``"none"``).

    Raises:
        ValueError: anything else.
    """
    try:
        return _NORMALIZE[normalize]
    except (KeyError, TypeError):
        raise ValueError(f"normalize must be 'part', 'global', 'none' or a bool, got {normalize!r}") from None


def _check_options(pairs: str, loss: str, huber_delta: float) -> None:
    if pairs not in ("inter", "all"):
        raise ValueError(f"pairs must be 'inter' or 'all', got {pairs!r}")
    if loss not in ("mse", "huber"):
        raise ValueError(f"loss must be 'mse' or 'huber', got {loss!r}")
    if not huber_delta > 0:
        raise ValueError(f"huber_delta must be > 0, got {huber_delta}")


def idc_loss(
    emb_q: Tensor,
    emb_f: Tensor,
    labels: Tensor,
    pairs: Literal["inter", "all"] = "inter",
    normalize: bool | Literal["part", "global", "none"] = True,
    loss: Literal["mse", "huber"] = "mse",
    huber_delta: float = 1.0,
) -> Tensor:
    """IDC loss between quantized and FP part embeddings (methods.md 1.5).

    Args:
        emb_q: ``[n, c, p]`` embeddings of the quantized model (gradient flows here).
        emb_f: ``[n, c, p]`` embeddings of the frozen FP model (detached; no gradient).
        labels: ``[n]`` identity labels.
        pairs: ``"inter"``: pairs with different labels; ``"all"``: every pair ``i != j``.
        normalize: ``"part"``/``True``: divide each part's distances by their mean over the masked pairs (scale
            invariance per part); ``"global"``: by the mean over the masked pairs and all parts (uniform scale
            invariance, per-part drift counts); ``"none"``/``False``: raw distances.
        loss: ``"mse"`` (squared error) or ``"huber"`` (``F.huber_loss`` with ``huber_delta``).
        huber_delta: Huber threshold (> 0).

    Returns:
        Scalar loss (float32 or float64). When the mask is empty (one identity in the batch with
        ``pairs="inter"``, or ``n < 2``) returns ``0`` connected to ``emb_q``'s graph (gradient zero).
        Finite value and gradient for duplicate / all-zero embeddings.

    Raises:
        ValueError: shapes mismatch (``emb_q``, ``emb_f`` must be equal ``[n, c, p]``, ``labels`` ``[n]``),
            unknown ``pairs``/``loss``/``normalize``, non-positive ``huber_delta``.
    """
    norm = normalize_mode(normalize)
    if emb_q.dim() != 3 or emb_q.shape != emb_f.shape:
        raise ValueError(f"emb_q and emb_f must both be [n, c, p]; got {tuple(emb_q.shape)}, {tuple(emb_f.shape)}")
    if labels.dim() != 1 or labels.shape[0] != emb_q.shape[0]:
        raise ValueError(f"labels must be [n={emb_q.shape[0]}], got {tuple(labels.shape)}")
    _check_options(pairs, loss, huber_delta)

    dt = emb_q.dtype if emb_q.dtype == torch.float64 else torch.float32
    n = emb_q.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=emb_q.device)
    if pairs == "inter":
        mask = labels[:, None] != labels[None, :]
    else:
        mask = ~eye
    mask = mask & ~eye
    count = mask.sum()
    if int(count) == 0:
        return emb_q.sum().to(dt) * 0.0

    d_q = pairwise_distances(emb_q.to(dt))  # [p, n, n]
    with torch.no_grad():
        d_f = pairwise_distances(emb_f.detach().to(dt))
    m = mask.to(dt)[None]  # [1, n, n]
    if norm != "none":
        mu_q = (d_q * m).sum(dim=(1, 2), keepdim=True) / count
        mu_f = (d_f * m).sum(dim=(1, 2), keepdim=True) / count
        if norm == "global":
            mu_q, mu_f = mu_q.mean(dim=0, keepdim=True), mu_f.mean(dim=0, keepdim=True)
        d_q = d_q / mu_q.clamp_min(_EPS)
        d_f = d_f / mu_f.clamp_min(_EPS)
    if loss == "mse":
        elem = (d_q - d_f) ** 2
    else:
        elem = F.huber_loss(d_q, d_f, reduction="none", delta=huber_delta)
    per_part = (elem * m).sum(dim=(1, 2)) / count  # [p]
    return per_part.mean()


class IDCLoss(nn.Module):
    """``weight * idc_loss(emb_q, emb_f, labels, ...)`` as a module (methods.md 1.5: ``lambda_IDC * L_IDC``).

    Args: as :func:`idc_loss`, plus ``weight`` (lambda, >= 0).
    Forward: ``(emb_q [n, c, p], emb_f [n, c, p], labels [n]) -> scalar``.

    Raises:
        ValueError: invalid options (checked at construction).
    """

    def __init__(
        self,
        pairs: Literal["inter", "all"] = "inter",
        normalize: bool | Literal["part", "global", "none"] = True,
        loss: Literal["mse", "huber"] = "mse",
        huber_delta: float = 1.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        _check_options(pairs, loss, huber_delta)
        normalize = normalize_mode(normalize)
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.pairs, self.normalize, self.loss = pairs, normalize, loss
        self.huber_delta, self.weight = float(huber_delta), float(weight)

    def forward(self, emb_q: Tensor, emb_f: Tensor, labels: Tensor) -> Tensor:  # noqa: D102
        return self.weight * idc_loss(
            emb_q, emb_f, labels, self.pairs, self.normalize, self.loss, self.huber_delta
        )

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"pairs={self.pairs}, normalize={self.normalize}, loss={self.loss}, "
            f"huber_delta={self.huber_delta}, weight={self.weight}"
        )


class IDCTerm(nn.Module):
    """IDC as a named-output loss term: consumes ``outputs["embeddings"]`` (quantized model) and
    ``outputs["fp_embeddings"]`` (frozen FP model), returns ``(L_IDC, {})`` for :class:`qgait.losses.LossSum`
    (which applies lambda_IDC as the term's weight)."""

    def __init__(self, pairs: Literal["inter", "all"] = "inter", normalize: bool | str = True,
                 loss: Literal["mse", "huber"] = "mse", huber_delta: float = 1.0) -> None:
        super().__init__()
        self.idc = IDCLoss(pairs=pairs, normalize=normalize, loss=loss, huber_delta=huber_delta, weight=1.0)

    def forward(self, outputs: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, dict]:
        return self.idc(outputs["embeddings"], outputs["fp_embeddings"], labels), {}
