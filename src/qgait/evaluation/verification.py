"""Verification (one-to-one comparison) metrics from a probe x gallery distance matrix: genuine and impostor
score sets, the ROC / DET trade-off, the equal error rate and TAR at fixed FMR.

Terms follow ISO/IEC 19795-1:2021 (Biometric performance testing and reporting, Part 1: Principles and
framework). A comparison of a probe with a gallery sample is *genuine* (mated) when both are of the same
subject and *impostor* (non-mated) otherwise; every probe x gallery pair is one comparison. A comparison is
declared a match iff its distance ``d <= t`` (smaller distance = more similar):

* FMR(t), false match rate: the fraction of impostor comparisons declared a match, ``#{impostor <= t} / N_i``;
* FNMR(t), false non-match rate: the fraction of genuine comparisons declared a non-match,
  ``#{genuine > t} / N_g``; TAR(t) = 1 - FNMR(t) (true accept rate).

The ROC plots TAR against FMR; the DET curve (Martin, Doddington, Kamm, Ordowski & Przybocki, "The DET curve
in assessment of detection task performance", Eurospeech 1997) plots FNMR against FMR with both axes on the
normal-deviate scale. Both are drawn from the same exact operating points (:func:`roc_curve`), computed from
the sorted scores, not on a threshold grid. **All rates are fractions in [0, 1], not percent**; thresholds are
distances in the units of the metric that produced ``dist``.

These are comparison-level rates (FMR / FNMR), not transaction-level (FAR / FRR): no attempts are pooled and
no failure to acquire is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .retrieval import _encode, _labels_to_list
from .tradeoff import (
    accepted,
    allowed_false,
    best_point,
    check_scores,
    check_targets,
    equal_error,
    exact_curve,
    sampled_curve,
)

__all__ = [
    "FMR_TARGETS",
    "genuine_impostor_scores",
    "error_rates",
    "roc_curve",
    "sampled_roc_curve",
    "equal_error_rate",
    "tar_at_fmr",
]

ArrayLike = Union[Tensor, np.ndarray]

#: FMR levels of the usual TAR@FMR table.
FMR_TARGETS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)

# Probe rows per block when splitting the distance matrix: bounds the boolean masks to O(_CHUNK * m).
_CHUNK = 1024


def as_distance_matrix(dist: ArrayLike) -> np.ndarray:
    """``dist`` as a 2-D numpy array (``float32`` kept, other types to ``float64``; a view when possible).

    Raises:
        TypeError: neither a tensor nor a numpy array.
        ValueError: not 2-D, not real-valued, or an empty probe or gallery dimension.
    """
    if isinstance(dist, Tensor):
        dist = dist.detach().cpu()
        if dist.is_complex():
            raise ValueError("dist must be real-valued")
        if dist.dtype not in (torch.float32, torch.float64):
            dist = dist.to(torch.float64)
        dist = dist.numpy()
    elif not isinstance(dist, np.ndarray):
        raise TypeError(f"dist must be a torch.Tensor or numpy.ndarray, got {type(dist).__name__}")
    if dist.dtype == object or dist.dtype.kind not in "biuf":
        raise ValueError(f"dist must be real numbers, got dtype {dist.dtype}")
    if dist.dtype != np.float32:
        dist = dist.astype(np.float64, copy=False)
    if dist.ndim != 2:
        raise ValueError(f"dist must have shape [n_probes, n_gallery], got shape {dist.shape}")
    if dist.shape[0] == 0:
        raise ValueError("there are no probes (dist has 0 rows)")
    if dist.shape[1] == 0:
        raise ValueError("the gallery is empty (dist has 0 columns)")
    return dist


def label_codes(dist: np.ndarray, probe_labels: Sequence, gallery_labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of the labels (``-1``: a probe label absent from the gallery), lengths checked."""
    probe_list = _labels_to_list(probe_labels, "probe_labels")
    gallery_list = _labels_to_list(gallery_labels, "gallery_labels")
    n, m = dist.shape
    if len(probe_list) != n:
        raise ValueError(f"probe_labels has {len(probe_list)} entries but dist has {n} rows")
    if len(gallery_list) != m:
        raise ValueError(f"gallery_labels has {len(gallery_list)} entries but dist has {m} columns")
    p, g = _encode(probe_list, gallery_list)
    return p.numpy(), g.numpy()


