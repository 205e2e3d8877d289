"""What indexed search loses: recall@1 of a :class:`~qgait.runtime.index.GalleryIndex` against exact rankings.

Two measurements, each over a set of probe embeddings:

* :func:`rerank_recall` (the candidate stage): the index's answer (FAISS candidates re-ranked by the part
  distance) against the exhaustive part-distance ranking of the whole gallery. Loss comes from the L2 proxy
  (an entry nearest by the mean part distance can lie outside the ``k_candidates`` nearest by flattened L2) and,
  for an approximate index, from the index.
* :func:`approximate_recall` (the approximate index): an approximate index against an exact (flat) one over the
  same gallery, at the candidate level (FAISS's own "1-recall@1" and "k-recall@k") and at the final answer.

recall@1 is the fraction of probes whose top-1 agrees. An entry "agrees" when it is the same entry or one at
the same distance (a tie, relative tolerance ``1e-6``: the re-rank of a subset and the exhaustive ranking can
round differently in the last bit); a label agrees when the top-1 labels are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..evaluation.distance import part_distance
from .index import GalleryIndex, _as_probes

__all__ = ["CandidateReference", "approximate_recall", "candidate_reference", "exhaustive_top1", "rerank_recall"]

_TIE_RTOL = 1e-6


def exhaustive_top1(index: GalleryIndex, probes: Any, block_bytes: int = 1 << 28) -> tuple[np.ndarray, np.ndarray]:
    """The exact part-distance nearest entry of each probe over the whole gallery (no index).

    Computed in blocks of probes so that the ``[block, m]`` float32 distance matrix stays under ``block_bytes``.

    Returns:
        ``(ids, distances)``: int64 ``[n]`` (the lowest index among exact ties) and float32 ``[n]``.

    Raises:
        ValueError: probes of the wrong shape or not finite.
    """
    p = _as_probes(probes, index.shape)
    emb = torch.from_numpy(index.gallery.embeddings)
    block = max(1, int(block_bytes) // (4 * len(index)))
    ids, dist = [], []
    for s in range(0, p.shape[0], block):
        d = part_distance(torch.from_numpy(p[s:s + block]), emb, metric=index.metric)
        v, i = d.min(dim=1)  # the first minimum: lowest index among ties
        ids.append(i.numpy().astype(np.int64))
        dist.append(v.numpy())
    return np.concatenate(ids), np.concatenate(dist)


def _agree(ids_a, d_a, ids_b, d_b) -> np.ndarray:
    return (ids_a == ids_b) | (np.abs(d_a - d_b) <= _TIE_RTOL * np.maximum(np.abs(d_b), 1e-12))


def _top1(index: GalleryIndex, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The re-ranked nearest entry and distance per probe (``-1``, ``inf`` where nothing was found)."""
    res = index.search_entries(probes, k)
    ids = np.array([r[0][0] if len(r[0]) else -1 for r in res], dtype=np.int64)
    return ids, np.array([r[1][0] if len(r[1]) else np.inf for r in res], dtype=np.float32)


