"""Table cells shared by the studies' scripts (``lowbit.py``, ``distill_study.py``): the paired difference of two
rows of evaluation results, one result per seed."""

from __future__ import annotations

SETS = ("NM", "BG", "CL")


def paired_cells(base: list[dict], row: list[dict], n_boot: int = 2000) -> dict[str, str | int]:
    """``row - base``, the two lists aligned by seed (evaluation results with ``sets`` and ``mean``).

    Returns:
        ``{"n", "diff"`` (mean of the per-seed differences +- its standard error, marked when beyond 2 se),
        ``"ci"`` (test-subject bootstrap 95% CI, :func:`qgait.evaluation.stats.subject_bootstrap`),
        ``"sets"`` (the mean NM / BG / CL differences)``}``.

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    from qgait.evaluation.stats import paired_difference, subject_bootstrap

    if not base or len(base) != len(row):
        raise ValueError(f"paired_cells: {len(base)} base and {len(row)} row results, one per seed needed")
    d = paired_difference([r["mean"] for r in base], [r["mean"] for r in row])
    diff = f"{d['mean']:+.2f}" + ("" if d["se"] is None else f" +- {d['se']:.2f}")
    if d.get("beyond_2se"):
        diff += " **(> 2 se)**"
    ci = subject_bootstrap(base, row, n_boot=n_boot)["mean"]
    sets = " / ".join(f"{sum(y['sets'][k]['rank-1'] - x['sets'][k]['rank-1'] for x, y in zip(base, row)) / len(base):+.2f}"
                      for k in SETS)
    return {"n": len(base), "diff": diff, "ci": f"[{ci['ci_low']:+.2f}, {ci['ci_high']:+.2f}]", "sets": sets}