def genuine_impostor_scores(
    dist: ArrayLike, probe_labels: Sequence, gallery_labels: Sequence
) -> tuple[np.ndarray, np.ndarray]:
    """Split every probe x gallery distance into the genuine and the impostor score set.

    Args:
        dist: distances ``[n, m]`` (smaller = more similar), tensor or numpy array, finite.
        probe_labels: ``n`` hashable subject labels (a 1-D tensor or numpy array is accepted).
        gallery_labels: ``m`` labels of the same kind (``1`` and ``"1"`` are different subjects).

    Returns:
        ``(genuine, impostor)``: 1-D arrays sorted ascending, of the dtype of ``dist`` (``float32`` kept,
        else ``float64``); ``len(genuine) + len(impostor) == n * m``. The matrix is read in blocks of rows,
        so besides the two outputs (``n * m`` values in all) the working memory is ``O(1024 * m)``.

    Raises:
        TypeError: ``dist`` is neither a tensor nor a numpy array.
        ValueError: ``dist`` is not 2-D, is empty or holds NaN / infinite values; label counts do not match
            ``dist``; labels are unhashable; there is no genuine pair (no probe label occurs in the gallery)
            or no impostor pair (every probe and gallery entry is of one subject).
    """
    d = as_distance_matrix(dist)
    p_codes, g_codes = label_codes(d, probe_labels, gallery_labels)
    n, m = d.shape
    per_code = np.bincount(g_codes, minlength=int(g_codes.max()) + 1)
    n_gen = int(per_code[p_codes[p_codes >= 0]].sum())
    if n_gen == 0:
        raise ValueError(
            f"no genuine pairs: no probe label occurs in the gallery ({n} probes, e.g. "
            f"{_labels_to_list(probe_labels, 'probe_labels')[:3]!r}); check that both use the same label type"
        )
    if n_gen == n * m:
        raise ValueError("no impostor pairs: every probe and gallery entry is of the same subject")
    genuine = np.empty(n_gen, dtype=d.dtype)
    impostor = np.empty(n * m - n_gen, dtype=d.dtype)
    gi = ii = 0
    for start in range(0, n, _CHUNK):
        block = d[start : start + _CHUNK]
        if not np.isfinite(block).all():
            raise ValueError(f"dist contains NaN or infinite values (in rows {start}..{start + len(block) - 1})")
        same = p_codes[start : start + _CHUNK, None] == g_codes[None, :]
        g, i = block[same], block[~same]
        genuine[gi : gi + g.size], impostor[ii : ii + i.size] = g, i
        gi, ii = gi + g.size, ii + i.size
    genuine.sort()
    impostor.sort()
    return genuine, impostor


def _scores(genuine: Any, impostor: Any) -> tuple[np.ndarray, np.ndarray]:
    return check_scores(genuine, "genuine scores"), check_scores(impostor, "impostor scores")


def error_rates(genuine: Any, impostor: Any, thresholds: Any) -> tuple[np.ndarray, np.ndarray]:
    """FMR and FNMR (ISO/IEC 19795-1) at the given thresholds.

    Args:
        genuine, impostor: 1-D distances of genuine / impostor comparisons (any order), finite, non-empty.
        thresholds: a number or an array of distances; a comparison is a match iff ``distance <= t``.

    Returns:
        ``(fmr, fnmr)``, float64 arrays of the shape of ``thresholds``, fractions in ``[0, 1]``.

    Raises:
        ValueError: a score set is empty, not 1-D or holds NaN / inf.
    """
    gen, imp = _scores(genuine, impostor)
    t = np.asarray(thresholds, dtype=np.float64)
    return accepted(imp, t) / len(imp), 1.0 - accepted(gen, t) / len(gen)


def roc_curve(genuine: Any, impostor: Any) -> dict[str, np.ndarray]:
    """Every operating point of the verification trade-off (ROC and DET), exactly.

    Args:
        genuine, impostor: 1-D distances of genuine / impostor comparisons, finite, non-empty.

    Returns:
        ``{"threshold", "fmr", "fnmr"}``: float64 arrays of one length, in increasing threshold order. The
        first threshold is ``-inf`` (nothing matches: FMR 0, FNMR 1); then one point per distinct observed
        distance ``t`` with FMR(t) and FNMR(t) counting every score equal to ``t`` as a match (ties are
        never split). TAR = 1 - FNMR. Memory is ``O(len(genuine) + len(impostor))``; for plots of large
        sets use :func:`sampled_roc_curve`.

    Raises:
        ValueError: a score set is empty, not 1-D or holds NaN / inf.
    """
    gen, imp = _scores(genuine, impostor)
    t, fmr, fnmr = exact_curve(gen, len(gen), imp)
    return {"threshold": t, "fmr": fmr, "fnmr": fnmr}


