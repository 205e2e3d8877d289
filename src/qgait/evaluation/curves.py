"""Plots of the verification and open-set curves of one or several models (ROC, DET, DIR vs FPIR) to a PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ..atomic import save_figure

__all__ = ["plot_verification_curves"]

# DET axes: the normal-deviate scale cannot show 0 or 1; rates are clipped to [_DET_MIN, 1 - _DET_MIN] and the
# axes span [max(smallest positive rate, _DET_MIN) rounded down to a decade, 0.95].
_DET_MIN = 1e-5
_DET_TICKS = (1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95)


def _rates(curve: Mapping, key: str) -> np.ndarray:
    """A curve's rates as float64 (``None`` from JSON becomes NaN)."""
    return np.array([np.nan if v is None else v for v in curve[key]], dtype=np.float64)


def _det_axis(ax, lo: float, hi: float, which: str) -> None:
    ticks = [t for t in _DET_TICKS if lo <= t <= hi]
    getattr(ax, f"set_{which}ticks")(norm.ppf(ticks))
    getattr(ax, f"set_{which}ticklabels")([f"{100 * t:g}" for t in ticks], fontsize="small")
    getattr(ax, f"set_{which}lim")(norm.ppf(lo), norm.ppf(hi))


def plot_verification_curves(reports: Mapping[str, Mapping], path: str | Path, title: str = "") -> Path:
    """ROC (TAR vs FMR, log FMR axis), DET (FNMR vs FMR on normal-deviate axes, Martin et al. 1997) and, when
    every report has an open-set part, DIR vs FPIR (log FPIR axis), one line per model, saved as a PNG.

    Args:
        reports: model name -> a dict of :func:`~qgait.evaluation.biometric_report.verification_summary` /
            ``verification_report`` (or its JSON read back); its ``roc_curve`` (and ``open_set.curve``) are
            drawn, the EER is given in the legend. Axes are labelled in percent.
        path: output ``.png`` path (parent folders are created).
        title: figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``reports`` is empty or a report lacks ``roc_curve``.
    """
    if not reports:
        raise ValueError("reports is empty: nothing to plot")
    for name, rep in reports.items():
        if not isinstance(rep, Mapping) or "roc_curve" not in rep:
            raise ValueError(f"report {name!r} has no 'roc_curve' (expected a verification_report dict)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    open_set = all(rep.get("open_set") for rep in reports.values())
    fig, axes = plt.subplots(1, 3 if open_set else 2, figsize=(16 if open_set else 11, 4.8))
    roc_ax, det_ax = axes[0], axes[1]
    det_lo = 0.5
    for name, rep in reports.items():
        fmr, fnmr = _rates(rep["roc_curve"], "fmr"), _rates(rep["roc_curve"], "fnmr")
        eer = rep.get("eer")
        label = name if eer is None else f"{name} (EER {100 * eer:.2f}%)"
        pos = fmr > 0  # log axis: FMR = 0 cannot be drawn
        roc_ax.step(fmr[pos], 100 * (1 - fnmr[pos]), where="post", label=label)
        x = np.clip(fmr, _DET_MIN, 1 - _DET_MIN)
        y = np.clip(fnmr, _DET_MIN, 1 - _DET_MIN)
        det_ax.plot(norm.ppf(x), norm.ppf(y), label=label)
        positive = np.concatenate((fmr[fmr > 0], fnmr[fnmr > 0]))
        if positive.size:
            det_lo = min(det_lo, max(float(np.nanmin(positive)), _DET_MIN))
        if open_set:
            cur = rep["open_set"]["curve"]
            fpir, fnir = _rates(cur, "fpir"), _rates(cur, "fnir")
            keep = fpir > 0
            axes[2].step(fpir[keep], 100 * (1 - fnir[keep]), where="post", label=name)
    roc_ax.set(xscale="log", xlabel="FMR", ylabel="TAR = 1 - FNMR (%)", title="ROC", ylim=(0, 100.5))
    lo = 10 ** np.floor(np.log10(det_lo))
    _det_axis(det_ax, lo, 0.95, "x")
    _det_axis(det_ax, lo, 0.95, "y")
    det_ax.plot(norm.ppf([lo, 0.95]), norm.ppf([lo, 0.95]), color="0.8", lw=0.8, zorder=0)  # FMR = FNMR
    det_ax.set(xlabel="FMR (%)", ylabel="FNMR (%)", title="DET")
    if open_set:
        axes[2].set(xscale="log", xlabel="FPIR", ylabel="DIR = 1 - FNIR, rank 1 (%)", title="open-set identification",
                    ylim=(0, 100.5))
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
