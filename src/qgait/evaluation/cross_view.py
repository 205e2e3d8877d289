"""Single-view-gallery cross-view evaluation (CASIA-B, OU-MVLP).

Protocol (OpenGait convention): the gallery holds the sequences of the protocol's gallery conditions
(CASIA-B: nm-01..04), each probe set the sequences of its conditions (NM: nm-05..06, BG: bg-01..02,
CL: cl-01..02). For every probe set and every (probe view ``a``, gallery view ``b``) pair, each probe of
view ``a`` is matched to its nearest gallery sequence *among the gallery sequences of view* ``b``; the
pair's rank-1 is the percentage of probes whose nearest sequence has the probe's subject. This gives a
``[n_views x n_views]`` table (rows probe view, columns gallery view).

Averaging:

* per probe view: mean over gallery views, excluding the identical view (the diagonal) when
  ``protocol.exclude_identical_view`` (the default, as in the published numbers);
* the set's rank-1: mean of the per-probe-view values;
* ``"mean"``: mean of the sets' rank-1.

Details that are conventions, not accidents:

* The table **stores** the diagonal values (``"table_includes_diagonal": True``); they are only left out
  of the averages (``"diagonal_excluded": True``).
* A (probe view, gallery view) pair without probe sequences or without gallery sequences (e.g. a view
  missing for some data) is **skipped**: ``None`` in the table (JSON ``null``), listed in
  ``"skipped_pairs"``, and left out of the averages (not counted as 0). A probe view with no evaluated
  pair has ``per_view`` ``None`` and is left out of the set's mean; a set with no probe sequences has
  ``"rank-1": None`` and is left out of ``"mean"`` (``"sets_in_mean"`` lists the sets averaged).
* A probe whose subject has no gallery sequence in gallery view ``b`` is handled as the protocol's
  ``probe_without_gallery`` says. ``"miss"`` (the default; CASIA-B, ``OU-MVLP``): it still counts, as a miss, in
  the pair ``(a, b)``, as in OpenGait's ``single_view_gallery_evaluation``. ``"exclude"`` (``OU-MVLP-valid``):
  it is left out of that pair (neither a probe nor a hit there), the "invalid probe sequences excluded"
  variant that some OU-MVLP papers report beside the first (OU-MVLP's gallery lacks some subjects at some
  views); it can only raise a pair's rank-1. Every result records the rule in ``"probe_without_gallery"``, and
  each set's ``"num_probe_pairs_excluded"`` counts the (probe, gallery view) pairs left out, identical-view
  pairs included.
* Ties in distance go to the gallery sequence that comes first in the input order.
* Sequences whose condition belongs to neither the gallery nor a probe set, or whose view is not one of
  the protocol's views, are ignored.

Per-subject counts (``result["per_subject"]``, for a test-subject bootstrap, see
:mod:`qgait.evaluation.stats`): for every probe set, ``hits[i][a][b]`` and ``probes[i][a][b]`` count the
probe sequences of subject ``subjects[i]`` at probe view ``a`` matched against gallery view ``b``, and how
many of them were correct, so that ``table[a][b] == 100 * sum_i hits / sum_i probes``. A pair skipped for
lack of gallery sequences of view ``b`` has ``probes == hits == 0`` for every subject (under ``"exclude"``,
``probes`` counts only the probes whose subject has a gallery sequence at ``b``), so "a pair whose
probe count is 0 is skipped" reproduces the protocol's skipping rule (also in a resample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .distance import _as_embedding, _check_metric, _check_precision, _part_distance_unchecked
from .retrieval import _labels_to_list

__all__ = ["CrossViewProtocol", "CASIA_B", "OUMVLP", "OUMVLP_VALID", "PROTOCOLS", "PROBE_WITHOUT_GALLERY",
           "get_protocol", "evaluate_cross_view"]

ArrayLike = Union[Tensor, np.ndarray]

# Probes per distance block; shrunk for a large gallery to keep one block near 2**26 floats (256 MB).
_CHUNK = 1024
_BLOCK_ELEMS = 1 << 26

PROBE_WITHOUT_GALLERY = ("miss", "exclude")
"""How a probe whose subject has no gallery sequence at the gallery view is counted (see the module docstring)."""


@dataclass(frozen=True)
class CrossViewProtocol:
    """A single-view-gallery cross-view protocol.

    Attributes:
        name: display name, e.g. ``"CASIA-B"``.
        gallery_conditions: conditions (sequence types) forming the gallery, e.g. ``("nm-01", ..., "nm-04")``.
        probe_sets: probe set name -> its conditions, e.g. ``{"NM": ("nm-05", "nm-06"), ...}``; the dict
            order is the report order.
        views: the views, in table order, as strings exactly as in the data (``"000"``, not ``0``).
        exclude_identical_view: leave the identical-view pairs (the diagonal) out of the averages.
        probe_without_gallery: ``"miss"`` (a probe whose subject has no gallery sequence at gallery view ``b``
            counts as a miss in the pair ``(a, b)``) or ``"exclude"`` (it is left out of that pair).

    Raises:
        ValueError: (on construction) empty name / gallery / probe sets / views, duplicate views, an empty
            probe set, a condition used by both the gallery and a probe set (or by two probe sets), or an
            unknown ``probe_without_gallery``.
    """

    name: str
    gallery_conditions: tuple[str, ...]
    probe_sets: dict[str, tuple[str, ...]]
    views: tuple[str, ...]
    exclude_identical_view: bool = True
    probe_without_gallery: str = "miss"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("protocol name must be a non-empty string")
        gallery = tuple(str(c) for c in _as_tuple(self.gallery_conditions, "gallery_conditions"))
        views = tuple(str(v) for v in _as_tuple(self.views, "views"))
        if not isinstance(self.probe_sets, dict) or not self.probe_sets:
            raise ValueError("probe_sets must be a non-empty dict {set name: conditions}")
        probe_sets = {
            str(k): tuple(str(c) for c in _as_tuple(v, f"probe_sets[{k!r}]")) for k, v in self.probe_sets.items()
        }
        if len(set(views)) != len(views):
            raise ValueError(f"views must be unique, got {views}")
        seen = {c: "gallery" for c in gallery}
        for set_name, conds in probe_sets.items():
            for c in conds:
                if c in seen:
                    raise ValueError(f"condition {c!r} is in both {seen[c]} and probe set {set_name!r}")
                seen[c] = f"probe set {set_name!r}"
        object.__setattr__(self, "gallery_conditions", gallery)
        object.__setattr__(self, "views", views)
        object.__setattr__(self, "probe_sets", probe_sets)
        object.__setattr__(self, "exclude_identical_view", bool(self.exclude_identical_view))
        if self.probe_without_gallery not in PROBE_WITHOUT_GALLERY:
            raise ValueError(f"probe_without_gallery must be one of {PROBE_WITHOUT_GALLERY}, got "
                             f"{self.probe_without_gallery!r}")

    def __hash__(self) -> int:  # the dict field would make the generated hash fail
        probe_sets = tuple(self.probe_sets.items())
        return hash((self.name, self.gallery_conditions, probe_sets, self.views, self.exclude_identical_view,
                     self.probe_without_gallery))


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be a tuple of strings, got {value!r}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return tuple(value)


CASIA_B = CrossViewProtocol(
    "CASIA-B",
    ("nm-01", "nm-02", "nm-03", "nm-04"),
    {"NM": ("nm-05", "nm-06"), "BG": ("bg-01", "bg-02"), "CL": ("cl-01", "cl-02")},
    ("000", "018", "036", "054", "072", "090", "108", "126", "144", "162", "180"),
)

_OUMVLP_VIEWS = ("000", "015", "030", "045", "060", "075", "090", "180", "195", "210", "225", "240", "255", "270")

OUMVLP = CrossViewProtocol("OU-MVLP", ("01",), {"NM": ("00",)}, _OUMVLP_VIEWS)
"""OU-MVLP (Takemura et al., IPSJ T-CVA 2018): gallery sequence 01, probe sequence 00, 14 views, identical views
excluded; a probe whose subject has no gallery sequence at the gallery view counts as a miss (OpenGait's
``single_view_gallery_evaluation``, the figure in OpenGait's model zoo, e.g. GaitBase 90.8)."""

OUMVLP_VALID = CrossViewProtocol("OU-MVLP-valid", ("01",), {"NM": ("00",)}, _OUMVLP_VIEWS,
                                 probe_without_gallery="exclude")
"""OU-MVLP with invalid probes excluded: as :data:`OUMVLP`, but a probe whose subject has no gallery sequence at
the gallery view is left out of that (probe view, gallery view) pair: the "invalid probe sequences excluded"
figure some OU-MVLP papers report beside the first; it is never lower."""

#: Known protocols by display name.
PROTOCOLS: dict[str, CrossViewProtocol] = {p.name: p for p in (CASIA_B, OUMVLP, OUMVLP_VALID)}


def _norm_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_protocol(name: str) -> CrossViewProtocol:
    """The protocol called ``name``, case-insensitively ("casia-b", "CASIA_B", "oumvlp" and "OU-MVLP" work:
    letters and digits are compared, ``-`` / ``_`` / spaces ignored).

    Raises:
        ValueError: unknown name (the message lists the known protocols).
    """
    if isinstance(name, str):
        wanted = _norm_name(name)
        for known, protocol in PROTOCOLS.items():
            if _norm_name(known) == wanted:
                return protocol
    raise ValueError(f"unknown cross-view protocol {name!r}: known protocols are {list(PROTOCOLS)}")


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return math.fsum(kept) / len(kept) if kept else None


def evaluate_cross_view(
    embeddings: ArrayLike,
    subjects: Sequence,
    conditions: Sequence[str],
    views: Sequence[str],
    protocol: CrossViewProtocol | str = CASIA_B,
    metric: str = "euc",
    precision: str = "float64",
) -> dict:
    """Cross-view rank-1 of every probe set (CASIA-B / OU-MVLP protocol), in percent.

    The probe x gallery distance is computed once (block by block of probes, each block reduced to the
    nearest gallery sequence per gallery view, so memory stays ``O(block * n_gallery)``); see the module
    docstring for the averaging rules, skipped pairs and tie-breaking.

    Args:
        embeddings: ``[N, c, p]`` embeddings of all test sequences (tensor or numpy).
        subjects: ``N`` subject ids (any hashable; compared as given).
        conditions: ``N`` conditions (sequence types), compared as ``str``, e.g. ``"nm-05"``.
        views: ``N`` views, compared as ``str`` with ``protocol.views`` (``"090"``, not ``90``).
        protocol: a :class:`CrossViewProtocol` or the name of a known one (see :func:`get_protocol`).
        metric: ``"euc"`` or ``"cos"`` (see :func:`qgait.evaluation.distance.part_distance`).
        precision: of the distances, ``"float64"`` (the ranking exact distances give) or ``"float32"`` (see
            :func:`~qgait.evaluation.distance.part_distance`).

    Returns:
        ``{"protocol": str, "metric": str, "distance_precision": str, "views": [view, ...], "exclude_identical_view": bool,
        "sets": {set: {"rank-1": float|None, "per_view": {view: float|None}, "table": [[float|None]],
        "table_includes_diagonal": True, "diagonal_excluded": bool, "num_probes": int,
        "num_probe_pairs_excluded": int, "skipped_pairs": [[probe view, gallery view], ...]}},
        "probe_without_gallery": "miss" | "exclude", "mean": float, "sets_in_mean": [set, ...],
        "num_sequences": N, "num_gallery": int, "per_subject": {...}}``. ``table[i][j]`` is the rank-1
        (percent, 0-100) of probe view ``views[i]`` against gallery view ``views[j]``; values are not
        rounded. ``per_subject`` is ``{"protocol": str, "subjects": [subject, ...], "views": [view, ...],
        "exclude_identical_view": bool, "sets": {set: {"hits": [[[int]]], "probes": [[[int]]]}}}``:
        ``subjects`` are the probe subjects (at least one probe sequence in some set), sorted; ``hits`` /
        ``probes`` are indexed ``[subject][probe view][gallery view]`` (see the module docstring; all zeros
        for a gallery view without gallery sequences); plain ints in nested lists (JSON-serialisable).

    Raises:
        TypeError: ``embeddings`` is neither a tensor nor a numpy array.
        ValueError: ``embeddings`` not ``[N, c, p]``, empty or with NaN / inf; ``subjects`` /
            ``conditions`` / ``views`` lengths differ from ``N``; unknown protocol or metric; no gallery
            sequence or no probe sequence of the protocol in the data (the message shows the conditions
            and views found); no (probe view, gallery view) pair could be evaluated.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    elif not isinstance(protocol, CrossViewProtocol):
        raise ValueError(f"protocol must be a CrossViewProtocol or a protocol name, got {type(protocol).__name__}")
    _check_metric(metric)
    _check_precision(precision)
    emb = _as_embedding(embeddings, "embeddings")
    n_seq = emb.shape[0]
    subj = _labels_to_list(subjects, "subjects")
    cond = [str(c) for c in _labels_to_list(conditions, "conditions")]
    view = [str(v) for v in _labels_to_list(views, "views")]
    for name, values in (("subjects", subj), ("conditions", cond), ("views", view)):
        if len(values) != n_seq:
            raise ValueError(f"{name} has {len(values)} entries but embeddings has {n_seq} sequences")

    view_ids = {v: i for i, v in enumerate(protocol.views)}
    set_names = list(protocol.probe_sets)
    cond_to_set = {c: s for s, conds in enumerate(protocol.probe_sets.values()) for c in conds}
    gallery_conds = set(protocol.gallery_conditions)
    gal_idx = [i for i in range(n_seq) if cond[i] in gallery_conds and view[i] in view_ids]
    prb_idx = [i for i in range(n_seq) if cond[i] in cond_to_set and view[i] in view_ids]
    found = f"found conditions {sorted(set(cond))[:20]} and views {sorted(set(view))[:20]}"
    if not gal_idx:
        raise ValueError(
            f"no gallery sequence for protocol {protocol.name}: expected conditions "
            f"{list(protocol.gallery_conditions)} and views {list(protocol.views)}; {found}"
        )
    if not prb_idx:
        raise ValueError(
            f"no probe sequence for protocol {protocol.name}: expected conditions "
            f"{sorted(cond_to_set)} and views {list(protocol.views)}; {found}"
        )

    subject_codes: dict = {}
    g_subj = torch.tensor([subject_codes.setdefault(subj[i], len(subject_codes)) for i in gal_idx])
    p_subj = torch.tensor([subject_codes.setdefault(subj[i], len(subject_codes)) for i in prb_idx])
    g_view = torch.tensor([view_ids[view[i]] for i in gal_idx])
    p_view = torch.tensor([view_ids[view[i]] for i in prb_idx])
    p_set = torch.tensor([cond_to_set[cond[i]] for i in prb_idx])
    n_views = len(protocol.views)
    gal_cols = [torch.nonzero(g_view == v).flatten() for v in range(n_views)]

    # correct[i, v]: probe i's nearest gallery sequence of view v has its subject (only where v has a gallery).
    gallery = emb[gal_idx]
    probes = emb[prb_idx]
    correct = torch.zeros(len(prb_idx), n_views, dtype=torch.bool)
    block = max(1, min(_CHUNK, _BLOCK_ELEMS // len(gal_idx)))
    for start in range(0, len(prb_idx), block):
        dist = _part_distance_unchecked(probes[start : start + block], gallery, metric, block, precision).cpu()
        for v, cols in enumerate(gal_cols):
            if cols.numel():
                nearest = cols[dist[:, cols].argmin(1)]  # argmin returns the first minimum: input order wins ties
                correct[start : start + block, v] = g_subj[nearest] == p_subj[start : start + block]

    # counted[i, v]: probe i takes part in the pairs with gallery view v (see ``probe_without_gallery``).
    has_gallery_t = torch.tensor([cols.numel() > 0 for cols in gal_cols], dtype=torch.bool)
    if protocol.probe_without_gallery == "exclude":
        n_codes = len(subject_codes)
        subj_has_view = torch.zeros(n_codes, n_views, dtype=torch.bool)
        subj_has_view[g_subj, g_view] = True
        counted = subj_has_view[p_subj]
    else:
        counted = has_gallery_t[None, :].expand(len(prb_idx), n_views)
    correct = correct & counted

    # Per-subject counts: probe subjects sorted (by value, or by str for mixed types), row index per probe.
    probe_subjects = _sorted_subjects({subj[i] for i in prb_idx})
    subject_row = {x: r for r, x in enumerate(probe_subjects)}
    p_row = np.array([subject_row[subj[i]] for i in prb_idx], dtype=np.int64)
    p_view_np = p_view.numpy()
    p_set_np = p_set.numpy()
    correct_np = correct.numpy()
    counted_np = counted.numpy()
    n_subj = len(probe_subjects)
    per_subject_sets: dict = {}
    for s, set_name in enumerate(set_names):
        mask = p_set_np == s
        cell = p_row[mask] * n_views + p_view_np[mask]  # (subject, probe view) of each probe of the set
        probes_sab = np.stack(
            [np.bincount(cell, weights=counted_np[mask, b], minlength=n_subj * n_views) for b in range(n_views)],
            axis=-1,
        ).reshape(n_subj, n_views, n_views)
        hits_sab = np.stack(
            [np.bincount(cell, weights=correct_np[mask, b], minlength=n_subj * n_views) for b in range(n_views)],
            axis=-1,
        ).reshape(n_subj, n_views, n_views)
        per_subject_sets[set_name] = {
            "hits": np.rint(hits_sab).astype(np.int64).tolist(),
            "probes": np.rint(probes_sab).astype(np.int64).tolist(),
        }

    sets: dict = {}
    for s, set_name in enumerate(set_names):
        in_set = p_set == s
        table: list[list[float | None]] = []
        per_view: dict[str, float | None] = {}
        skipped: list[list[str]] = []
        for a, probe_view in enumerate(protocol.views):
            rows = in_set & (p_view == a)
            row: list[float | None] = []
            for b, gallery_view in enumerate(protocol.views):
                n_rows = int(counted[rows, b].sum())
                if n_rows == 0:
                    row.append(None)
                    skipped.append([probe_view, gallery_view])
                else:
                    row.append(100.0 * int(correct[rows, b].sum()) / n_rows)
            table.append(row)
            off_diag = [v for b, v in enumerate(row) if not (protocol.exclude_identical_view and b == a)]
            per_view[probe_view] = _mean(off_diag)
        sets[set_name] = {
            "rank-1": _mean(list(per_view.values())),
            "per_view": per_view,
            "table": table,
            "table_includes_diagonal": True,
            "diagonal_excluded": protocol.exclude_identical_view,
            "num_probes": int(in_set.sum()),
            "num_probe_pairs_excluded": int((~counted[in_set] & has_gallery_t[None, :]).sum()),
            "skipped_pairs": skipped,
        }
    in_mean = [name for name, res in sets.items() if res["rank-1"] is not None]
    if not in_mean:
        raise ValueError(
            f"no (probe view, gallery view) pair could be evaluated for protocol {protocol.name} "
            "(identical views excluded): the probes and the gallery share no usable view pair"
        )
    return {
        "protocol": protocol.name,
        "metric": metric,
        "distance_precision": precision,
        "views": list(protocol.views),
        "exclude_identical_view": protocol.exclude_identical_view,
        "probe_without_gallery": protocol.probe_without_gallery,
        "sets": sets,
        "mean": math.fsum(sets[name]["rank-1"] for name in in_mean) / len(in_mean),
        "sets_in_mean": in_mean,
        "num_sequences": n_seq,
        "num_gallery": len(gal_idx),
        "per_subject": {
            "protocol": protocol.name,
            "subjects": [_plain(x) for x in probe_subjects],
            "views": list(protocol.views),
            "exclude_identical_view": protocol.exclude_identical_view,
            "sets": per_subject_sets,
        },
    }


def _sorted_subjects(subjects: set) -> list:
    """Subject ids sorted by value, or by ``(type name, str)`` when they are not mutually comparable."""
    try:
        return sorted(subjects)
    except TypeError:
        return sorted(subjects, key=lambda x: (type(x).__name__, str(x)))


def _plain(x: Any) -> Any:
    """A numpy scalar as the Python scalar (JSON-serialisable); anything else unchanged."""
    return x.item() if isinstance(x, np.generic) else x
