"""Retrieval metrics (Gait3D / GREW style): CMC rank-k, mAP and mINP from a probe x gallery distance matrix.

For each probe the gallery is sorted by increasing distance with a **stable** sort: gallery entries at
exactly the same distance keep their gallery order (the earlier gallery index ranks first). Positions are
1-based. With ``K`` gallery entries of the probe's label ("positives") at positions ``r_1 < ... < r_K``:

* CMC rank-k: 1 if ``r_1 <= k`` else 0;
* AP = ``(1/K) * sum_i i / r_i`` (average precision over the positives);
* INP = ``K / r_K`` (inverse negative penalty: how far down the hardest positive sits, Ye et al. 2021).

Every metric is averaged over the evaluated probes and reported in **percent** (0-100). Probes whose label
does not occur in the gallery have no positive: they are skipped and counted in ``num_skipped``.

Note: mINP is *not* bounded by mAP. A probe with positives at positions 5 and 6 has AP = (1/5 + 2/6) / 2
= 0.267 and INP = 2/6 = 0.333. Both are 1 exactly when all positives precede all negatives, and they are
equal for a probe with a single positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .distance import _as_embedding, _check_metric, _check_pair, _part_distance_unchecked

__all__ = ["retrieval_metrics", "evaluate_retrieval"]

ArrayLike = Union[Tensor, np.ndarray]

# Probes per block when sorting / computing distances: bounds memory to O(_CHUNK * m).
_CHUNK = 1024


def _labels_to_list(labels: Any, name: str) -> list:
    """Labels as a Python list of hashable items (accepts sequences, 1-D tensors and 1-D numpy arrays)."""
    if isinstance(labels, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of labels, not a single {type(labels).__name__}")
    if isinstance(labels, (Tensor, np.ndarray)):
        if labels.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(labels.shape)}")
        return labels.tolist()
    try:
        out = list(labels)
    except TypeError as exc:
        raise ValueError(f"{name} must be a sequence of labels, got {type(labels).__name__}") from exc
    for item in out:
        try:
            hash(item)
        except TypeError as exc:
            raise ValueError(f"{name} items must be hashable (str, int...), got {type(item).__name__}") from exc
    return out


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    try:
        ranks = tuple(ranks)
    except TypeError as exc:
        raise ValueError(f"ranks must be a sequence of positive integers, got {ranks!r}") from exc
    if not ranks:
        raise ValueError("ranks must not be empty")
    for k in ranks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ranks must be positive integers, got {ranks!r}")
    return tuple(dict.fromkeys(int(k) for k in ranks))  # deduplicated, order kept


def _encode(probe_labels: list, gallery_labels: list) -> tuple[Tensor, Tensor]:
    """Integer codes: gallery labels 0..L-1, probe labels the same code or -1 when absent from the gallery."""
    codes: dict = {}
    g = [codes.setdefault(label, len(codes)) for label in gallery_labels]
    p = [codes.get(label, -1) for label in probe_labels]
    return torch.tensor(p, dtype=torch.long), torch.tensor(g, dtype=torch.long)


class _Accumulator:
    """Sums of the per-probe metrics over blocks of probes."""

    def __init__(self, ranks: tuple[int, ...]):
        self.ranks = ranks
        self.cmc = torch.zeros(len(ranks), dtype=torch.float64)
        self.ap = 0.0
        self.inp = 0.0
        self.valid = 0
        self.skipped = 0

    def add(self, dist: Tensor, probe_codes: Tensor, gallery_codes: Tensor, exclude: Tensor | None = None) -> None:
        """Accumulate a block: ``dist`` ``[k, m]``, ``probe_codes`` ``[k]``, ``gallery_codes`` ``[m]``;
        ``exclude`` ``[k, m]`` bool: gallery entries removed from a probe's ranking (None: none)."""
        dist = dist.detach().cpu()
        m = dist.shape[1]
        order = torch.sort(dist, dim=1, stable=True).indices  # ties: lower gallery index first
        matches = gallery_codes[order] == probe_codes[:, None]  # [k, m], sorted order
        if exclude is None:
            position = torch.arange(1, m + 1, dtype=torch.float64)[None, :]  # 1-based rank positions
        else:
            keep = ~exclude.gather(1, order)
            matches &= keep
            position = keep.cumsum(1).to(torch.float64)  # 1-based rank among the kept entries (where kept)
        valid = matches.any(1)
        self.skipped += int((~valid).sum())
        matches = matches[valid]
        if matches.shape[0] == 0:
            return
        if exclude is not None:
            position = position[valid]
        position = position.expand(matches.shape[0], m)
        self.valid += matches.shape[0]
        hits = matches.to(torch.float64)
        num_pos = hits.sum(1)
        first = position.gather(1, hits.argmax(1, keepdim=True)).squeeze(1)  # rank of the first positive
        ranks = torch.tensor(self.ranks, dtype=torch.float64)
        self.cmc += (first[:, None] <= ranks[None, :]).sum(0).to(torch.float64)
        precision = torch.where(matches, hits.cumsum(1) / position.clamp_min(1.0), torch.zeros((), dtype=torch.float64))
        self.ap += float((precision.sum(1) / num_pos).sum())
        last = (hits * position).amax(1)  # rank of the hardest positive
        self.inp += float((num_pos / last).sum())

    def result(self, probe_labels: list, gallery_labels: list) -> dict:
        if self.valid == 0:
            raise ValueError(
                f"no probe label occurs in the gallery ({self.skipped} probes, e.g. {probe_labels[:3]!r}; "
                f"gallery labels e.g. {gallery_labels[:3]!r}): check that both use the same label type"
            )
        out: dict = {f"rank-{k}": 100.0 * float(c) / self.valid for k, c in zip(self.ranks, self.cmc)}
        out["mAP"] = 100.0 * self.ap / self.valid
        out["mINP"] = 100.0 * self.inp / self.valid
        out["num_probes"] = self.valid
        out["num_skipped"] = self.skipped
        return out


