"""``qgait train``: train a full-precision gait model from a config and evaluate it on the test subjects."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch

from ..config import ExperimentConfig, dump_config
from ..data.loader import TrainBatches
from ..data.transforms import GaitAugment
from ..engine.checkpoint import save_inference_model
from ..engine.distributed import DistContext, cleanup
from ..engine.schedule import lr_at
from ..engine.trainer import Trainer
from ..evaluation.report import rank1_row, write_results
from ..evaluation.runner import evaluate_on_store
from .common import build_losses, build_network, build_optimizer, log, prepare_run, print_summary
from .resume import check_resume


def make_train_batches(cfg: ExperimentConfig, store, subjects, ctx: DistContext) -> TrainBatches:
    d = cfg.data
    aug = GaitAugment(**d.augment.model_dump()) if d.augment else None
    return TrainBatches(
        store, store.select(subjects=subjects), p=d.p, k=d.k, frames=d.train_frames, size=tuple(d.input_size),
        augment=aug, seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size, prefetch=d.prefetch,
    )


def periodic_evaluator(cfg: ExperimentConfig, store, test_subjects, ctx: DistContext, progress: bool):
    """A callback ``(net, iteration) -> {NM, BG, CL, mean}`` on (a subset of) the test subjects."""
    subjects = test_subjects[: cfg.eval.periodic_subjects_limit] if cfg.eval.periodic_subjects_limit else test_subjects

    def evaluate(net, iteration):  # noqa: ARG001
        res = evaluate_on_store(
            net.model, store, subjects, tuple(cfg.data.input_size), cfg.eval.protocol, cfg.eval.metric,
            cfg.data.test_max_frames, ctx.device, progress=False, precision=cfg.eval.distance_precision,
        )
        return rank1_row(res)

    return evaluate


def run_train(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = True, progress: bool = True,
              evaluate: bool = True) -> dict:
    """Train ``cfg`` into ``out_dir`` (resuming from ``out_dir/last.pt``), save ``model.pt``, evaluate.

    Returns a summary dict (also ``out_dir/summary.json``): wall time, iterations, ``resumed_from`` (the iteration
    this invocation started at), the settings changed on resume if any, and the evaluation result (rank-1 per
    set, mean; the terminal gets that summary and the path of the full tables, ``out_dir/results.md``).

    Raises:
        ResumeMismatch: ``out_dir`` holds a run of another architecture or data (checked before anything there is
            written; :func:`qgait.workflows.resume.check_resume`).
    """
    return train_model(cfg, out_dir, resume=resume, progress=progress, evaluate=evaluate)


def train_model(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = True, progress: bool = True,
                evaluate: bool = True, setup=None, tag: str = "train", label: str = "FP32",
                extra_meta: dict | None = None, end_meta=None) -> dict:
    """:func:`run_train`'s loop with a hook for variants (distillation, :mod:`qgait.workflows.distill`).

    Args:
        setup: ``(net, loss_fn, batches, ctx) -> (train_net, loss_fn, extra_outputs)``, called once the
            student and its losses are built (on the device) and before the optimizer (``batches``: the run's
            :class:`qgait.data.loader.TrainBatches`, ``batches.num_classes`` its classes): ``train_net`` is what the
            trainer optimises and checkpoints (it must expose the student's ``.model`` and ``.head``, which alone
            are saved in ``model.pt``); ``extra_outputs`` is the trainer's (e.g. a frozen teacher).
        tag: the trainer's tag (log ``stage``, TensorBoard prefix).
        label: the evaluated model's label (``"<name> (<label>)"``).
        extra_meta: added to ``model.pt`` and the summary (JSON-able: strings, numbers, lists).
        end_meta: ``() -> dict`` called once training ends, added to the summary only (e.g. the teacher output
            cache's hits and misses).
    """
    out_dir = Path(out_dir)
    changes = check_resume(cfg, out_dir) if resume else []
    ctx, store, split = prepare_run(cfg, out_dir, progress)
    try:
        batches = make_train_batches(cfg, store, split.train_subjects, ctx)
        net = build_network(cfg, batches.num_classes).to(ctx.device)
        if cfg.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        loss_fn = build_losses(cfg.loss, net.head is not None)
        extra_outputs = None
        if setup is not None:
            net, loss_fn, extra_outputs = setup(net, loss_fn, batches, ctx)
        opt = build_optimizer(net.parameters(), cfg.optim)
        o = cfg.optim
        trainer = Trainer(
            net, loss_fn, batches, opt,
            functools.partial(lr_at, base_lr=o.lr, milestones=o.milestones, gamma=o.gamma, warmup=o.warmup_iterations),
            cfg.train.iterations, out_dir, ctx,
            log_every=cfg.train.log_every, save_every=cfg.train.save_every, eval_every=cfg.train.eval_every,
            amp=cfg.train.amp, compile=cfg.train.compile, extra_outputs=extra_outputs,
            evaluate_fn=periodic_evaluator(cfg, store, split.test_subjects, ctx, progress),
            config=dump_config(cfg), progress=progress, tag=tag,
        )
        t0 = time.perf_counter()
        evals = trainer.fit(resume=resume)
        wall = time.perf_counter() - t0
        summary: dict = {"name": cfg.name, "iterations": cfg.train.iterations, "resumed_from": trainer.resumed_from,
                         "train_seconds_this_run": round(wall, 1), "periodic_eval": evals, **(extra_meta or {})}
        if changes:
            summary["config_changes_on_resume"] = changes
        if end_meta is not None:
            summary.update(end_meta())
        if not ctx.is_main:
            return summary
        model_path = save_inference_model(
            out_dir / "model.pt", net.model, cfg.model.name, cfg.model.args, tuple(cfg.data.input_size),
            extra={"num_classes": batches.num_classes, "experiment": cfg.name, "eval_protocol": cfg.eval.protocol,
                   "head_state_dict": net.head.state_dict() if net.head is not None else None, **(extra_meta or {})},
        )
        summary["model"] = str(model_path)
        if evaluate:
            log(f"evaluating on {len(split.test_subjects)} test subjects")
            t1 = time.perf_counter()
            res = evaluate_on_store(
                net.model, store, split.test_subjects, tuple(cfg.data.input_size), cfg.eval.protocol,
                cfg.eval.metric, cfg.data.test_max_frames, ctx.device, progress, precision=cfg.eval.distance_precision,
            )
            res["eval_seconds"] = round(time.perf_counter() - t1, 1)
            res["model"] = f"{cfg.name} ({label})"
            _, md = write_results(res, out_dir, "results")
            summary["eval"] = rank1_row(res)
            print_summary(res, md)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        cleanup(ctx)
