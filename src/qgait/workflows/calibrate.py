"""``qgait calibrate``: choose an exported model's rejection threshold for a target FMR on a calibration split and
store it in a copy of the model (issue 17, calibrated rejection; :mod:`qgait.runtime.rejection`), and measure how
that threshold holds on other subjects (:func:`held_out_rates`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["calibrate_model", "resolve_rule", "decide", "held_out_rates"]


def calibrate_model(model: str | Path, sources: Sequence[str | Path], output: str | Path, *, target_fmr: float = 1e-3,
                    metric: str = "euc", subjects=None, conditions=None, views=None, max_frames: int = 720,
                    threads: int | None = None, progress: bool = False, check: bool = True,
                    overwrite: bool = False) -> dict:
    """Embed the calibration sequences with ``model``, calibrate the threshold, write ``output`` (a copy of the
    model with the threshold in its metadata).

    The output is checked before any embedding (not an input, not an existing file unless ``overwrite``).

    Returns:
        ``{"output", "sequences", "subjects", "rejection": RejectionThreshold.to_dict()}``.

    Raises:
        OutputError: a bad ``output``. ValueError: see :func:`qgait.workflows.identify.collect_sequences`,
            :func:`qgait.runtime.rejection.calibrate_threshold`; calibration sequences without a subject label.
        ModelLoadError: an unreadable model.
    """
    from ..runtime import GaitEmbedder
    from ..runtime.rejection import calibrate_threshold, write_threshold
    from .identify import collect_sequences, embed_sequences
    from .outputs import check_outputs

    output = Path(output)
    if output.suffix != Path(model).suffix:
        raise ValueError(f"{output}: the calibrated copy keeps the model's format, give a {Path(model).suffix} file")
    check_outputs([output], [model, *sources], overwrite)
    items = collect_sequences(list(sources), subjects, conditions, views)
    unlabeled = [it.source for it in items if it.subject is None]
    if unlabeled:
        raise ValueError(f"calibration sequences need a subject label (a store or an OpenGait folder): "
                         f"{unlabeled[:3]}")
    emb = GaitEmbedder(model, threads=threads)
    embeddings = embed_sequences(emb, items, max_frames, progress, check)
    labels = [it.subject for it in items]
    calibration = {"sources": [str(s) for s in sources], "subjects": sorted(set(labels)),
                   "sequences": len(items), "max_frames": max_frames}
    for key, value in (("conditions", conditions), ("views", views)):
        if value:
            calibration[key] = value
    th = calibrate_threshold(embeddings, labels, target_fmr, metric, calibration)
    write_threshold(model, output, th)
    return {"output": str(output), "sequences": len(items), "subjects": len(set(labels)), "rejection": th.to_dict()}


def resolve_rule(embedder, threshold: float | str | None = "model", metric: str = "euc") -> dict | None:
    """The rejection rule ``identify`` applies with ``embedder``'s model.

    Args:
        threshold: ``"model"`` (default): the threshold stored in the model by ``qgait calibrate``, none when it
            has none; ``"off"`` or None: no rejection; a number: that distance (in ``metric``'s units).
        metric: the distance ``identify`` ranks with.

    Returns:
        ``{"threshold", "metric", "target_fmr" (None for a given number), "source"}`` or None (no rejection).

    Raises:
        ValueError: a stored threshold calibrated for another metric, or malformed; a threshold that is not a
            finite number, "model" or "off".
    """
    import math

    from ..runtime.rejection import threshold_of

    if threshold is None or threshold == "off":
        return None
    if threshold == "model":
        th = threshold_of(getattr(embedder, "meta", {}) or {}, str(getattr(embedder, "path", "model")))
        if th is None:
            return None
        if th.metric != metric:
            raise ValueError(f"{embedder.path}: its rejection threshold was calibrated for {th.metric!r} distances, "
                             f"not {metric!r}; identify with --metric {th.metric}, give --threshold, or --threshold off")
        return {"threshold": th.threshold, "metric": th.metric, "target_fmr": th.target_fmr,
                "source": "model metadata"}
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a distance, 'model' or 'off', got {threshold!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"threshold must be a finite distance, got {threshold!r}")
    return {"threshold": value, "metric": metric, "target_fmr": None, "source": "given"}


def decide(top: list[tuple[str, float]], rule: dict) -> dict:
    """The open-set decision for one probe's ranked subjects ``[(label, distance), ...]``: the nearest label if
    its distance is ``<= rule["threshold"]`` (:func:`resolve_rule`), else ``"unknown"``.

    Returns:
        ``{"label", "known", "distance", "threshold", "metric", "target_fmr", "source"}``.
    """
    label, dist = top[0]
    known = float(dist) <= rule["threshold"]
    return {"label": label if known else "unknown", "known": known, "distance": float(dist), **rule}


def held_out_rates(threshold, probe_emb: Any, probe_labels: Sequence, gallery_emb: Any,
                   gallery_labels: Sequence) -> dict:
    """How a calibrated threshold holds on other sequences: the verification rates of every probe x gallery
    comparison (FMR, TAR) and the open-set identification rates at rank 1 (FPIR over the probes whose subject is
    not in the gallery, DIR = 1 - FNIR over those whose subject is; :mod:`qgait.evaluation.open_set`), at the
    threshold. Rates are fractions.

    Raises:
        ValueError: no genuine or no impostor comparison; no mated or no non-mated probe.
    """
    import torch

    from ..evaluation.distance import part_distance
    from ..evaluation.open_set import fpir_fnir, open_set_scores
    from ..evaluation.tradeoff import accepted
    from ..evaluation.verification import genuine_impostor_scores

    d = part_distance(torch.as_tensor(np.asarray(probe_emb)), torch.as_tensor(np.asarray(gallery_emb)),
                      metric=threshold.metric)
    plab, glab = [str(v) for v in probe_labels], [str(v) for v in gallery_labels]
    gen, imp = genuine_impostor_scores(d, plab, glab)
    t = np.array([threshold.threshold])
    scores = open_set_scores(d, plab, glab)
    fpir, fnir = fpir_fnir(scores, t)
    return {
        "fmr": float(accepted(imp, t)[0] / len(imp)), "tar": float(accepted(gen, t)[0] / len(gen)),
        "num_genuine": len(gen), "num_impostor": len(imp),
        "fpir": float(fpir[0]), "dir": float(1.0 - fnir[0]),
        "num_mated": int(scores.num_mated), "num_non_mated": len(scores.non_mated),
        "gallery_sequences": len(glab),
    }
