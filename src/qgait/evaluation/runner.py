"""Evaluate a model on a store with a named protocol: the cross-view ones (CASIA-B, OU-MVLP, OU-MVLP-valid) and
the dataset protocols (Gait3D, GREW, CCPG, SUSTech1K, :data:`DATASET_PROTOCOLS`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn

from ..data.store import SequenceStore
from .ccpg import evaluate_ccpg
from .cross_view import evaluate_cross_view, get_protocol
from .extract import extract_embeddings
from .gait3d import evaluate_gait3d
from .grew import evaluate_grew
from .sustech1k import evaluate_sustech1k

DATASET_PROTOCOLS = ("gait3d", "grew", "ccpg", "sustech1k")
"""Protocol names :func:`evaluate_on_store` runs on every sequence of the test subjects (not cross-view)."""


def dataset_protocol(name: str) -> str | None:
    """The dataset protocol ``name`` spells (``"Gait3D"``, ``"gait-3d"`` -> ``"gait3d"``; one of
    :data:`DATASET_PROTOCOLS`), or None for a cross-view protocol (CASIA-B, OU-MVLP) or an unknown name."""
    key = "".join(ch for ch in name.lower() if ch.isalnum()) if isinstance(name, str) else ""
    return key if key in DATASET_PROTOCOLS else None


def evaluate_on_store(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    store: SequenceStore,
    subjects: Sequence[str],
    size: tuple[int, int],
    protocol: str = "casia-b",
    metric: str = "euc",
    max_frames: int = 720,
    device: torch.device | str = "cpu",
    progress: bool = True,
    return_embeddings: bool = False,
    freeze_quant: bool = True,
    precision: str = "float64",
    probe_set: Collection[str] | None = None,
) -> dict:
    """Embed the test ``subjects``' sequences that the protocol uses and score them.

    Returns the :func:`evaluate_cross_view` result (rank-1 in percent per set, view tables, mean) for a
    cross-view protocol; for a name in :data:`DATASET_PROTOCOLS` (every sequence of ``subjects`` embedded) the
    result of :func:`~qgait.evaluation.gait3d.evaluate_gait3d`, :func:`~qgait.evaluation.grew.evaluate_grew`,
    :func:`~qgait.evaluation.ccpg.evaluate_ccpg` or :func:`~qgait.evaluation.sustech1k.evaluate_sustech1k`.
    Plus ``"embeddings"`` ``[N, c, p]`` and ``"records"`` if ``return_embeddings``. ``freeze_quant``: see
    :func:`extract_embeddings` (a quantized ``nn.Module`` is evaluated through the cheaper, bit-identical
    :func:`qgait.quant.frozen_for_inference` path). ``precision``: of the distances (:func:`evaluate_cross_view`;
    the dataset protocols compute in float64). ``probe_set``: Gait3D's probe sequence names (default: the
    built-in ``gait3d`` partition's ``PROBE_SET``).

    Raises:
        ValueError: unknown protocol, or no sequence of the subjects in the store; as each protocol.
    """
    dataset = dataset_protocol(protocol)
    if dataset is not None:
        idx = store.select(subjects=subjects)
        if not idx:
            raise ValueError(f"no sequences of subjects {list(subjects)[:5]}... for protocol {protocol} in the store")
        emb = extract_embeddings(model, store, idx, size=size, max_frames=max_frames, device=device,
                                 progress=progress, freeze_quant=freeze_quant)
        recs = [store.records[i] for i in idx]
        subj, cond, view = [r.subject for r in recs], [r.condition for r in recs], [r.view for r in recs]
        if dataset == "gait3d":
            if probe_set is None:
                from ..data.partition import load_partition

                probe_set = load_partition("gait3d").probe
            result = evaluate_gait3d(emb, subj, cond, view, probe_set, metric=metric)
        elif dataset == "grew":
            result = evaluate_grew(emb, subj, cond, metric=metric)
        elif dataset == "ccpg":
            result = evaluate_ccpg(emb, subj, cond, view, metric=metric)
        else:
            result = evaluate_sustech1k(emb, subj, cond, view, metric=metric)
        if return_embeddings:
            result["embeddings"] = emb
            result["records"] = recs
        return result
    proto = get_protocol(protocol)
    conditions = set(proto.gallery_conditions) | {c for cs in proto.probe_sets.values() for c in cs}
    idx = store.select(subjects=subjects, conditions=sorted(conditions))
    if not idx:
        raise ValueError(f"no sequences of subjects {list(subjects)[:5]}... for protocol {proto.name} in the store")
    emb = extract_embeddings(model, store, idx, size=size, max_frames=max_frames, device=device, progress=progress,
                             freeze_quant=freeze_quant)
    recs = [store.records[i] for i in idx]
    result = evaluate_cross_view(
        emb, [r.subject for r in recs], [r.condition for r in recs], [r.view for r in recs], proto, metric=metric,
        precision=precision,
    )
    if return_embeddings:
        result["embeddings"] = emb
        result["records"] = recs
    return result
