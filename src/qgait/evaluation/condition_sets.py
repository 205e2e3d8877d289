"""Cross-view rank-1 over several (gallery conditions, probe conditions) sets, each with its own gallery.

CCPG and SUSTech1K score each probe condition against its own gallery (CASIA-B's :class:`CrossViewProtocol` has
one gallery for all sets), and their sets share conditions (SUSTech1K's ``Overall`` holds every other set's
sequences). Each set is therefore evaluated alone with :func:`~qgait.evaluation.cross_view.evaluate_cross_view`:
for every (probe view, gallery view) pair the rank-1 of the nearest gallery sequence of that view, identical
views left out of the averages, per-probe-view means averaged (see :mod:`qgait.evaluation.cross_view`).
The views are those found among the sequences of all the sets, sorted, as OpenGait does (``view_list =
sorted(np.unique(view))``), one list for every set's table; a pair without probes or gallery is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .cross_view import CrossViewProtocol, evaluate_cross_view

__all__ = ["ConditionSet", "evaluate_condition_sets"]


@dataclass(frozen=True)
class ConditionSet:
    """One probe set: its name, the gallery's conditions and the probes' conditions (exact folder names, or
    substrings of them when evaluated with ``match="substring"``)."""

    name: str
    gallery: tuple[str, ...]
    probe: tuple[str, ...]


def _matching(found: Sequence[str], patterns: Sequence[str], match: str) -> list[str]:
    if match == "exact":
        return sorted(c for c in found if c in patterns)
    return sorted(c for c in found if any(p in c for p in patterns))


def evaluate_condition_sets(embeddings, subjects: Sequence, conditions: Sequence[str], views: Sequence[str],
                            sets: Sequence[ConditionSet], protocol: str, match: str = "exact",
                            metric: str = "euc") -> dict:
    """Rank-1 (percent) of each set against its own gallery, identical views excluded.

    Args:
        embeddings: ``[N, c, p]`` (tensor or numpy).
        subjects, conditions, views: ``N`` labels (views already normalised by the caller).
        sets: the probe sets, in report order.
        protocol: name for the report (e.g. ``"CCPG"``).
        match: ``"exact"`` (a condition is the set's if it equals one of its names) or ``"substring"`` (if it
            contains one; OpenGait's SUSTech1K rule). A condition matching the gallery is never a probe.
        metric: ``"euc"`` or ``"cos"``.

    Returns:
        ``{"protocol": str, "metric": str, "exclude_identical_view": True, "views": [view, ...], "sets": {set:
        {"rank-1", "per_view", "table", "gallery_conditions", "probe_conditions", "num_probes", "skipped_pairs",
        ...}}, "mean": float, "sets_in_mean": [...], "skipped_sets": {set: reason}}``: each set's entry is
        :func:`evaluate_cross_view`'s set entry (``table`` indexed by ``views``) plus the conditions it used;
        the layout of a cross-view result, so :func:`qgait.evaluation.report.format_cross_view` prints it. A set with no
        gallery or no probe sequence in the data is listed in ``skipped_sets`` and left out of ``"mean"``.

    Raises:
        ValueError: ``match`` unknown; no set could be evaluated (the conditions found are listed).
    """
    if match not in ("exact", "substring"):
        raise ValueError(f"match must be 'exact' or 'substring', got {match!r}")
    cond = [str(c) for c in conditions]
    view = [str(v) for v in views]
    found = sorted(set(cond))
    out_sets: dict = {}
    skipped: dict = {}
    chosen = {}
    for cs in sets:
        gallery = _matching(found, cs.gallery, match)
        chosen[cs.name] = (gallery, [c for c in _matching(found, cs.probe, match) if c not in gallery])
    used_all = {c for g, p in chosen.values() for c in g + p}
    all_views = tuple(sorted({v for c, v in zip(cond, view) if c in used_all}))
    for cs in sets:
        gallery, probe = chosen[cs.name]
        if not gallery or not probe:
            skipped[cs.name] = f"no {'gallery' if not gallery else 'probe'} sequence in the data"
            continue
        proto = CrossViewProtocol(f"{protocol} {cs.name}", tuple(gallery), {cs.name: tuple(probe)}, all_views)
        res = evaluate_cross_view(embeddings, subjects, cond, view, proto, metric=metric)
        entry = dict(res["sets"][cs.name])
        entry.update(gallery_conditions=gallery, probe_conditions=probe)
        if entry["rank-1"] is None:
            skipped[cs.name] = "no (probe view, gallery view) pair could be evaluated"
            continue
        out_sets[cs.name] = entry
    if not out_sets:
        raise ValueError(f"{protocol}: no probe set could be evaluated ({skipped}); conditions found: {found[:20]}")
    in_mean = list(out_sets)
    return {
        "protocol": protocol,
        "metric": metric,
        "exclude_identical_view": True,
        "views": list(all_views),
        "sets": out_sets,
        "mean": math.fsum(out_sets[s]["rank-1"] for s in in_mean) / len(in_mean),
        "sets_in_mean": in_mean,
        "skipped_sets": skipped,
    }
