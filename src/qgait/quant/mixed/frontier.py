"""Pareto frontier of cost (summed ``Omega``) against one metric (size, BOPs), traced through the integer program
(LCPAQ, arXiv 2402.17706, the adaptive mixed-precision module; HAWQ-V2, arXiv 1911.03852, Fig. 4), and
its JSON and PNG.

Exact walk (default): start at the unconstrained optimum (metric ``m_0``), then repeatedly solve with the budget
just below the last solution's metric, ``m_i - step``, ``step = rel_step * max(1, |m_i|)``, until the smallest
feasible value. Each solution is optimal for its budget and no allocation with a metric in ``(m_{i+1}, m_i)``
can beat it, so the walk visits every corner of the frontier whose metric differs from its neighbour's by more than
``step`` (sizes in bits and BOPs are integers, so a relative step of 1e-7 misses nothing below 10^7 bits).
Sweep (``points=N``): N evenly spaced budgets, a sample of the frontier. Either way, repeats and points beaten on
both axes are removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...atomic import save_figure
from .ilp import Allocation, Option, allocate, smallest_budget
from .ties import Tie

__all__ = ["pareto_frontier", "frontier_json", "plot_frontier"]


def pareto_frontier(options: Mapping[str, Sequence[Option]], metric: str, ties: Sequence[Tie] = (), *,
                    budgets: Mapping[str, float] | None = None, points: int | None = None, rel_step: float = 1e-7,
                    max_points: int = 2000) -> list[Allocation]:
    """Allocations on the frontier of ``cost`` against ``metric``, by increasing ``metric`` (module docstring).

    Args:
        options, ties: as :func:`allocate`.
        metric: the budget's metric (e.g. ``"size_bits"``).
        budgets: other budgets held fixed (a budget on ``metric`` itself is ignored).
        points: ``None`` (default): the exact walk; an int >= 2: that many evenly spaced budgets.
        rel_step: the walk's step below the last metric, relative (> 0).
        max_points: the walk stops with a ``RuntimeError`` beyond this many solutions.

    Raises:
        ValueError: ``points < 2``, ``rel_step <= 0``; as :func:`allocate` (other budgets no allocation meets).
        RuntimeError: the walk exceeded ``max_points``.
    """
    if points is not None and points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if not rel_step > 0:
        raise ValueError(f"rel_step must be > 0, got {rel_step}")
    others = {k: float(v) for k, v in (budgets or {}).items() if k != metric}
    lo = smallest_budget(options, metric, ties, others)
    top = allocate(options, others, ties)
    found = [top]
    if points is not None:
        for b in np.linspace(lo, max(top.metrics[metric], lo), points):
            found.append(allocate(options, {**others, metric: float(b)}, ties))
    else:
        m = top.metrics[metric]
        while m - rel_step * max(1.0, abs(m)) >= lo:
            a = allocate(options, {**others, metric: m - rel_step * max(1.0, abs(m))}, ties)
            if a.metrics[metric] >= m:  # cannot happen with an exact solver; guards against a loop
                break
            found.append(a)
            m = a.metrics[metric]
            if len(found) > max_points:
                raise RuntimeError(f"pareto_frontier: more than {max_points} points; raise max_points or use points")
    seen: dict[tuple, Allocation] = {}
    for a in found:
        seen.setdefault(tuple(a.bits().items()), a)
    ordered = sorted(seen.values(), key=lambda a: (a.metrics[metric], a.cost))
    front: list[Allocation] = []
    for a in ordered:
        if not front or a.cost < front[-1].cost - 1e-12 * max(1.0, abs(front[-1].cost)):
            front.append(a)
    return front


def frontier_json(frontier: Sequence[Allocation], metric: str) -> dict[str, Any]:
    """JSON-ready frontier, compact: ``{"metric", "layers": [names], "points": [{"budget", "cost", "metrics",
    "bits": ["W3A4", "W8A-", ...]}, ...]}`` (``bits`` in the order of ``layers``; ``A-``: exact input)."""
    names = list(frontier[0].choice) if frontier else []
    return {"metric": metric, "layers": names,
            "points": [{"budget": a.budgets.get(metric), "cost": a.cost,
                        "metrics": {k: int(v) if float(v).is_integer() else v for k, v in a.metrics.items()},
                        "bits": [f"W{a.choice[n].weight_bits}A{a.choice[n].act_bits or '-'}" for n in names]}
                       for a in frontier]}


def plot_frontier(path: str | Path, frontiers: Mapping[str, Sequence[Allocation]],
                  references: Mapping[str, Allocation] | None = None, chosen: Mapping[str, Allocation] | None = None,
                  scales: Mapping[str, tuple[float, str]] | None = None, title: str | None = None) -> Path:
    """One panel per metric: cost (log scale) against the metric, the frontier as a step line, ``references``
    (e.g. uniform W4A4) as labelled crosses and ``chosen`` allocations as stars. Matplotlib with the Agg backend.

    Args:
        path: the PNG to write (parent folders created).
        frontiers: ``{metric: frontier}``.
        scales: ``{metric: (divisor, axis label)}``, e.g. ``{"size_bits": (8 * 1024, "weights (KiB)")}``.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = dict(scales or {})
    metrics = list(frontiers)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        div, label = scales.get(m, (1.0, m))
        pts = frontiers[m]
        xs = [a.metrics[m] / div for a in pts]
        ys = [max(a.cost, 1e-30) for a in pts]
        ax.step(xs, ys, where="post", color="tab:blue", marker="o", ms=3, label="frontier (ILP)")
        for name, a in (references or {}).items():
            ax.plot(a.metrics[m] / div, max(a.cost, 1e-30), "x", ms=8)
            ax.annotate(name, (a.metrics[m] / div, max(a.cost, 1e-30)), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        for name, a in (chosen or {}).items():
            ax.plot(a.metrics[m] / div, max(a.cost, 1e-30), "*", ms=12, label=name)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("summed Omega (Hessian-weighted quantization error)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
