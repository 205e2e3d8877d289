"""Embedding-space diagnostics of a quantized model against its full-precision (FP) model.

Gait embeddings are ``[N, c, p]`` (sequences, channels, horizontal parts) and are compared part by part
(see :mod:`qgait.evaluation.distance`). Quantization can rescale parts unevenly: the part-averaged
Euclidean distance then weights the parts differently than the FP model did, even when each part alone
still separates the subjects. :func:`embedding_stats` measures, per part, the mean embedding norm and the
mean distance between sequences of different subjects (inter-class) and of the same subject
(intra-class); :func:`embedding_drift` turns two such measurements into per-part quantized / FP ratios.
A uniform rescaling of all parts gives equal ratios (spread 1, cv 0) and changes no ranking; a spread
well above 1 means the parts' relative weights in the distance moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor

from .distance import _as_embedding
from .retrieval import _labels_to_list

__all__ = ["embedding_stats", "embedding_drift"]

ArrayLike = Union[Tensor, np.ndarray]

# Pair differences per block: about 2**21 float64 values (16 MB; larger blocks were not faster).
_BLOCK_ELEMS = 1 << 21


def _sorted_classes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequences sorted by label: ``(order, class_end)``.

    In sorted position ``r`` the same-label partners ``j > r`` are ``[r + 1, class_end[r])`` and the
    different-label partners ``j > r`` are ``[class_end[r], N)``: each a contiguous range.
    """
    order = np.argsort(codes, kind="stable")
    ends = np.append(np.flatnonzero(np.diff(codes[order])) + 1, codes.size)  # end of every class
    class_end = np.repeat(ends, np.diff(np.concatenate(([0], ends))))
    return order, class_end


def _select_pairs(lo: np.ndarray, hi: np.ndarray, max_pairs: int, rng: np.random.Generator) -> tuple:
    """Pairs ``(r, j)`` with ``lo[r] <= j < hi[r]`` (sorted positions): all of them, or ``max_pairs`` of them
    drawn uniformly without replacement. Returns ``(rows, cols, total)``."""
    counts = np.maximum(hi - lo, 0).astype(np.int64)
    cum = np.cumsum(counts)
    total = int(cum[-1]) if cum.size else 0
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    if total > max_pairs:
        k = np.sort(rng.choice(total, size=max_pairs, replace=False))
    else:
        k = np.arange(total, dtype=np.int64)
    rows = np.searchsorted(cum, k, side="right")  # pair k belongs to the row whose cumulative count passes k
    cols = lo[rows] + (k - (cum[rows] - counts[rows]))
    return rows, cols, total


