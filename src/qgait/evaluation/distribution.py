"""The inter-class distance distribution of embeddings, and its plot (QGait's FP vs stage 1 vs final)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..atomic import save_figure
from .distance import part_distance


def interclass_distances(emb: torch.Tensor, labels: Sequence, metric: str = "euc") -> np.ndarray:
    """Distances between every pair of embeddings with different labels (each pair once).

    Args:
        emb: ``[n, c, p]`` part embeddings.
        labels: ``n`` labels.
        metric: ``"euc"`` (part-averaged Euclidean) or ``"cos"``.

    Returns:
        float64 ``[number of inter-class pairs]``.

    Raises:
        ValueError: lengths differ, or no inter-class pair.
    """
    if len(labels) != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {len(labels)} labels")
    d = part_distance(emb, emb, metric).double().numpy()
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    mask = np.triu(codes[:, None] != codes[None, :], k=1)
    if not mask.any():
        raise ValueError("no inter-class pair: all labels are equal")
    return d[mask]


def plot_interclass(dists: Mapping[str, np.ndarray], path: str | Path, title: str = "", bins: int = 60) -> Path:
    """Histogram of each model's inter-class distances, raw and divided by their mean (the scale IDC
    normalises away), saved as a PNG.

    Args:
        dists: model name -> distances from :func:`interclass_distances`.
        path: output ``.png`` path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, d in dists.items():
        axes[0].hist(d, bins=bins, histtype="step", density=True, label=f"{name} (mean {d.mean():.3g})")
        axes[1].hist(d / d.mean(), bins=bins, histtype="step", density=True, label=name)
    axes[0].set(title="inter-class distances", xlabel="part-averaged distance", ylabel="density")
    axes[1].set(title="relative (/ mean)", xlabel="distance / mean distance")
    for ax in axes:
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
