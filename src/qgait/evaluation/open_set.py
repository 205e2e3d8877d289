"""Open-set identification at rank 1: FPIR, FNIR and DIR over a distance threshold, and a seeded split of
subjects into enrolled and left-out ones that turns any closed probe / gallery split into an open-set test.

Terms follow ISO/IEC 19795-1:2021 and Grother, Ngan & Hanaoka, "Face Recognition Vendor Test (FRVT) Part 2:
Identification", NISTIR 8271, NIST 2019. A probe is *mated* when its subject is enrolled (has at least one
gallery entry) and *non-mated* otherwise. Each probe is searched against the whole gallery; its candidate is
the nearest gallery entry (ties: the lowest gallery index, as in :mod:`qgait.evaluation.retrieval`), returned
iff its distance ``<= t``:

* FPIR(t), false positive identification rate: the fraction of non-mated probes with a candidate,
  ``#{non-mated: best distance <= t} / N_nm``;
* FNIR(t), false negative identification rate: the fraction of mated probes whose rank-1 candidate is not
  returned or is of another subject, ``1 - #{mated: rank-1 correct and best distance <= t} / N_m``;
* DIR(t) = 1 - FNIR(t), the detection and identification rate at rank 1 (Phillips, Grother & Micheals,
  "Evaluation methods in face recognition", Handbook of Face Recognition, Springer 2005).

As ``t`` grows, DIR rises to the closed-set rank-1 rate of the mated probes, not to 1. **Rates are fractions
in [0, 1], not percent**; thresholds are distances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .tradeoff import accepted, allowed_false, best_point, check_scores, check_targets, exact_curve, sampled_curve
from .verification import ArrayLike, as_distance_matrix, label_codes

__all__ = [
    "FPIR_TARGETS",
    "OpenSetScores",
    "split_subjects",
    "open_set_scores",
    "fpir_fnir",
    "open_set_curve",
    "sampled_open_set_curve",
    "dir_at_fpir",
]

#: FPIR levels of the usual DIR@FPIR table.
FPIR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3)

# Probe rows per block when searching the distance matrix: bounds the temporaries to O(_CHUNK * m).
_CHUNK = 1024


class OpenSetScores(NamedTuple):
    """The score sets of an open-set search (see the module docstring).

    Attributes:
        mated_hits: best distances of the mated probes whose rank-1 candidate is correct, sorted ascending.
        num_mated: number of mated probes (``>= len(mated_hits)``; the others never count as identified).
        non_mated: best distances of the non-mated probes, sorted ascending.
    """

    mated_hits: np.ndarray
    num_mated: int
    non_mated: np.ndarray


def split_subjects(subjects: Sequence, left_out: float | int = 0.5, seed: int = 0) -> tuple[list, list]:
    """Split subjects at random, reproducibly, into enrolled and left-out ones.

    To build an open-set test from a closed probe / gallery split, drop the gallery entries of the left-out
    subjects: their probes become non-mated, the others stay mated.

    Args:
        subjects: hashable subject labels; duplicates are ignored.
        left_out: the fraction of subjects to leave out (a float in ``(0, 1)``, rounded to a count, at least
            1 and at most ``n - 1``) or their number (an int in ``[1, n - 1]``).
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(enrolled, left_out)``, two disjoint sorted lists covering the distinct subjects. The result depends
        only on the set of subjects, ``left_out`` and ``seed``, not on the order or repetitions in
        ``subjects`` (subjects are sorted before the permutation; mixed types are sorted by ``repr``).

    Raises:
        ValueError: fewer than 2 distinct subjects; ``left_out`` out of range or of another type.
    """
    if isinstance(subjects, (str, bytes)):
        raise ValueError(f"subjects must be a sequence of labels, not a single {type(subjects).__name__}")
    distinct = list(dict.fromkeys(subjects))
    try:
        distinct.sort()
    except TypeError:
        distinct.sort(key=repr)
    n = len(distinct)
    if n < 2:
        raise ValueError(f"need at least 2 distinct subjects to leave some out, got {n}")
    if isinstance(left_out, bool):
        raise ValueError(f"left_out must be a fraction in (0, 1) or a count, got {left_out!r}")
    if isinstance(left_out, (int, np.integer)):
        count = int(left_out)
        if not 1 <= count <= n - 1:
            raise ValueError(f"left_out must leave out 1..{n - 1} of the {n} subjects, got {count}")
    elif isinstance(left_out, float) and 0.0 < left_out < 1.0:
        count = min(max(int(round(left_out * n)), 1), n - 1)
    else:
        raise ValueError(f"left_out must be a fraction in (0, 1) or a count, got {left_out!r}")
    order = np.random.default_rng(seed).permutation(n)
    out = set(order[:count].tolist())
    enrolled = [s for i, s in enumerate(distinct) if i not in out]
    left = [s for i, s in enumerate(distinct) if i in out]
    return enrolled, left


def open_set_scores(dist: ArrayLike, probe_labels: Sequence, gallery_labels: Sequence) -> OpenSetScores:
    """Rank-1 search of every probe: the score sets of FPIR and FNIR.

    Args:
        dist: distances ``[n, m]`` of every probe to every gallery entry (smaller = more similar), finite;
            the gallery holds only enrolled subjects.
        probe_labels: ``n`` hashable subject labels; a probe whose label is not in ``gallery_labels`` is
            non-mated.
        gallery_labels: ``m`` labels of the same kind.

    Returns:
        :class:`OpenSetScores`. The matrix is read in blocks of rows (``O(1024 * m)`` working memory).

    Raises:
        TypeError: ``dist`` is neither a tensor nor a numpy array.
        ValueError: ``dist`` is not 2-D, empty or holds NaN / infinite values; label counts do not match;
            labels are unhashable; there is no mated probe or no non-mated probe.
    """
    d = as_distance_matrix(dist)
    p_codes, g_codes = label_codes(d, probe_labels, gallery_labels)
    mated = p_codes >= 0
    if not mated.any():
        raise ValueError("no mated probe: no probe label occurs in the gallery (check the label types)")
    if mated.all():
        raise ValueError(
            "no non-mated probe: every probe's subject is in the gallery; leave some subjects out of the "
            "gallery (split_subjects) to make an open-set test"
        )
    best = np.empty(d.shape[0], dtype=np.float64)
    hit = np.empty(d.shape[0], dtype=bool)
    for start in range(0, d.shape[0], _CHUNK):
        block = d[start : start + _CHUNK]
        if not np.isfinite(block).all():
            raise ValueError(f"dist contains NaN or infinite values (in rows {start}..{start + len(block) - 1})")
        nearest = block.argmin(1)  # first minimum: ties go to the lowest gallery index
        best[start : start + len(block)] = block[np.arange(len(block)), nearest]
        hit[start : start + len(block)] = g_codes[nearest] == p_codes[start : start + _CHUNK]
    return OpenSetScores(np.sort(best[mated & hit]), int(mated.sum()), np.sort(best[~mated]))


def _checked(scores: OpenSetScores) -> OpenSetScores:
    if not isinstance(scores, OpenSetScores):
        raise TypeError(f"scores must be OpenSetScores (from open_set_scores), got {type(scores).__name__}")
    hits = check_scores(scores.mated_hits, "mated_hits", allow_empty=True)
    non_mated = check_scores(scores.non_mated, "non_mated")
    num_mated = scores.num_mated
    if isinstance(num_mated, bool) or not isinstance(num_mated, (int, np.integer)) or num_mated < max(len(hits), 1):
        raise ValueError(f"num_mated must be an integer >= max(1, len(mated_hits)), got {num_mated!r}")
    return OpenSetScores(hits, int(num_mated), non_mated)


def fpir_fnir(scores: OpenSetScores, thresholds: Any) -> tuple[np.ndarray, np.ndarray]:
    """FPIR and FNIR (rank 1) at the given distance thresholds (a candidate is returned iff ``d <= t``).

    Returns:
        ``(fpir, fnir)``, float64 arrays of the shape of ``thresholds``, fractions in ``[0, 1]``.

    Raises:
        TypeError: ``scores`` is not :class:`OpenSetScores`.
        ValueError: no non-mated probe, ``num_mated`` below ``len(mated_hits)``, NaN / inf scores.
    """
    s = _checked(scores)
    t = np.asarray(thresholds, dtype=np.float64)
    return accepted(s.non_mated, t) / len(s.non_mated), 1.0 - accepted(s.mated_hits, t) / s.num_mated


def open_set_curve(scores: OpenSetScores) -> dict[str, np.ndarray]:
    """Every operating point, exactly: ``{"threshold", "fpir", "fnir"}``, float64, increasing threshold.

    The first threshold is ``-inf`` (no candidate returned: FPIR 0, FNIR 1), then one point per distinct
    observed best distance, ties never split. DIR = 1 - FNIR.

    Raises:
        TypeError, ValueError: as :func:`fpir_fnir`.
    """
    s = _checked(scores)
    t, fpir, fnir = exact_curve(s.mated_hits, s.num_mated, s.non_mated)
    return {"threshold": t, "fpir": fpir, "fnir": fnir}


def sampled_open_set_curve(scores: OpenSetScores, max_points: int = 200) -> dict[str, np.ndarray]:
    """At most ``max_points`` exact points of :func:`open_set_curve`, log-spaced in FPIR (for each level,
    the point of highest DIR with FPIR at most that level). Same keys.

    Raises:
        TypeError, ValueError: as :func:`fpir_fnir`; ``max_points < 2``.
    """
    s = _checked(scores)
    t, fpir, fnir = sampled_curve(s.mated_hits, s.num_mated, s.non_mated, max_points)
    return {"threshold": t, "fpir": fpir, "fnir": fnir}


def dir_at_fpir(scores: OpenSetScores, targets: Sequence[float] = FPIR_TARGETS) -> list[dict]:
    """DIR (rank 1, = 1 - FNIR) at fixed FPIR levels, with the thresholds that achieve them.

    For each target the operating point of largest DIR whose FPIR ``<= target``, exactly as
    :func:`qgait.evaluation.verification.tar_at_fmr` does for TAR at FMR (non-mated probes tied at the
    limiting distance are all rejected). A target is resolved only when there are at least ``1 / target``
    non-mated probes; otherwise ``dir``, ``fpir`` and ``threshold`` are NaN and ``"resolved"`` is False.

    Args:
        scores: from :func:`open_set_scores`.
        targets: FPIR levels, fractions in ``(0, 1]``.

    Returns:
        One dict per target: ``{"fpir_target", "dir", "fpir" (achieved, <= target), "threshold" (a distance;
        -inf when no candidate can be returned), "resolved", "num_non_mated"}``.

    Raises:
        TypeError, ValueError: as :func:`fpir_fnir`; a target outside ``(0, 1]``.
    """
    targets_t = check_targets(targets, "targets")
    s = _checked(scores)
    out = []
    for target in targets_t:
        row: dict = {"fpir_target": target, "dir": math.nan, "fpir": math.nan, "threshold": math.nan}
        row["resolved"] = allowed_false(target, len(s.non_mated)) >= 1
        if row["resolved"]:
            fpir, fnir, threshold = best_point(s.mated_hits, s.num_mated, s.non_mated, target)
            row.update(dir=1.0 - fnir, fpir=fpir, threshold=threshold)
        row["num_non_mated"] = len(s.non_mated)
        out.append(row)
    return out