def rerank_recall(index: GalleryIndex, probes: Any, k_candidates: int | None = None,
                  exhaustive: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """recall@1 of ``index`` (candidates + part-distance re-rank) against the exhaustive part-distance ranking.

    Args:
        index: the index to measure (flat: the L2 proxy's loss alone; approximate: the proxy's and the index's).
        probes: ``[n, c, p]`` probe embeddings.
        k_candidates: candidates per probe (default: the index's).
        exhaustive: :func:`exhaustive_top1` of these probes over this gallery, when already computed (it is the
            same for every index over the gallery); ``None``: computed here.

    Returns:
        ``{"probes": n, "k_candidates": k, "entry": recall@1 of the nearest entry, "label": recall@1 of the
        nearest label}`` (fractions in [0, 1]).

    Raises:
        ValueError: probes of the wrong shape or not finite, ``k_candidates < 1``.
    """
    k = index.k_candidates if k_candidates is None else k_candidates
    exact_ids, exact_d = exhaustive_top1(index, probes) if exhaustive is None else exhaustive
    if len(exact_ids) != len(_as_probes(probes, index.shape)):
        raise ValueError(f"exhaustive holds {len(exact_ids)} probes, not {len(_as_probes(probes, index.shape))}")
    ids, d = _top1(index, _as_probes(probes, index.shape), k)
    labels = np.array(index.gallery.labels)
    return {"probes": int(len(ids)), "k_candidates": int(k),
            "entry": float(_agree(ids, d, exact_ids, exact_d).mean()),
            "label": float(((ids >= 0) & (labels[ids] == labels[exact_ids])).mean())}


@dataclass
class CandidateReference:
    """An exact (flat) index's answers for a set of probes, kept so that the flat index can be freed before an
    approximate one is built over a large gallery (:func:`candidate_reference`).

    Attributes:
        k: candidates per probe. ids, sq_l2: ``[n, k]`` exact L2 candidates (see ``GalleryIndex.candidates``).
        final_ids, final_dist: ``[n]`` the re-ranked nearest entry and its part distance. labels: the gallery's.
    """

    k: int
    ids: np.ndarray
    sq_l2: np.ndarray
    final_ids: np.ndarray
    final_dist: np.ndarray
    labels: np.ndarray
    metric: str
    size: int


def candidate_reference(exact: GalleryIndex, probes: Any, k_candidates: int | None = None) -> CandidateReference:
    """The exact index's candidates and re-ranked answers for ``probes`` (the reference of
    :func:`approximate_recall`).

    Raises:
        ValueError: ``exact`` is not a flat index, bad probes, ``k_candidates < 1``.
    """
    if not exact.params.exact:
        raise ValueError(f"the reference must be a flat index, got {exact.params.describe()}")
    k = min(exact.k_candidates if k_candidates is None else k_candidates, len(exact))
    p = _as_probes(probes, exact.shape)
    ids, sq = exact.candidates(p, k)
    final_ids, final_d = _top1(exact, p, k)
    return CandidateReference(int(k), ids, sq, final_ids, final_d, np.array(exact.gallery.labels), exact.metric,
                              len(exact))


def approximate_recall(approx: GalleryIndex, reference: GalleryIndex | CandidateReference, probes: Any,
                       k_candidates: int | None = None) -> dict:
    """recall of an approximate index against exact search over the same gallery.

    Args:
        approx: an HNSW / IVF :class:`GalleryIndex`.
        reference: a flat :class:`GalleryIndex` over the same gallery, or its :class:`CandidateReference` for
            these probes.
        probes: ``[n, c, p]`` probe embeddings (the reference's, when it is a ``CandidateReference``).
        k_candidates: candidates per probe (default: ``approx``'s; a ``CandidateReference`` fixes its own).

    Returns:
        ``{"probes", "k_candidates", "candidate_1_recall_at_1": fraction of probes whose exact L2 nearest entry
        is the approximate L2 nearest (or tied with it), "candidate_k_recall_at_k": mean fraction of the exact
        k candidates that the approximate index returns, "final_entry": recall@1 of the re-ranked nearest entry,
        "final_label": recall@1 of the re-ranked nearest label}`` (fractions in [0, 1]).

    Raises:
        ValueError: the two cover galleries of different sizes or use different metrics, the reference is not
            flat, bad probes or a probe count that differs from the reference's.
    """
    if isinstance(reference, GalleryIndex):
        reference = candidate_reference(reference, probes, approx.k_candidates if k_candidates is None
                                        else k_candidates)
    if reference.size != len(approx):
        raise ValueError(f"the indexes cover different galleries ({len(approx)} vs {reference.size} entries)")
    if approx.metric != reference.metric:
        raise ValueError(f"the indexes use different metrics ({approx.metric} vs {reference.metric})")
    p = _as_probes(probes, approx.shape)
    if p.shape[0] != reference.ids.shape[0]:
        raise ValueError(f"{p.shape[0]} probes but the reference holds {reference.ids.shape[0]}")
    k = reference.k
    a_ids, a_sq = approx.candidates(p, k)
    first = _agree(a_ids[:, 0], a_sq[:, 0], reference.ids[:, 0], reference.sq_l2[:, 0])
    overlap = [len(np.intersect1d(a[a >= 0], e)) / len(e) for a, e in zip(a_ids, reference.ids)]
    fa_ids, fa_d = _top1(approx, p, k)
    labels = reference.labels
    return {"probes": int(p.shape[0]), "k_candidates": int(k),
            "candidate_1_recall_at_1": float(first.mean()),
            "candidate_k_recall_at_k": float(np.mean(overlap)),
            "final_entry": float(_agree(fa_ids, fa_d, reference.final_ids, reference.final_dist).mean()),
            "final_label": float(((fa_ids >= 0) & (labels[fa_ids] == labels[reference.final_ids])).mean())}
