"""One call for the biometric operating-point metrics of a probe / gallery set: verification (EER, TAR at FMR,
the ROC / DET curve) and open-set identification (DIR at FPIR, the DIR / FPIR curve), as a JSON-ready dict.

Every rate is a **fraction in [0, 1]** (not percent, unlike the rank-1 tables); thresholds are distances of
the chosen metric. Definitions: :mod:`qgait.evaluation.verification` (ISO/IEC 19795-1:2021) and
:mod:`qgait.evaluation.open_set` (ISO/IEC 19795-1:2021; NISTIR 8271).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .distance import part_distance
from .open_set import FPIR_TARGETS, dir_at_fpir, open_set_scores, sampled_open_set_curve, split_subjects
from .retrieval import _labels_to_list
from .verification import (
    FMR_TARGETS,
    ArrayLike,
    as_distance_matrix,
    equal_error_rate,
    genuine_impostor_scores,
    sampled_roc_curve,
    tar_at_fmr,
)

__all__ = ["verification_summary", "verification_report"]


def _json_float(x: Any) -> Optional[float]:
    """A finite float, or None for NaN / +-inf (strict JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _json_curve(curve: dict) -> dict:
    return {k: [_json_float(v) for v in np.asarray(a).tolist()] for k, a in curve.items()}


def _json_labels(labels: list) -> list:
    return [x.item() if isinstance(x, np.generic) else x for x in labels]


def _json_rows(rows: list[dict]) -> list[dict]:
    return [{k: _json_float(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def verification_summary(
    dist: ArrayLike,
    probe_labels: Sequence,
    gallery_labels: Sequence,
    fmr_targets: Sequence[float] = FMR_TARGETS,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
    open_set_left_out: Optional[float | int] = 0.5,
    open_set_seed: int = 0,
    max_curve_points: int = 200,
) -> dict:
    """Verification and open-set identification metrics of a probe x gallery distance matrix.

    Verification uses every probe x gallery pair (genuine: same subject). The open-set test is built from the
    same closed split: the gallery subjects are split with :func:`~qgait.evaluation.open_set.split_subjects`
    (``open_set_left_out``, ``open_set_seed``), the gallery entries of the left-out subjects are dropped, and
    every probe is searched against the remaining gallery (probes of left-out subjects, and of subjects never
    in the gallery, are non-mated).

    Args:
        dist: distances ``[n, m]`` (smaller = more similar), finite.
        probe_labels: ``n`` subject labels; gallery_labels: ``m`` labels of the same kind.
        fmr_targets: FMR levels for TAR@FMR, fractions in ``(0, 1]``.
        fpir_targets: FPIR levels for DIR@FPIR, fractions in ``(0, 1]``.
        open_set_left_out: fraction (float) or number (int) of gallery subjects left out; ``None`` skips the
            open-set test.
        open_set_seed: seed of the subject split.
        max_curve_points: at most this many exact operating points per curve (log-spaced in FMR / FPIR).

    Returns:
        A JSON-ready dict (NaN / inf as ``None``; rates as fractions)::

            {"rates": "fraction", "num_probes", "num_gallery", "num_genuine_pairs", "num_impostor_pairs",
             "eer", "eer_threshold",
             "tar_at_fmr": [{"fmr_target", "tar", "fmr", "threshold", "resolved", "num_impostor"}, ...],
             "roc_curve": {"threshold": [...], "fmr": [...], "fnmr": [...]},
             "open_set": {"seed", "left_out", "enrolled_subjects", "left_out_subjects", "num_gallery",
                          "num_mated_probes", "num_non_mated_probes", "rank1_mated",
                          "dir_at_fpir": [{"fpir_target", "dir", "fpir", "threshold", "resolved",
                                           "num_non_mated"}, ...],
                          "curve": {"threshold": [...], "fpir": [...], "fnir": [...]}}}

        ``open_set`` is ``None`` when ``open_set_left_out`` is None. ``rank1_mated`` is the closed-set rank-1
        rate of the mated probes against the reduced gallery: the ceiling DIR reaches at large thresholds.
        Unresolvable targets (too few impostor pairs / non-mated probes) have ``"resolved": false`` and
        ``null`` values. A threshold of ``null`` with ``"resolved": true`` means ``-inf`` (nothing accepted).

    Raises:
        ValueError: as :func:`~qgait.evaluation.verification.genuine_impostor_scores`,
            :func:`~qgait.evaluation.open_set.split_subjects` and
            :func:`~qgait.evaluation.open_set.open_set_scores` (e.g. NaN distances, mismatched label counts,
            no genuine pair, no mated probe left after the split); targets outside ``(0, 1]``.
    """
    d = as_distance_matrix(dist)
    gen, imp = genuine_impostor_scores(d, probe_labels, gallery_labels)
    eer, eer_t = equal_error_rate(gen, imp)
    out: dict = {
        "rates": "fraction",
        "num_probes": int(d.shape[0]),
        "num_gallery": int(d.shape[1]),
        "num_genuine_pairs": int(gen.size),
        "num_impostor_pairs": int(imp.size),
        "eer": _json_float(eer),
        "eer_threshold": _json_float(eer_t),
        "tar_at_fmr": _json_rows(tar_at_fmr(gen, imp, fmr_targets)),
        "roc_curve": _json_curve(sampled_roc_curve(gen, imp, max_curve_points)),
        "open_set": None,
    }
    del gen, imp
    if open_set_left_out is None:
        return out
    gallery_list = _labels_to_list(gallery_labels, "gallery_labels")
    enrolled, left_out = split_subjects(gallery_list, open_set_left_out, open_set_seed)
    keep_set = set(enrolled)
    keep = np.fromiter((g in keep_set for g in gallery_list), dtype=bool, count=len(gallery_list))
    scores = open_set_scores(d[:, keep], probe_labels, [g for g in gallery_list if g in keep_set])
    out["open_set"] = {
        "seed": open_set_seed,
        "left_out": open_set_left_out,
        "enrolled_subjects": _json_labels(enrolled),
        "left_out_subjects": _json_labels(left_out),
        "num_gallery": int(keep.sum()),
        "num_mated_probes": scores.num_mated,
        "num_non_mated_probes": int(scores.non_mated.size),
        "rank1_mated": scores.mated_hits.size / scores.num_mated,
        "dir_at_fpir": _json_rows(dir_at_fpir(scores, fpir_targets)),
        "curve": _json_curve(sampled_open_set_curve(scores, max_curve_points)),
    }
    return out


def verification_report(
    probe_emb: ArrayLike,
    probe_labels: Sequence,
    gallery_emb: ArrayLike,
    gallery_labels: Sequence,
    metric: str = "euc",
    **options: Any,
) -> dict:
    """:func:`verification_summary` of the part distances of two sets of embeddings, plus ``"metric"``.

    Args:
        probe_emb: ``[n, c, p]`` embeddings; gallery_emb: ``[m, c, p]``.
        probe_labels, gallery_labels: ``n`` and ``m`` subject labels.
        metric: ``"euc"`` or ``"cos"`` (:func:`~qgait.evaluation.distance.part_distance`).
        **options: ``fmr_targets``, ``fpir_targets``, ``open_set_left_out``, ``open_set_seed``,
            ``max_curve_points`` of :func:`verification_summary`.

    Returns:
        The dict of :func:`verification_summary` with ``"metric": metric``; thresholds are distances of that
        metric. The full ``[n, m]`` float32 distance matrix is held in memory (40 MB for 5,000 x 2,000).

    Raises:
        TypeError: embeddings are neither tensors nor numpy arrays; an unknown option.
        ValueError: as :func:`~qgait.evaluation.distance.part_distance` and :func:`verification_summary`.
    """
    dist = part_distance(probe_emb, gallery_emb, metric)
    out = verification_summary(dist, probe_labels, gallery_labels, **options)
    return {"metric": metric, **out}
