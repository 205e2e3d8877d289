"""Evaluate a model on a store with a cross-view protocol (CASIA-B, OU-MVLP)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..data.store import SequenceStore
from .cross_view import evaluate_cross_view, get_protocol
from .extract import extract_embeddings


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
) -> dict:
    """Embed the test ``subjects``' sequences that the protocol uses and score them.

    Returns the :func:`evaluate_cross_view` result (rank-1 in percent per set, view tables, mean), plus
    ``"embeddings"`` ``[N, c, p]`` and ``"records"`` if ``return_embeddings``. ``freeze_quant``: see
    :func:`extract_embeddings` (a quantized ``nn.Module`` is evaluated through the cheaper, bit-identical
    :func:`qgait.quant.frozen_for_inference` path). ``precision``: of the distances (:func:`evaluate_cross_view`).

    Raises:
        ValueError: unknown protocol, or no sequence of the subjects in the store.
    """
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
