"""``qgait verify``: verification and open-set identification figures of one or more models on the test subjects
(issue 17), beside the closed-set rank-1 that the cross-view protocol reports.

Per model and probe set (CASIA-B: NM, BG, CL) the probes are searched against the protocol's gallery (NM 01-04)
**of all views, identical views included** (a camera meets people at any angle; the rank-1 tables exclude
identical views, so the ``rank1_mated`` ceiling here is higher than their rank-1): EER, TAR at FMR 1e-2 / 1e-3 /
1e-4, the ROC / DET curve, and the open-set test (half the gallery subjects left out, seed 0: DIR at FPIR 1e-1 /
1e-2 / 1e-3). Rates are fractions (:mod:`qgait.evaluation.biometric_report`). Writes ``verification.json`` and one
``verification_<set>.png`` per probe set with every model's curves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import ExperimentConfig
from ..engine.checkpoint import load_inference_model
from ..evaluation.biometric_report import verification_report
from ..evaluation.cross_view import get_protocol
from ..evaluation.curves import plot_verification_curves
from ..evaluation.report import rank1_row
from ..evaluation.runner import evaluate_on_store
from .common import log, open_or_build_store, set_threads, split_subjects

__all__ = ["run_verification", "verification_sets"]


def verification_sets(result: dict, protocol: str, metric: str, **options) -> dict:
    """Per probe set, :func:`~qgait.evaluation.biometric_report.verification_report` of the set's probes against
    the protocol's gallery (all views), from an :func:`~qgait.evaluation.runner.evaluate_on_store` result made with
    ``return_embeddings=True``.

    Raises:
        ValueError: the result has no embeddings, or a set has no probe / the gallery is empty.
    """
    if "embeddings" not in result:
        raise ValueError("verification_sets needs evaluate_on_store(..., return_embeddings=True)")
    proto = get_protocol(protocol)
    emb, recs = result["embeddings"], result["records"]
    gal = [i for i, r in enumerate(recs) if r.condition in proto.gallery_conditions]
    if not gal:
        raise ValueError(f"no gallery sequences ({proto.gallery_conditions}) among the embedded records")
    out = {}
    for name, conds in proto.probe_sets.items():
        probes = [i for i, r in enumerate(recs) if r.condition in conds]
        if not probes:
            raise ValueError(f"probe set {name}: no sequences of {conds}")
        out[name] = verification_report(emb[probes], [recs[i].subject for i in probes], emb[gal],
                                        [recs[i].subject for i in gal], metric=metric, **options)
    return out


def run_verification(cfg: ExperimentConfig, checkpoints: Mapping[str, str | Path], out_dir: str | Path,
                     progress: bool = True, overwrite: bool = False, **options) -> dict:
    """Embed the test subjects with each model of ``checkpoints`` (``{name: model.pt}``: FP or quantized) and
    write their verification / open-set figures to ``out_dir`` (``verification.json``, ``verification_<set>.png``).

    Each model runs at the input size saved with it. ``options`` go to
    :func:`~qgait.evaluation.biometric_report.verification_summary` (``fmr_targets``, ``open_set_left_out``, ...).

    Returns:
        ``{"protocol", "metric", "gallery": "all views", "models": {name: {"checkpoint", "rank1", "sets":
        {set: report}}}}``.

    Raises:
        FileExistsError: ``out_dir/verification.json`` exists and not ``overwrite``.
        CheckpointError: a missing or corrupt checkpoint. ValueError: no checkpoints.
    """
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    out_dir = Path(out_dir)
    path = out_dir / "verification.json"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite to replace it)")
    set_threads(cfg.train.threads)
    models = {name: load_inference_model(ck) for name, ck in checkpoints.items()}  # fail early on a bad file
    store = open_or_build_store(cfg.data, progress)
    split = split_subjects(store, cfg.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res: dict = {"protocol": cfg.eval.protocol, "metric": cfg.eval.metric, "gallery": "all views",
                 "test_subjects": len(split.test_subjects), "models": {}}
    for name, (model, meta) in models.items():
        size = tuple(meta.get("input_size") or cfg.data.input_size)
        log(f"{name}: embedding {len(split.test_subjects)} test subjects at {size[0]}x{size[1]}")
        ev = evaluate_on_store(model, store, split.test_subjects, size, cfg.eval.protocol, cfg.eval.metric,
                               cfg.data.test_max_frames, device, progress, return_embeddings=True,
                               precision=cfg.eval.distance_precision)
        sets = verification_sets(ev, cfg.eval.protocol, cfg.eval.metric, **options)
        res["models"][name] = {"checkpoint": str(checkpoints[name]), "rank1": rank1_row(ev), "sets": sets}
        for s, rep in sets.items():
            tar = {f"{r['fmr_target']:g}": r["tar"] for r in rep["tar_at_fmr"]}
            log(f"  {s}: EER {100 * rep['eer']:.2f}%, TAR@FMR " + ", ".join(
                f"{k} {100 * v:.1f}%" if v is not None else f"{k} -" for k, v in tar.items()))
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in next(iter(res["models"].values()))["sets"]:
        plot_verification_curves({n: m["sets"][s] for n, m in res["models"].items()},
                                 out_dir / f"verification_{s}.png", title=f"{cfg.eval.protocol} {s}")
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(path)
    log(f"wrote {path} and {out_dir}/verification_*.png")
    return res
