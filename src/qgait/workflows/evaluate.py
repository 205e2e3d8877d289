"""``qgait evaluate``: score a saved model on the test subjects of a config's partition."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ExperimentConfig
from ..engine.checkpoint import load_inference_model
from ..evaluation.report import write_results
from .common import evaluate_with_stats, log, open_or_build_store, print_summary, set_threads, split_subjects


def checkpoint_input_size(meta: dict) -> tuple[int, int] | None:
    """The ``(h, w)`` a checkpoint's model was trained at: ``input_size`` of a ``model.pt``, the config's
    ``data.input_size`` of a training checkpoint (``last.pt``); None when it does not say."""
    size = meta.get("input_size") or ((meta.get("config") or {}).get("data") or {}).get("input_size")
    return (int(size[0]), int(size[1])) if size else None


def run_evaluate(cfg: ExperimentConfig, checkpoint: str | Path, out_dir: str | Path | None = None,
                 progress: bool = True, name: str = "results", grew_submission: str | Path | None = None,
                 overwrite: bool = False) -> dict:
    """Evaluate ``checkpoint`` with ``cfg``'s data, protocol and metric; write JSON + Markdown to ``out_dir``.

    The frames are resized to the input size the checkpoint was trained at (it is saved with the model), not to
    ``cfg``'s when the two differ (a note says so): a 32x22 model run on 64x44 frames gives wrong figures.
    The terminal gets the rank-1 summary and the path of the full tables when ``out_dir`` is given, else the
    full tables.

    ``grew_submission``: with the GREW protocol, also write the CSV GREW's server scores (the 20 nearest gallery
    identities of every unlabelled probe, :func:`qgait.evaluation.grew.write_grew_submission`), checked before
    any work (not an existing file unless ``overwrite``).

    Raises:
        CheckpointError: a missing or corrupt checkpoint, or weights that do not fit its model.
        ValueError: ``grew_submission`` with another protocol than GREW.
    """
    if grew_submission is not None:
        from ..evaluation.runner import dataset_protocol
        from .outputs import check_outputs

        if dataset_protocol(cfg.eval.protocol) != "grew":
            raise ValueError(f"--grew-submission needs the GREW protocol (eval.protocol: grew), this config's is "
                             f"{cfg.eval.protocol!r}")
        grew_submission = Path(grew_submission)
        check_outputs([grew_submission], [checkpoint], overwrite)
    set_threads(cfg.train.threads)
    model, meta = load_inference_model(checkpoint, cfg.model.name, cfg.model.args)
    size = checkpoint_input_size(meta)
    if size is not None and size != tuple(cfg.data.input_size):
        log(f"note: {checkpoint} was trained on {size[0]}x{size[1]} frames; evaluating at {size[0]}x{size[1]}, "
            f"not at the config's {cfg.data.input_size[0]}x{cfg.data.input_size[1]}")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"input_size": size})})
    store = open_or_build_store(cfg.data, progress)
    split = split_subjects(store, cfg.data)
    log(f"evaluating {checkpoint} on {len(split.test_subjects)} test subjects")
    res = evaluate_with_stats(model, store, split.test_subjects, cfg,
                              "cpu" if not torch.cuda.is_available() else "cuda", progress,
                              **({"keep_embeddings": True} if grew_submission is not None else {}))
    if grew_submission is not None:
        from ..evaluation.grew import grew_submission_rows, write_grew_submission

        emb, recs = res.pop("embeddings"), res.pop("records")
        rows = grew_submission_rows(emb, [r.subject for r in recs], [r.condition for r in recs],
                                    [r.view for r in recs], metric=cfg.eval.metric)
        grew_submission.parent.mkdir(parents=True, exist_ok=True)
        write_grew_submission(rows, grew_submission)
        res["grew_submission"] = {"path": str(grew_submission), "probes": len(rows)}
        log(f"wrote {grew_submission} ({len(rows)} probes; upload it to GREW's evaluation server)")
    res["model"] = str(checkpoint)
    md = write_results(res, out_dir, name)[1] if out_dir is not None else None
    print_summary(res, md)
    return res
