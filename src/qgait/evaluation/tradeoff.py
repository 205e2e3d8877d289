"""Exact error trade-off of a distance threshold: the shared core of verification and open-set identification.

A decision compares a distance ``d`` (smaller = more similar) with a threshold ``t`` and **accepts iff
``d <= t``**. Two score sets are given as 1-D arrays sorted in ascending order:

* ``pos``: distances that *should* be accepted (genuine pairs in verification; in open-set identification
  the best distance of each mated probe whose rank-1 candidate is correct);
* ``neg``: distances that should be rejected (impostor pairs; the best distance of each non-mated probe).

With ``n_pos`` the number of positive *attempts* (``len(pos)`` in verification, the number of mated probes,
some of which have no entry in ``pos``, in open-set identification) and ``n_neg = len(neg)``:

* false rate ``F(t) = #{neg <= t} / n_neg`` (FMR, FPIR), non-decreasing in ``t``;
* miss rate ``M(t) = 1 - #{pos <= t} / n_pos`` (FNMR, FNIR), non-increasing in ``t``.

Both are step functions that change only at observed scores, so the exact curve is their value at
``t = -inf`` (nothing accepted) and at every distinct observed score; all scores equal to ``t`` fall on the
same side of it, which is how ties are handled. Counting uses ``numpy.searchsorted`` on the sorted sets:
``O(log n)`` per threshold, no ``[thresholds x scores]`` matrix. All rates are fractions in ``[0, 1]``.

Comparisons of a rate with a target (``F(t) <= target``) are made on counts: ``#{neg <= t} <= k`` with
``k = floor(target * n_neg * (1 + 1e-9))`` (the small tolerance makes ``1e-3 * 1000`` count one impostor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_scores",
    "check_targets",
    "accepted",
    "exact_curve",
    "best_point",
    "allowed_false",
    "equal_error",
    "sampled_curve",
]

# Relative tolerance when turning a target rate into a count of allowed false accepts.
_RATE_RTOL = 1e-9


def check_scores(scores: Any, name: str, allow_empty: bool = False) -> np.ndarray:
    """Validate a 1-D set of finite distances and return it sorted ascending (a copy only if unsorted).

    Args:
        scores: 1-D array-like of real numbers (numpy array, tensor, list).
        name: used in error messages.
        allow_empty: accept an empty set.

    Returns:
        1-D ``float32`` (kept when given) or ``float64`` array, sorted ascending.

    Raises:
        ValueError: not 1-D, not numeric, empty (unless ``allow_empty``), or holds NaN / infinite values.
    """
    if hasattr(scores, "detach"):  # torch.Tensor
        scores = scores.detach().cpu()
        if scores.is_floating_point() and scores.dtype.itemsize < 4:
            scores = scores.float()
        scores = scores.numpy()
    arr = np.asarray(scores)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    if arr.size == 0:
        if allow_empty:
            return arr
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values ({int((~np.isfinite(arr)).sum())} of {arr.size})")
    if not (arr[1:] >= arr[:-1]).all():
        arr = np.sort(arr)
    return arr


def check_targets(targets: Sequence[float], name: str) -> tuple[float, ...]:
    """Target rates as a tuple of floats in ``(0, 1]``; ValueError otherwise (or when empty)."""
    try:
        out = tuple(float(t) for t in targets)
    except TypeError as exc:
        raise ValueError(f"{name} must be a sequence of rates in (0, 1], got {targets!r}") from exc
    if not out:
        raise ValueError(f"{name} must not be empty")
    for t in out:
        if not 0.0 < t <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must be rates in (0, 1] (fractions, not percent), got {targets!r}")
    return out


def accepted(sorted_scores: np.ndarray, thresholds: Any) -> np.ndarray:
    """Number of scores ``<= t`` for every threshold ``t`` (int64, the shape of ``thresholds``)."""
    return np.searchsorted(sorted_scores, thresholds, side="right").astype(np.int64)


def exact_curve(pos: np.ndarray, n_pos: int, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every operating point: ``(thresholds, false_rate, miss_rate)``, float64 arrays of one length.

    ``thresholds`` is ``-inf`` (nothing accepted: false rate 0, miss rate 1) followed by every distinct
    observed score in increasing order. Memory is ``O(len(pos) + len(neg))``.
    """
    thresholds = np.concatenate(([-np.inf], np.unique(np.concatenate((pos, neg)).astype(np.float64))))
    false_rate = accepted(neg, thresholds) / len(neg)
    miss_rate = 1.0 - accepted(pos, thresholds) / n_pos
    return thresholds, false_rate, miss_rate


def allowed_false(target: float, n_neg: int) -> int:
    """How many negatives may be accepted at false rate ``<= target``: ``floor(target * n_neg)``."""
    return int(np.floor(target * n_neg * (1.0 + _RATE_RTOL)))