def retrieval_metrics(
    dist: ArrayLike,
    probe_labels: Sequence,
    gallery_labels: Sequence,
    ranks: Sequence[int] = (1, 5, 10),
) -> dict:
    """CMC rank-k, mAP and mINP of a probe x gallery distance matrix.

    Args:
        dist: distances ``[n, m]`` (smaller = more similar), tensor or numpy array. ``+inf`` is allowed
            (such a pair sorts last); NaN is not.
        probe_labels: ``n`` hashable labels (subject ids); a 1-D tensor or numpy array is accepted.
        gallery_labels: ``m`` labels of the same kind (``1`` and ``"1"`` are different labels).
        ranks: the CMC ranks to report, positive integers (a rank above ``m`` equals rank ``m``).

    Returns:
        ``{"rank-1": float, "rank-5": float, "rank-10": float, "mAP": float, "mINP": float,
        "num_probes": int, "num_skipped": int}`` (one ``"rank-k"`` key per entry of ``ranks``). Metrics
        are in percent (0-100), averaged over the ``num_probes`` probes that have at least one gallery
        entry of their label; the ``num_skipped`` others are left out. Ties in distance are broken by
        gallery order (stable sort: the lower gallery index ranks first). mINP is the mean over probes of
        (number of positives) / (1-based position of the last positive).

    Raises:
        ValueError: ``dist`` is not 2-D or contains NaN; the gallery (``m == 0``) or the probe set
            (``n == 0``) is empty; label counts do not match ``dist``; labels are unhashable; ``ranks`` is
            empty or holds non-positive values; no probe label occurs in the gallery.
    """
    ranks_t = _check_ranks(ranks)
    if isinstance(dist, np.ndarray):
        dist = torch.from_numpy(np.array(dist, dtype=np.float64))
    elif not isinstance(dist, Tensor):
        raise TypeError(f"dist must be a torch.Tensor or numpy.ndarray, got {type(dist).__name__}")
    if dist.ndim != 2:
        raise ValueError(f"dist must have shape [n_probes, n_gallery], got shape {tuple(dist.shape)}")
    if dist.is_complex():
        raise ValueError("dist must be real-valued")
    n, m = dist.shape
    if m == 0:
        raise ValueError("the gallery is empty (dist has 0 columns)")
    if n == 0:
        raise ValueError("there are no probes (dist has 0 rows)")
    probe_list = _labels_to_list(probe_labels, "probe_labels")
    gallery_list = _labels_to_list(gallery_labels, "gallery_labels")
    if len(probe_list) != n:
        raise ValueError(f"probe_labels has {len(probe_list)} entries but dist has {n} rows")
    if len(gallery_list) != m:
        raise ValueError(f"gallery_labels has {len(gallery_list)} entries but dist has {m} columns")
    if dist.is_floating_point() and bool(torch.isnan(dist).any()):
        raise ValueError("dist contains NaN")
    probe_codes, gallery_codes = _encode(probe_list, gallery_list)
    acc = _Accumulator(ranks_t)
    for start in range(0, n, _CHUNK):
        acc.add(dist[start : start + _CHUNK], probe_codes[start : start + _CHUNK], gallery_codes)
    return acc.result(probe_list, gallery_list)


