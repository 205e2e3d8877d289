"""SUSTech1K protocol: cross-view rank-1 per condition (Normal, Bag, Clothing, Carrying, Umbrella, Uniform,
Occlusion, Night) and Overall.

SUSTech1K (Shen et al., "LidarGait: Benchmarking 3D Gait Recognition with Point Clouds", CVPR 2023). Sequence
types are folders such as ``00-nm`` or ``02-bg``; following OpenGait's ``single_view_gallery_evaluation`` for
SUSTech1K (``opengait/evaluation/evaluator.py``), the gallery is every sequence type containing ``00-nm`` and
each probe set every type containing its key: Normal ``01-nm``, Bag ``bg``, Clothing ``cl``, Carrying ``cr``,
Umbrella ``ub``, Uniform ``uf``, Occlusion ``oc``, Night ``nt``; Overall ``01``, ``02``, ``03``, ``04`` (a type
that matches the gallery is never a probe). Views are those present, sorted; rank-1 per (probe view, gallery
view) pair with identical views excluded. OpenGait also prints rank-5; only rank-1 is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .condition_sets import ConditionSet, evaluate_condition_sets

__all__ = ["SUSTECH1K_SETS", "evaluate_sustech1k"]

_GALLERY = ("00-nm",)
SUSTECH1K_SETS = tuple(
    ConditionSet(name, gallery=_GALLERY, probe=keys)
    for name, keys in (
        ("Normal", ("01-nm",)), ("Bag", ("bg",)), ("Clothing", ("cl",)), ("Carrying", ("cr",)),
        ("Umbrella", ("ub",)), ("Uniform", ("uf",)), ("Occlusion", ("oc",)), ("Night", ("nt",)),
        ("Overall", ("01", "02", "03", "04")),
    )
)


def evaluate_sustech1k(embeddings, subjects: Sequence, conditions: Sequence[str], views: Sequence[str],
                       metric: str = "euc") -> dict:
    """SUSTech1K rank-1 per condition set and Overall (percent, identical views excluded).

    Returns / Raises:
        as :func:`~qgait.evaluation.condition_sets.evaluate_condition_sets` with ``protocol="SUSTech1K"``
        (``"mean"`` there averages the sets evaluated, Overall included; the published figure is each set's).
    """
    return evaluate_condition_sets(embeddings, subjects, conditions, views, SUSTECH1K_SETS,
                                   protocol="SUSTech1K", match="substring", metric=metric)
