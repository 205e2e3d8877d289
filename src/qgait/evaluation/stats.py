"""Statistics for comparing (quantized) gait models: test-subject bootstrap and seed statistics.

Two sources of variation are separated:

* **the test subjects** (which people happen to be in the test split): estimated by a paired bootstrap
  over the probe subjects of the cross-view protocol, :func:`subject_bootstrap`, from the per-subject
  counts that :func:`~qgait.evaluation.cross_view.evaluate_cross_view` stores in ``result["per_subject"]``;
* **the training seed** (one run per seed): :func:`seed_stats` and :func:`paired_difference` over the
  runs' headline numbers.

All accuracies are rank-1 in percent (0-100).

Bootstrap by subject, not by sequence: the sequences of one subject are strongly correlated (same person,
same clothes, same session), so resampling sequences would understate the variance; the resampling unit
in biometrics is the person (Bolle, Ratha & Pankanti, "Error analysis of pattern recognition systems:
the subsets bootstrap", Computer Vision and Image Understanding 93(1), 2004). Only the *probe* subjects
are resampled; the gallery is held fixed (every draw is matched against the full gallery, as the
per-subject counts were computed once on the real data), so the interval covers the variation of the
probe population given this gallery, not that of a new gallery. The interval is the percentile bootstrap
interval (Efron & Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993, ch. 13).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as _sps

__all__ = ["rank1_from_per_subject", "subject_bootstrap", "seed_stats", "paired_difference"]


# --------------------------------------------------------------------------------------------------------
# per-subject counts -> rank-1


def _per_subject_of(run: Mapping, what: str) -> Mapping:
    """The ``per_subject`` entry of a cross-view result, or ``run`` itself if it is one."""
    if not isinstance(run, Mapping):
        raise ValueError(
            f"{what} must be a cross-view result dict or its 'per_subject' entry, got {type(run).__name__}"
        )
    if "per_subject" in run:
        run = run["per_subject"]
        if not isinstance(run, Mapping):
            raise ValueError(f"{what}['per_subject'] must be a dict, got {type(run).__name__}")
    missing = [k for k in ("subjects", "views", "sets") if k not in run]
    if missing:
        raise ValueError(
            f"{what} has no per-subject counts (missing keys {missing}); re-evaluate with a version of "
            "evaluate_cross_view that stores result['per_subject']"
        )
    return run


def _counts(per_subject: Mapping, what: str = "per_subject") -> tuple[list, list, bool, dict]:
    """Validate ``per_subject``: ``(subjects, views, exclude_identical_view, {set: (hits, probes)})`` with
    ``hits`` / ``probes`` float64 arrays ``[n_subjects, n_views, n_views]``."""
    per_subject = _per_subject_of(per_subject, what)
    subjects = list(per_subject["subjects"])
    views = [str(v) for v in per_subject["views"]]
    exclude = bool(per_subject.get("exclude_identical_view", True))
    n_s, n_v = len(subjects), len(views)
    if n_s == 0 or n_v == 0:
        raise ValueError(f"{what} has {n_s} subjects and {n_v} views; both must be at least 1")
    if not isinstance(per_subject["sets"], Mapping) or not per_subject["sets"]:
        raise ValueError(f"{what}['sets'] must be a non-empty dict {{set: {{'hits', 'probes'}}}}")
    sets = {}
    for name, entry in per_subject["sets"].items():
        try:
            hits = np.asarray(entry["hits"], dtype=np.float64)
            probes = np.asarray(entry["probes"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{what}['sets'][{name!r}] must hold numeric 'hits' and 'probes'") from exc
        for arr, key in ((hits, "hits"), (probes, "probes")):
            if arr.shape != (n_s, n_v, n_v):
                raise ValueError(
                    f"{what}['sets'][{name!r}][{key!r}] has shape {arr.shape}, expected "
                    f"[n_subjects, n_views, n_views] = {(n_s, n_v, n_v)}"
                )
            if not np.isfinite(arr).all() or (arr < 0).any():
                raise ValueError(f"{what}['sets'][{name!r}][{key!r}] must be finite and non-negative")
        if (hits > probes).any():
            raise ValueError(f"{what}['sets'][{name!r}] has more hits than probes for some cell")
        sets[str(name)] = (hits, probes)
    return subjects, views, exclude, sets


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring NaN; NaN where every value is NaN (no warning)."""
    valid = ~np.isnan(x)
    count = valid.sum(axis=axis)
    total = np.where(valid, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _rank1_batch(sets: dict, weights: np.ndarray, exclude: bool) -> dict[str, np.ndarray]:
    """Rank-1 (percent) of every set and ``"mean"`` for each row of ``weights`` ``[B, n_subjects]``:
    ``{set: [B], "mean": [B]}``, NaN where the protocol gives ``None``."""
    out: dict[str, np.ndarray] = {}
    for name, (hits, probes) in sets.items():
        n_s, n_v, _ = hits.shape
        h = (weights @ hits.reshape(n_s, n_v * n_v)).reshape(-1, n_v, n_v)
        p = (weights @ probes.reshape(n_s, n_v * n_v)).reshape(-1, n_v, n_v)
        with np.errstate(invalid="ignore", divide="ignore"):
            pair = np.where(p > 0, 100.0 * h / p, np.nan)  # the same operation order as evaluate_cross_view
        if exclude:
            pair[:, np.arange(n_v), np.arange(n_v)] = np.nan
        out[name] = _nanmean(_nanmean(pair, axis=2), axis=1)  # per probe view, then over probe views
    out["mean"] = _nanmean(np.stack(list(out.values()), axis=1), axis=1)
    return out


def _none_if_nan(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def rank1_from_per_subject(per_subject: Mapping, weights: np.ndarray | Sequence[float] | None = None) -> dict:
    """Rank-1 (percent) of every probe set and their mean, from per-subject counts with subject weights.

    Follows the protocol of :func:`~qgait.evaluation.cross_view.evaluate_cross_view` exactly, with each
    subject's probes counted ``w_i`` times:

    * pair ``(a, b)``: ``100 * sum_i w_i hits[i][a][b] / sum_i w_i probes[i][a][b]``; a pair whose weighted
      probe count is 0 is skipped (left out of the averages, not counted as 0);
    * per probe view ``a``: mean over the non-skipped pairs ``(a, b)``, without ``b == a`` when
      ``per_subject["exclude_identical_view"]`` (default True when the key is absent); ``None`` if none;
    * set rank-1: mean of the non-``None`` per-probe-view values (``None`` if none);
    * ``"mean"``: mean of the non-``None`` sets' rank-1 (``None`` if none).

    With ``weights=None`` the values equal ``result["sets"][set]["rank-1"]`` and ``result["mean"]`` of the
    result the counts come from (to rounding, ~1e-13).

    Args:
        per_subject: ``result["per_subject"]`` of a cross-view result, or the result itself.
        weights: ``[n_subjects]`` non-negative weights in the order of ``per_subject["subjects"]``
            (``weights[i]`` = how many times subject ``i`` is drawn in a bootstrap resample); ``None`` = all
            ones.

    Returns:
        ``{set: float | None, ..., "mean": float | None}`` in the sets' order, rank-1 in percent.

    Raises:
        ValueError: ``per_subject`` malformed (missing keys, counts not ``[n_subjects, n_views, n_views]``,
            negative, or more hits than probes); ``weights`` of the wrong length, negative or not finite.
    """
    subjects, _, exclude, sets = _counts(per_subject)
    if weights is None:
        w = np.ones((1, len(subjects)))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(subjects),):
            raise ValueError(f"weights must have shape ({len(subjects)},) (one per subject), got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative")
        w = w[None, :]
    values = _rank1_batch(sets, w, exclude)
    return {name: _none_if_nan(v[0]) for name, v in values.items()}


# --------------------------------------------------------------------------------------------------------
# paired subject bootstrap


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def _bootstrap_draws(
    runs_a: Sequence, runs_b: Sequence, n_boot: int, seed: int
) -> tuple[dict, dict, dict, dict, np.ndarray]:
    """The resampling behind :func:`subject_bootstrap`.

    Returns ``(point_a, point_b, boot_a, boot_b, weights)``: the mean over runs of the full-data rank-1
    (``{set or "mean": float (NaN if None)}``), the same per draw (``{...: [n_boot]}``) and the multinomial
    weight matrix ``[n_boot, n_subjects]``.
    """
    if isinstance(runs_a, Mapping) or isinstance(runs_b, Mapping):
        raise ValueError("runs_a and runs_b must be lists of cross-view results (one per seed), not a single dict")
    runs_a, runs_b = list(runs_a), list(runs_b)
    if not runs_a or not runs_b:
        raise ValueError(f"runs_a and runs_b must not be empty (got {len(runs_a)} and {len(runs_b)} runs)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    parsed = [_counts(r, f"runs_a[{i}]") for i, r in enumerate(runs_a)]
    parsed += [_counts(r, f"runs_b[{i}]") for i, r in enumerate(runs_b)]
    subjects, views, exclude, sets0 = parsed[0]
    labels = [f"runs_a[{i}]" for i in range(len(runs_a))] + [f"runs_b[{i}]" for i in range(len(runs_b))]
    for label, (subj, vw, exc, sets) in zip(labels[1:], parsed[1:]):
        if subj != subjects:
            raise ValueError(
                f"{label} has a different probe-subject list than runs_a[0] ({len(subj)} vs {len(subjects)} "
                "subjects): a paired bootstrap needs every run evaluated on the same test subjects"
            )
        if vw != views or exc != exclude or list(sets) != list(sets0):
            raise ValueError(
                f"{label} differs from runs_a[0] in its views, probe sets or exclude_identical_view: "
                "the runs must come from the same protocol"
            )
    rng = np.random.default_rng(seed)
    n_s = len(subjects)
    weights = rng.multinomial(n_s, np.full(n_s, 1.0 / n_s), size=int(n_boot)).astype(np.float64)
    ones = np.ones((1, n_s))

    def mean_over_runs(group: list, w: np.ndarray) -> dict:
        values = [_rank1_batch(sets, w, exc) for (_, _, exc, sets) in group]
        return {k: np.mean([v[k] for v in values], axis=0) for k in values[0]}

    group_a, group_b = parsed[: len(runs_a)], parsed[len(runs_a) :]
    point_a = {k: float(v[0]) for k, v in mean_over_runs(group_a, ones).items()}
    point_b = {k: float(v[0]) for k, v in mean_over_runs(group_b, ones).items()}
    return point_a, point_b, mean_over_runs(group_a, weights), mean_over_runs(group_b, weights), weights


def subject_bootstrap(
    runs_a: Sequence[Mapping], runs_b: Sequence[Mapping], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Paired test-subject bootstrap of the rank-1 difference ``mean_over_runs(b) - mean_over_runs(a)``.

    What is resampled: the **probe subjects** (``per_subject["subjects"]``), with replacement, ``n_subjects``
    draws per resample (Bolle et al. 2004, "the subsets bootstrap": the person is the resampling unit).
    Each draw is a multinomial count vector ``w`` (``w_i`` = times subject ``i`` is drawn); every probe
    sequence of subject ``i`` then counts ``w_i`` times in every (probe view, gallery view) pair, and the
    rank-1 is recomputed with the protocol's averaging (:func:`rank1_from_per_subject`). The **gallery is
    fixed**: the nearest-neighbour matches are those of the real evaluation, so only the probe population
    varies. The draw is **paired**: the same ``w`` is used for every run of ``runs_a`` and ``runs_b``
    (several seeds of each model), so the subject-to-subject variation common to both models cancels.

    For every draw ``k`` and every set (and ``"mean"``): ``d_k = mean_j rank1(b_j; w_k) - mean_j
    rank1(a_j; w_k)``. The point estimate ``diff`` is the same with all weights 1 (the real data); the
    interval is the percentile interval ``[q_{(1-level)/2}, q_{(1+level)/2}]`` of the ``d_k`` (Efron &
    Tibshirani 1993, ch. 13; numpy's linear interpolation between order statistics). Draws in which a set
    has no evaluable pair (possible only when few subjects carry a view) are left out (``n_valid``).
    The computation is vectorised: one ``[n_boot, n_subjects] @ [n_subjects, n_views**2]`` product per
    run and set.

    Args:
        runs_a: cross-view results of model A (one per seed), or their ``per_subject`` entries.
        runs_b: the same for model B.
        n_boot: number of bootstrap resamples.
        seed: seed of the ``numpy.random.default_rng`` drawing the resamples.
        level: confidence level of the interval, in (0, 1).

    Returns:
        ``{"mean": entry, set: entry, ...}`` (``"mean"`` first, then the sets in protocol order), each entry
        ``{"diff": float, "ci_low": float, "ci_high": float, "level": float, "n_boot": int, "n_valid": int,
        "boot_se": float, "a": float, "b": float}``: differences in rank-1 percentage points, ``a`` / ``b``
        the mean over runs of each model's full-data rank-1 (percent), ``boot_se`` the standard deviation
        of the bootstrap differences. All values except ``level`` / ``n_boot`` / ``n_valid`` are ``None``
        for a set without rank-1 in some run (or without a valid draw).

    Raises:
        ValueError: an empty run list; a run without per-subject counts or with malformed ones; runs with
            different probe-subject lists, views, probe sets or ``exclude_identical_view``; ``n_boot`` not a
            positive integer; ``level`` not in (0, 1).
    """
    level = _check_level(level)
    point_a, point_b, boot_a, boot_b, _ = _bootstrap_draws(runs_a, runs_b, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    out: dict = {}
    for key in ["mean"] + [k for k in point_a if k != "mean"]:
        d = boot_b[key] - boot_a[key]
        d = d[np.isfinite(d)]
        entry = {"diff": None, "ci_low": None, "ci_high": None, "level": level, "n_boot": int(n_boot),
                 "n_valid": int(d.size), "boot_se": None,
                 "a": _none_if_nan(point_a[key]), "b": _none_if_nan(point_b[key])}
        if entry["a"] is not None and entry["b"] is not None and d.size:
            low, high = np.percentile(d, [100.0 * alpha, 100.0 * (1.0 - alpha)])
            entry.update(
                diff=entry["b"] - entry["a"],
                ci_low=float(low),
                ci_high=float(high),
                boot_se=float(d.std(ddof=1)) if d.size > 1 else None,
            )
        out[key] = entry
    return out


# --------------------------------------------------------------------------------------------------------
# seeds


def _floats(values: Sequence[float], name: str) -> np.ndarray:
    if isinstance(values, (str, bytes, Mapping)):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        arr = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def seed_stats(values: Sequence[float]) -> dict:
    """Summary of one quantity over runs (seeds), e.g. the mean rank-1 (percent) of each seed.

    Returns:
        ``{"mean": float, "std": float | None, "n": int, "min": float, "max": float}``; ``std`` is the
        sample standard deviation ``sqrt(sum (x - mean)^2 / (n - 1))`` (``ddof=1``), ``None`` for ``n = 1``.
        Same unit as ``values``.

    Raises:
        ValueError: empty, non-numeric, NaN or infinite ``values``.
    """
    x = _floats(values, "values")
    if x.size == 0:
        raise ValueError("values must not be empty")
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        "n": int(x.size),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Per-seed paired difference ``d_i = b_i - a_i`` (e.g. rank-1 of model B minus model A trained with the
    same seed ``i``), with a Student-t interval over seeds.

    Formulas: ``mean = (1/n) sum d_i``; ``std = sqrt(sum (d_i - mean)^2 / (n - 1))``; ``se = std / sqrt(n)``;
    CI ``mean -/+ t_{(1+level)/2, n-1} * se`` (``scipy.stats.t.ppf``); ``beyond_2se = |mean| > 2 se``.
    This captures the seed-to-seed variation only (the test subjects are fixed); see
    :func:`subject_bootstrap` for the test-subject variation.

    Returns:
        ``{"mean": float, "std": float | None, "se": float | None, "ci_low": float | None,
        "ci_high": float | None, "level": float, "n": int, "beyond_2se": bool}`` in the unit of the inputs
        (percentage points for rank-1). For ``n = 1``: ``std``, ``se``, ``ci_low``, ``ci_high`` are ``None``
        and ``beyond_2se`` is False (no spread to compare with). With ``se = 0`` (identical differences) the
        interval is ``[mean, mean]`` and ``beyond_2se`` is ``mean != 0``.

    Raises:
        ValueError: ``a`` and ``b`` of different lengths, empty, non-numeric, NaN or infinite; ``level`` not
            in (0, 1).
    """
    level = _check_level(level)
    xa, xb = _floats(a, "a"), _floats(b, "b")
    if xa.size != xb.size:
        raise ValueError(f"a and b must have the same length (one value per seed), got {xa.size} and {xb.size}")
    if xa.size < 1:
        raise ValueError("a and b must not be empty")
    d = xb - xa
    n = int(d.size)
    mean = float(d.mean())
    out = {"mean": mean, "std": None, "se": None, "ci_low": None, "ci_high": None, "level": level, "n": n,
           "beyond_2se": False}
    if n > 1:
        std = float(d.std(ddof=1))
        se = std / math.sqrt(n)
        half = float(_sps.t.ppf(0.5 + level / 2.0, n - 1)) * se
        out.update(std=std, se=se, ci_low=mean - half, ci_high=mean + half, beyond_2se=bool(abs(mean) > 2.0 * se))
    return out
