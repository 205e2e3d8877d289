"""Glue shared by the workflows: the store, the subject split, the network, the losses and the optimizer,
all built from an :class:`ExperimentConfig`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import DataConfig, ExperimentConfig, LossConfig, OptimConfig
from ..data.partition import load_partition
from ..data.store import SequenceStore, build_store
from ..losses import LossSum, PartCrossEntropy, TripletLoss
from ..models import GaitWithHead, build_model


def log(msg: str) -> None:
    """Progress messages go to stderr so that stdout carries results."""
    print(msg, file=sys.stderr, flush=True)


def open_or_build_store(data: DataConfig, progress: bool = True) -> SequenceStore:
    """Open ``data.store``; if it does not exist yet, import it from ``data.source`` first.

    Raises:
        FileNotFoundError: no store and no source to build it from.
    """
    if (Path(data.store) / "meta.json").is_file():
        return SequenceStore.open(data.store)
    if data.source is None:
        raise FileNotFoundError(f"{data.store}: no store there and no data.source to import it from")
    log(f"importing {data.source} -> {data.store} (once)")
    summary = build_store(data.source, data.store, skip_bad=data.skip_bad, progress=progress,
                          cut_width=data.store_cut_width)
    log(str(summary))
    return SequenceStore.open(data.store)


@dataclass(frozen=True)
class Split:
    """Training and test subjects of a partition, restricted to those present in the store (and limits)."""

    train_subjects: list[str]
    test_subjects: list[str]


def split_subjects(store: SequenceStore, data: DataConfig) -> Split:
    """Apply the partition (and the optional subject limits) to the store's subjects.

    Raises:
        ValueError: no training or no test subject of the partition is in the store.
    """
    part = load_partition(data.partition)
    have = set(store.subjects)
    train = [s for s in part.train if s in have]
    test = [s for s in part.test if s in have]
    if data.train_subjects_limit:
        train = train[: data.train_subjects_limit]
    if data.test_subjects_limit:
        test = test[: data.test_subjects_limit]
    if not train or not test:
        raise ValueError(
            f"{data.store}: the partition {data.partition!r} leaves {len(train)} training and {len(test)} test "
            "subjects in this store"
        )
    return Split(train, test)


def build_network(cfg: ExperimentConfig, num_classes: int) -> GaitWithHead:
    """The inference model named by the config plus its BNNeck head (if any)."""
    model = build_model(cfg.model.name, **cfg.model.args)
    return GaitWithHead(model, num_classes if cfg.model.head == "bnneck" else None)


def build_losses(loss: LossConfig, has_head: bool) -> LossSum:
    """Triplet and (with a head) cross-entropy terms with their weights.

    Raises:
        ValueError: no loss term enabled.
    """
    terms: dict[str, tuple[nn.Module, float]] = {}
    if loss.triplet:
        terms["triplet"] = (TripletLoss(loss.triplet.margin), loss.triplet.weight)
    if loss.ce and has_head:
        terms["ce"] = (PartCrossEntropy(loss.ce.scale, loss.ce.label_smoothing), loss.ce.weight)
    if not terms:
        raise ValueError("no loss term enabled")
    return LossSum(terms)


def build_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW over ``params`` (an iterable or param groups)."""
    if optim.name == "sgd":
        return torch.optim.SGD(
            params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=optim.nesterov
        )
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(params, lr=optim.lr, weight_decay=optim.weight_decay)


def prepare_run(cfg: ExperimentConfig, out_dir: Path, progress: bool):
    """Start a run: distributed context, threads, seed, ``out_dir/config.yaml`` (rank 0; data paths relative to
    ``out_dir``), the store (imported once, by rank 0, while the other ranks wait) and the subject split. Check a
    resumed folder first (:func:`qgait.workflows.resume.check_resume`): this writes its ``config.yaml``.

    Returns:
        ``(ctx, store, split)``; the caller must call :func:`qgait.engine.distributed.cleanup` on ``ctx``.
    """
    import yaml

    from ..config import dump_config
    from ..engine.distributed import init_distributed

    ctx = init_distributed()
    set_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    if ctx.is_main:  # data paths relative to the run folder: the file reads the same on any checkout
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg, relative_to=out_dir), sort_keys=False))
    store = open_or_build_store(cfg.data, progress) if ctx.is_main else None
    if ctx.distributed:
        torch.distributed.barrier()
        store = store or open_or_build_store(cfg.data, False)
    return ctx, store, split_subjects(store, cfg.data)


def print_summary(res: dict, full_report: str | Path | None = None) -> None:
    """Print an evaluation for the terminal: its rank-1 summary table (NM / BG / CL / mean) and the file with the
    full tables (per probe view, view x view per set); without ``full_report``, the full report itself. A retrieval
    result (Gait3D, GREW: rank-k, mAP, mINP) prints its one table."""
    from ..evaluation.report import format_cross_view, format_retrieval

    if "sets" not in res:  # a retrieval protocol (Gait3D, GREW): one table is the whole report
        print(format_retrieval(res) + (f"\nWritten to {full_report}\n" if full_report is not None else ""))
        return
    text = format_cross_view(res)
    if full_report is None:
        print(text)
        return
    head = text.split("\n### ", 1)[0].rstrip()
    print(f"{head}\n\nFull tables (rank-1 per probe view, view x view per set): {full_report}\n")


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def evaluate_with_stats(model, store: SequenceStore, subjects, cfg: ExperimentConfig, device, progress: bool,
                        fp_stats: dict | None = None, keep_embeddings: bool = False) -> dict:
    """Evaluate ``model`` on the test ``subjects`` with ``cfg``'s protocol (:func:`evaluate_on_store`) and add the
    embedding-space diagnostics (issue 13): ``embedding_stats`` of the test embeddings (per-part norm, inter- and
    intra-class distance; 20,000 sampled pairs) and, given the FP model's ``fp_stats``, ``embedding_drift``.
    ``keep_embeddings``: the result keeps ``"embeddings"`` and ``"records"`` (the caller pops them before
    writing the JSON)."""
    from ..evaluation.embedding_stats import embedding_drift, embedding_stats
    from ..evaluation.runner import evaluate_on_store

    res = evaluate_on_store(model, store, subjects, tuple(cfg.data.input_size), cfg.eval.protocol, cfg.eval.metric,
                            cfg.data.test_max_frames, device, progress, return_embeddings=True,
                            precision=cfg.eval.distance_precision)
    emb, recs = res.pop("embeddings"), res.pop("records")
    res["embedding_stats"] = embedding_stats(emb, [r.subject for r in recs], max_pairs=20_000)
    if fp_stats is not None:
        res["embedding_drift"] = embedding_drift(res["embedding_stats"], fp_stats)
    if keep_embeddings:
        res["embeddings"], res["records"] = emb, recs
    return res