def best_point(pos: np.ndarray, n_pos: int, neg: np.ndarray, target: float) -> tuple[float, float, float]:
    """The operating point of lowest miss rate among those with false rate ``<= target``.

    Returns ``(false_rate, miss_rate, threshold)``. With ``k`` = :func:`allowed_false` and ``v`` the
    ``(k+1)``-th smallest negative, every threshold below ``v`` accepts at most ``k`` negatives and every
    threshold ``>= v`` accepts more; the best point is the largest observed score strictly below ``v``
    (``-inf`` when there is none: nothing can be accepted), so negatives tied with ``v`` are never half
    accepted. When ``k >= n_neg`` every score is accepted (threshold = the largest score).
    """
    k = allowed_false(target, len(neg))
    if k >= len(neg):
        top = max(float(neg[-1]), float(pos[-1]) if len(pos) else -np.inf)
        return 1.0, 1.0 - len(pos) / n_pos, top
    v = neg[k]
    n_below = int(np.searchsorted(neg, v, side="left"))  # negatives strictly below v (<= k; fewer with ties)
    p_below = int(np.searchsorted(pos, v, side="left"))
    candidates = [float(neg[n_below - 1])] if n_below else []
    if p_below:
        candidates.append(float(pos[p_below - 1]))
    threshold = max(candidates) if candidates else -np.inf
    return n_below / len(neg), 1.0 - p_below / n_pos, threshold


def _last_true(values: np.ndarray, pred) -> int:
    """Index of the last element of sorted ``values`` for which monotone ``pred`` (True...False) holds, or -1."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(values[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def equal_error(pos: np.ndarray, n_pos: int, neg: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold, ``(rate, threshold)``, interpolated between two operating points.

    ``M(t) - F(t)`` is non-increasing in ``t``. Let ``a`` be the last operating point of the exact curve with
    ``M(a) >= F(a)`` (found by bisection on integer counts, so ties and round-off cannot misplace it) and
    ``b`` the next one (``M(b) < F(b)``). The rate is where the segment from ``(F(a), M(a))`` to
    ``(F(b), M(b))`` meets the diagonal ``F = M``: with
    ``lam = (M(a) - F(a)) / ((M(a) - F(a)) - (M(b) - F(b)))`` in ``[0, 1)``, ``rate = F(a) + lam (F(b) - F(a))``
    (which equals ``M(a) + lam (M(b) - M(a))``); it is the error of a system that uses threshold ``b`` with
    probability ``lam`` and ``a`` otherwise (the ROC convex hull between the two points). The threshold is
    interpolated the same way, ``t_a + lam (t_b - t_a)``, or is ``t_b`` when ``a`` is the start of the curve
    (``t_a = -inf``). When the curves meet exactly at an observed point, ``lam = 0`` and that point is exact.
    """
    n_neg = len(neg)

    def miss_ge_false(t: float) -> bool:  # M(t) >= F(t), on integers: (n_pos - P(t)) * n_neg >= N(t) * n_pos
        p = int(np.searchsorted(pos, t, side="right"))
        n = int(np.searchsorted(neg, t, side="right"))
        return (n_pos - p) * n_neg >= n * n_pos

    cand = []
    for arr in (pos, neg):
        i = _last_true(arr, miss_ge_false)
        if i >= 0:
            cand.append(float(arr[i]))
    t_a = max(cand) if cand else -np.inf

    def rates(t: float) -> tuple[float, float]:
        return float(accepted(neg, t)) / n_neg, 1.0 - float(accepted(pos, t)) / n_pos

    f_a, m_a = rates(t_a)
    nxt = [float(arr[j]) for arr in (pos, neg) if (j := int(np.searchsorted(arr, t_a, side="right"))) < len(arr)]
    if not nxt:  # t_a is the largest score: only when nothing in pos (miss rate 1 throughout)
        return m_a, t_a
    t_b = min(nxt)
    f_b, m_b = rates(t_b)
    lam = (m_a - f_a) / ((m_a - f_a) - (m_b - f_b))
    rate = f_a + lam * (f_b - f_a)
    threshold = t_b if np.isneginf(t_a) else t_a + lam * (t_b - t_a)
    return float(rate), float(threshold)


def sampled_curve(
    pos: np.ndarray, n_pos: int, neg: np.ndarray, max_points: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``max_points`` exact operating points, spaced evenly in ``log10`` of the false rate.

    For each level ``f`` of ``0`` and ``max_points - 1`` values log-spaced from ``1 / n_neg`` to ``1``, the
    point of :func:`best_point` (lowest miss rate with false rate ``<= f``); repeated points are dropped.
    Returns ``(thresholds, false_rate, miss_rate)`` float64, in increasing threshold order. Every point lies
    on the exact curve, so the plotted staircase's corners are exact; no point is interpolated.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2, got {max_points!r}")
    n_neg = len(neg)
    levels = np.concatenate(([0.0], np.logspace(-np.log10(n_neg), 0.0, int(max_points) - 1)))
    points = sorted({best_point(pos, n_pos, neg, float(f))[::-1] for f in levels})  # (threshold, miss, false)
    thresholds, miss_rate, false_rate = (np.array(c, dtype=np.float64) for c in zip(*points))
    return thresholds, false_rate, miss_rate