def sampled_roc_curve(genuine: Any, impostor: Any, max_points: int = 200) -> dict[str, np.ndarray]:
    """At most ``max_points`` exact operating points of :func:`roc_curve`, log-spaced in FMR, for plots.

    For each FMR level ``f`` (0, and ``max_points - 1`` levels log-spaced from ``1 / N_i`` to 1) the point of
    highest TAR with ``FMR <= f``, as in :func:`tar_at_fmr`; duplicates dropped. Same keys as
    :func:`roc_curve`.

    Raises:
        ValueError: as :func:`roc_curve`; ``max_points < 2``.
    """
    gen, imp = _scores(genuine, impostor)
    t, fmr, fnmr = sampled_curve(gen, len(gen), imp, max_points)
    return {"threshold": t, "fmr": fmr, "fnmr": fnmr}


def equal_error_rate(genuine: Any, impostor: Any) -> tuple[float, float]:
    """Equal error rate (EER, ISO/IEC 19795-1): the rate where FMR = FNMR, and the threshold there.

    FMR and FNMR are step functions of the threshold, so they rarely meet at an observed distance. The EER
    is interpolated linearly between the two bracketing operating points of the exact curve: ``a``, the last
    point with ``FNMR >= FMR``, and ``b``, the next one (``FNMR < FMR``); the rate is where the segment
    ``a -> b`` in the (FMR, FNMR) plane crosses ``FMR = FNMR``, i.e. the error of choosing threshold ``b``
    with probability ``lam`` and ``a`` otherwise. The threshold is ``t_a + lam (t_b - t_a)`` (``t_b`` when
    ``a`` is the no-match start point). See :func:`qgait.evaluation.tradeoff.equal_error`.

    Args:
        genuine, impostor: 1-D distances of genuine / impostor comparisons, finite, non-empty.

    Returns:
        ``(eer, threshold)``: the EER as a fraction in ``[0, 1]`` (0 when the sets are separated: every
        genuine distance below every impostor distance) and the distance threshold.

    Raises:
        ValueError: a score set is empty, not 1-D or holds NaN / inf.
    """
    gen, imp = _scores(genuine, impostor)
    return equal_error(gen, len(gen), imp)


def tar_at_fmr(genuine: Any, impostor: Any, targets: Sequence[float] = FMR_TARGETS) -> list[dict]:
    """TAR (= 1 - FNMR, ISO/IEC 19795-1) at fixed FMR levels, with the thresholds that achieve them.

    For each target the operating point of largest TAR whose FMR ``<= target``, found exactly: at most
    ``k = floor(target * N_i)`` impostor distances may be matched, so the threshold is the largest observed
    distance strictly below the ``(k+1)``-th smallest impostor distance (impostors tied with it are all
    rejected, so the achieved ``fmr`` can be below the target).

    A target is *resolved* only when there are at least ``1 / target`` impostor comparisons (``k >= 1``);
    otherwise the rate cannot be told apart from 0 and ``tar``, ``fmr`` and ``threshold`` are NaN with
    ``"resolved": False``.

    Args:
        genuine, impostor: 1-D distances of genuine / impostor comparisons, finite, non-empty.
        targets: FMR levels, fractions in ``(0, 1]`` (``1e-3``, not ``0.1`` percent).

    Returns:
        One dict per target, in the given order: ``{"fmr_target": float, "tar": float, "fmr": float (the
        achieved FMR, <= fmr_target), "threshold": float (a distance; -inf when nothing can be matched),
        "resolved": bool, "num_impostor": int}``. Rates are fractions in ``[0, 1]``.

    Raises:
        ValueError: a score set is empty, not 1-D or holds NaN / inf; a target is outside ``(0, 1]``.
    """
    targets_t = check_targets(targets, "targets")
    gen, imp = _scores(genuine, impostor)
    out = []
    for target in targets_t:
        row: dict = {"fmr_target": target, "tar": float("nan"), "fmr": float("nan"), "threshold": float("nan")}
        row["resolved"] = allowed_false(target, len(imp)) >= 1
        if row["resolved"]:
            fmr, fnmr, threshold = best_point(gen, len(gen), imp, target)
            row.update(tar=1.0 - fnmr, fmr=fmr, threshold=threshold)
        row["num_impostor"] = len(imp)
        out.append(row)
    return out