def _mean_pair_distance(emb: Tensor, i: np.ndarray, j: np.ndarray) -> list[float] | None:
    """Mean over the pairs of the per-part Euclidean distance ``||emb[i, :, k] - emb[j, :, k]||_2``,
    float64, from the differences (no Gram expansion)."""
    if i.size == 0:
        return None
    c, p = emb.shape[1], emb.shape[2]
    block = max(1, _BLOCK_ELEMS // (c * p))
    total = torch.zeros(p, dtype=torch.float64)
    ti, tj = torch.from_numpy(i), torch.from_numpy(j)
    for start in range(0, i.size, block):
        diff = emb[tj[start : start + block]]
        diff.sub_(emb[ti[start : start + block]])
        total += torch.linalg.vector_norm(diff, dim=1).sum(0)
    return (total / i.size).tolist()


def embedding_stats(emb: ArrayLike, labels: Sequence, max_pairs: int = 200_000, seed: int = 0) -> dict:
    """Per-part norm and inter- / intra-class distances of embeddings, in float64.

    * ``part_norm[k] = (1/N) sum_n ||emb[n, :, k]||_2``;
    * ``interclass_distance[k]``: mean of ``||emb[i, :, k] - emb[j, :, k]||_2`` over the unordered pairs
      ``i < j`` with ``labels[i] != labels[j]``;
    * ``intraclass_distance[k]``: the same over the pairs ``i < j`` (so ``i != j``) with equal labels.

    Distances are computed from the differences in float64 (not through ``||a||^2 + ||b||^2 - 2 a.b``), in
    blocks of pairs. When a kind of pair has more than ``max_pairs`` pairs, ``max_pairs`` of them are drawn
    uniformly without replacement by ``numpy.random.default_rng([seed, 0])`` (inter-class) /
    ``default_rng([seed, 1])`` (intra-class), so the same inputs always give the same numbers. The cost is
    about ``2 * max_pairs * c * p`` float64 differences (CASIA-B test set, ``c * p = 4096``: ~13 GB of
    memory traffic at the default ``max_pairs``; lower it for a quick look).

    Args:
        emb: ``[N, c, p]`` embeddings (tensor or numpy; any device, copied to CPU float64).
        labels: ``N`` subject ids (any hashable, compared as given).
        max_pairs: the most pairs of each kind that are averaged.
        seed: seed of the pair subsample.

    Returns:
        ``{"part_norm": [p floats], "interclass_distance": [p floats] | None, "intraclass_distance":
        [p floats] | None, "n": N, "n_parts": p, "n_interclass_pairs": int, "n_intraclass_pairs": int,
        "interclass_pairs_total": int, "intraclass_pairs_total": int}`` in the embeddings' unit; a distance
        is ``None`` when no pair of that kind exists (one subject only; every subject with one sequence);
        ``n_*_pairs`` are the pairs averaged, ``*_pairs_total`` those that exist.

    Raises:
        TypeError: ``emb`` is neither a tensor nor a numpy array.
        ValueError: ``emb`` not ``[N, c, p]``, empty or with NaN / inf; ``labels`` not ``N`` hashable items;
            ``max_pairs`` not a positive integer.
    """
    x = _as_embedding(emb, "emb").detach().to("cpu", torch.float64)
    n = x.shape[0]
    lab = _labels_to_list(labels, "labels")
    if len(lab) != n:
        raise ValueError(f"labels has {len(lab)} entries but emb has {n} sequences")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    code_of: dict = {}
    codes = np.array([code_of.setdefault(v, len(code_of)) for v in lab], dtype=np.int64)
    order, class_end = _sorted_classes(codes)
    out: dict = {"part_norm": x.square().sum(1).sqrt().mean(0).tolist(), "n": int(n), "n_parts": int(x.shape[2])}
    xs = x[torch.from_numpy(order)]  # sorted by label: pairs are contiguous ranges
    for kind, lo, hi, stream in (
        ("interclass", class_end, np.full(n, n), 0),
        ("intraclass", np.arange(1, n + 1), class_end, 1),
    ):
        rows, cols, total = _select_pairs(lo, hi, int(max_pairs), np.random.default_rng([seed, stream]))
        out[f"{kind}_distance"] = _mean_pair_distance(xs, rows, cols)
        out[f"n_{kind}_pairs"] = int(rows.size)
        out[f"{kind}_pairs_total"] = int(total)
    return out


def _ratio(num: Sequence | None, den: Sequence | None) -> list[float | None] | None:
    if num is None or den is None:
        return None
    return [float(a) / float(b) if a is not None and b is not None and float(b) != 0.0 else None
            for a, b in zip(num, den)]


def _summary(values: list | None) -> dict:
    """``mean``, ``min``, ``max``, ``spread = max / min``, ``cv = std / mean`` (population std over the
    parts, ``ddof=0``) of the defined values; ``None`` where undefined."""
    kept = np.array([v for v in (values or []) if v is not None], dtype=np.float64)
    out = {"mean": None, "min": None, "max": None, "spread": None, "cv": None, "n": int(kept.size)}
    if kept.size:
        mean, lo, hi = float(kept.mean()), float(kept.min()), float(kept.max())
        out.update(mean=mean, min=lo, max=hi)
        out["spread"] = hi / lo if lo > 0 else None
        out["cv"] = float(kept.std()) / mean if mean != 0 else None
    return out


def _parts(stats: Mapping, what: str) -> int:
    if not isinstance(stats, Mapping) or "part_norm" not in stats:
        raise ValueError(f"{what} must be an embedding_stats() result (with 'part_norm')")
    return len(stats["part_norm"])


def embedding_drift(q: Mapping, fp: Mapping) -> dict:
    """Per-part drift of a quantized model's embeddings relative to its FP model.

    Args:
        q: :func:`embedding_stats` of the quantized model.
        fp: :func:`embedding_stats` of the FP model (same test sequences).

    Returns:
        ``{"n_parts": p,
        "part_norm_ratio": [p], "part_norm_ratio_stats": stats,
        "interclass_ratio": [p] | None, "interclass_ratio_stats": stats,
        "intra_inter_ratio": {"quantized": [p] | None, "fp": [p] | None},
        "intra_inter_ratio_stats": {"quantized": stats, "fp": stats}}``, where ``part_norm_ratio[k] =
        q.part_norm[k] / fp.part_norm[k]``, ``interclass_ratio[k]`` likewise for the inter-class distance,
        ``intra_inter_ratio[m][k] = intraclass_distance[k] / interclass_distance[k]`` of model ``m``
        (dimensionless; smaller separates better), and ``stats = {"mean", "min", "max", "spread" (max /
        min), "cv" (std / mean, population std over parts), "n" (parts with a defined ratio)}``. A ratio
        with a zero or missing denominator is ``None`` and left out of its stats; ``spread`` is ``None``
        when the minimum is not positive, ``cv`` when the mean is 0.

    Raises:
        ValueError: ``q`` or ``fp`` is not an :func:`embedding_stats` result, or their part counts differ.
    """
    p_q, p_fp = _parts(q, "q"), _parts(fp, "fp")
    if p_q != p_fp:
        raise ValueError(f"part counts differ: quantized has {p_q} parts, FP has {p_fp}")
    norm_ratio = _ratio(q["part_norm"], fp["part_norm"])
    inter_ratio = _ratio(q.get("interclass_distance"), fp.get("interclass_distance"))
    intra_inter = {
        name: _ratio(s.get("intraclass_distance"), s.get("interclass_distance"))
        for name, s in (("quantized", q), ("fp", fp))
    }
    return {
        "n_parts": p_q,
        "part_norm_ratio": norm_ratio,
        "part_norm_ratio_stats": _summary(norm_ratio),
        "interclass_ratio": inter_ratio,
        "interclass_ratio_stats": _summary(inter_ratio),
        "intra_inter_ratio": intra_inter,
        "intra_inter_ratio_stats": {name: _summary(v) for name, v in intra_inter.items()},
    }

