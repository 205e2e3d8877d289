"""CCPG protocol: cross-view rank-1 under its four clothing-change conditions CL, UP, DN, BG.

CCPG (Li et al., "An In-Depth Exploration of Person Re-Identification and Gait Recognition in Cloth-Changing
Conditions", CVPR 2023). Conditions are the sequence-type folders ``U<a>_D<b>[_BG]`` (upper clothes ``a``,
lower clothes ``b``, ``_BG`` with a bag); the view is the part of the view folder before the first ``_``. The
sets follow OpenGait's ``evaluate_CCPG`` (``opengait/evaluation/evaluator.py``), probe vs gallery:

* CL (whole outfit changed): ``U0_D0_BG``, ``U0_D0`` vs ``U1_D1``, ``U2_D2``, ``U3_D3``;
* UP (upper clothes changed): ``U3_D3`` vs ``U0_D3``;
* DN (lower clothes changed): ``U1_D0`` vs ``U1_D1``;
* BG (bag added): ``U0_D0_BG`` vs ``U0_D0``.

Reported: the gait-recognition figure, rank-1 per (probe view, gallery view) with identical views excluded
(OpenGait's "Rank-1 (Exclude identical-view cases)"), computed unrounded (OpenGait rounds each pair to
0.01 %); and the person re-identification figures (``"reid"``): per set, every probe ranked against the set's
whole gallery of all views, leaving out the gallery sequences of its own subject seen from its own view (the
Market-1501 same-camera rule of OpenGait's ``evaluate_many``), rank-1, mAP and mINP
(:func:`~qgait.evaluation.retrieval.evaluate_retrieval`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .condition_sets import ConditionSet, evaluate_condition_sets
from .retrieval import evaluate_retrieval

__all__ = ["CCPG_SETS", "ccpg_view", "evaluate_ccpg"]

CCPG_SETS = (
    ConditionSet("CL", gallery=("U1_D1", "U2_D2", "U3_D3"), probe=("U0_D0_BG", "U0_D0")),
    ConditionSet("UP", gallery=("U0_D3",), probe=("U3_D3",)),
    ConditionSet("DN", gallery=("U1_D1",), probe=("U1_D0",)),
    ConditionSet("BG", gallery=("U0_D0",), probe=("U0_D0_BG",)),
)


def ccpg_view(view: str) -> str:
    """The view a CCPG view folder stands for: its part before the first ``_`` (``"03_2"`` -> ``"03"``)."""
    return str(view).split("_")[0]


def evaluate_ccpg(embeddings, subjects: Sequence, conditions: Sequence[str], views: Sequence[str],
                  metric: str = "euc") -> dict:
    """CCPG CL / UP / DN / BG rank-1 (percent, identical views excluded) and their mean, plus the person
    re-identification figures per set.

    Args:
        embeddings: ``[N, c, p]``; subjects / conditions / views: ``N`` folder names (views as in the data,
            normalised here with :func:`ccpg_view`).

    Returns:
        as :func:`~qgait.evaluation.condition_sets.evaluate_condition_sets` with ``protocol="CCPG"``, plus
        ``"reid": {set: {"rank-1", "mAP", "mINP", "num_probes", "num_skipped"}}`` (percent) for the evaluated sets.

    Raises:
        as :func:`~qgait.evaluation.condition_sets.evaluate_condition_sets`.
    """
    norm_views = [ccpg_view(v) for v in views]
    out = evaluate_condition_sets(embeddings, subjects, conditions, norm_views, CCPG_SETS,
                                  protocol="CCPG", match="exact", metric=metric)
    cond = np.array([str(c) for c in conditions])
    subj = [str(x) for x in subjects]
    emb = embeddings
    out["reid"] = {}
    for cs in CCPG_SETS:
        if cs.name not in out["sets"]:
            continue
        g = np.flatnonzero(np.isin(cond, out["sets"][cs.name]["gallery_conditions"]))
        p = np.flatnonzero(np.isin(cond, out["sets"][cs.name]["probe_conditions"]))
        r = evaluate_retrieval(emb[p], [subj[i] for i in p], emb[g], [subj[i] for i in g], metric=metric,
                               ranks=(1,), probe_views=[norm_views[i] for i in p],
                               gallery_views=[norm_views[i] for i in g])
        out["reid"][cs.name] = {k: r[k] for k in ("rank-1", "mAP", "mINP", "num_probes", "num_skipped")}
    return out