def evaluate_retrieval(
    probe_emb: ArrayLike,
    probe_labels: Sequence,
    gallery_emb: ArrayLike,
    gallery_labels: Sequence,
    metric: str = "euc",
    ranks: Sequence[int] = (1, 5, 10),
    probe_views: Sequence | None = None,
    gallery_views: Sequence | None = None,
) -> dict:
    """Gait3D-style retrieval evaluation: part distance of probe x gallery embeddings, then the metrics.

    Args:
        probe_emb: probe embeddings ``[n, c, p]`` (tensor or numpy).
        probe_labels: ``n`` subject labels.
        gallery_emb: gallery embeddings ``[m, c, p]``.
        gallery_labels: ``m`` subject labels.
        metric: ``"euc"`` or ``"cos"`` (see :func:`qgait.evaluation.distance.part_distance`).
        ranks: CMC ranks to report.
        probe_views, gallery_views: with both, each probe's ranking leaves out the gallery entries of its own
            subject AND its own view, the same-camera rule of person re-identification (Zheng et al.,
            "Scalable Person Re-identification: A Benchmark", ICCV 2015, Market-1501) that OpenGait's
            ``evaluate_many`` applies for CCPG's "exclude identical-view" figures; positions, AP and INP are
            counted among the remaining entries, and a probe left with no positive is skipped.

    Returns:
        The dict of :func:`retrieval_metrics` (percent, 0-100) plus ``"metric": metric``. The distances are
        computed block by block of probes, so the full ``[n, m]`` matrix is never held in memory.

    Raises:
        TypeError: embeddings are neither tensors nor numpy arrays.
        ValueError: as :func:`part_distance` (shape not ``[n, c, p]``, empty, NaN / inf, mismatched
            ``c`` / ``p``, unknown metric) and :func:`retrieval_metrics` (label counts, ranks, no match).
    """
    _check_metric(metric)
    ranks_t = _check_ranks(ranks)
    probe_t = _as_embedding(probe_emb, "probe_emb")
    gallery_t = _as_embedding(gallery_emb, "gallery_emb")
    _check_pair(probe_t, gallery_t)
    probe_list = _labels_to_list(probe_labels, "probe_labels")
    gallery_list = _labels_to_list(gallery_labels, "gallery_labels")
    if len(probe_list) != probe_t.shape[0]:
        raise ValueError(f"probe_labels has {len(probe_list)} entries but probe_emb has {probe_t.shape[0]}")
    if len(gallery_list) != gallery_t.shape[0]:
        raise ValueError(
            f"gallery_labels has {len(gallery_list)} entries but gallery_emb has {gallery_t.shape[0]}"
        )
    probe_codes, gallery_codes = _encode(probe_list, gallery_list)
    if (probe_views is None) != (gallery_views is None):
        raise ValueError("give both probe_views and gallery_views, or neither")
    pv = gv = None
    if probe_views is not None:
        pv_list = [str(v) for v in _labels_to_list(probe_views, "probe_views")]
        gv_list = [str(v) for v in _labels_to_list(gallery_views, "gallery_views")]
        if len(pv_list) != len(probe_list) or len(gv_list) != len(gallery_list):
            raise ValueError(f"{len(pv_list)} probe views / {len(gv_list)} gallery views for {len(probe_list)} "
                             f"probes / {len(gallery_list)} gallery entries")
        view_codes: dict = {}
        gv = torch.tensor([view_codes.setdefault(v, len(view_codes)) for v in gv_list], dtype=torch.long)
        pv = torch.tensor([view_codes.get(v, -1) for v in pv_list], dtype=torch.long)
    acc = _Accumulator(ranks_t)
    for start in range(0, probe_t.shape[0], _CHUNK):
        dist = _part_distance_unchecked(probe_t[start : start + _CHUNK], gallery_t, metric, _CHUNK)
        pc = probe_codes[start : start + _CHUNK]
        excl = None
        if pv is not None:
            excl = (gallery_codes[None, :] == pc[:, None]) & (gv[None, :] == pv[start : start + _CHUNK, None])
        acc.add(dist, pc, gallery_codes, excl)
    out = acc.result(probe_list, gallery_list)
    out["metric"] = metric
    return out
