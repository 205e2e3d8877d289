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
0.01 %). OpenGait's person re-identification figures (rank-1 / mAP / mINP over all views) are not computed
here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .condition_sets import ConditionSet, evaluate_condition_sets

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
    """CCPG CL / UP / DN / BG rank-1 (percent, identical views excluded) and their mean.

    Args:
        embeddings: ``[N, c, p]``; subjects / conditions / views: ``N`` folder names (views as in the data,
            normalised here with :func:`ccpg_view`).

    Returns / Raises:
        as :func:`~qgait.evaluation.condition_sets.evaluate_condition_sets` with ``protocol="CCPG"``.
    """
    return evaluate_condition_sets(embeddings, subjects, conditions, [ccpg_view(v) for v in views], CCPG_SETS,
                                   protocol="CCPG", match="exact", metric=metric)
