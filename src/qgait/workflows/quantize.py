"""``qgait quantize``: QGait (methods.md 1) from a full-precision checkpoint.

Calibration of the step sizes on training batches, an optional IDC-only phase (steps + BN statistics),
stage 1 (LSQ + STE, with IDC) and stage 2 (soft quantizer fine-tune, with IDC), each resumable mid-stage and
each evaluated with the config's protocol. PTQ (``quant.config.quantizer: ptq``) stops after calibration.
``quant.fp_reference`` trains the same stages without quantizers: the FP model fine-tuned with the QAT schedule,
the reference for a QAT row's gap to FP.

Run folder: ``calib_last.pt`` / ``stage1_last.pt`` / ``stage2_last.pt`` (training checkpoints),
``stage1_model.pt`` and ``model.pt`` (quantized inference models, kind ``qgait-quant-model``),
``<stage>_results.json|md``, ``quant_summary.txt``, ``summary.json`` and ``interclass_distances.png``.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from ..config import ExperimentConfig, StageConfig, dump_config
from ..engine.checkpoint import (CheckpointError, load_checkpoint, load_inference_model, save_atomic,
                                save_inference_model)
from ..engine.distributed import cleanup
from ..engine.schedule import lr_at
from ..engine.trainer import Trainer
from ..evaluation.distribution import interclass_distances, plot_interclass
from ..evaluation.embedding_stats import embedding_drift
from ..evaluation.extract import extract_embeddings
from ..evaluation.report import format_comparison, rank1_row, write_results
from ..losses import LossSum
from ..losses.idc import IDCTerm
from ..losses.idd import IDDTerm
from ..models import GaitWithHead
from ..quant import alpha_at, calibrate_, quant_summary, quantize_, set_alpha_, set_rounding_, step_parameters
from ..quant.bn_stats import reestimate_bn_stats
from .common import build_losses, build_network, evaluate_with_stats, log, prepare_run
from .distill import (KD_TERMS, cache_stats, combine_outputs, load_teachers, prepare_distillation,
                      teacher_calibration)
from .resume import check_resume, check_teachers, record_teachers
from .train import make_train_batches


def load_fp_network(path: str | Path, cfg: ExperimentConfig, num_classes: int) -> GaitWithHead:
    """The FP network (inference model + BNNeck head) from a training checkpoint (``last.pt``) or a
    ``model.pt`` (its ``head_state_dict`` if saved; otherwise the head starts fresh).

    Raises:
        CheckpointError: missing/corrupt file, weights that do not fit ``cfg``'s model, or a model trained at
            another input size than ``cfg``'s.
    """
    ck = load_checkpoint(path)
    size = ck.get("input_size") or ((ck.get("config") or {}).get("data") or {}).get("input_size")
    if size and tuple(int(v) for v in size) != tuple(cfg.data.input_size):
        raise CheckpointError(f"{path}: trained on {size[0]}x{size[1]} frames, the config {cfg.name!r} trains at "
                              f"{cfg.data.input_size[0]}x{cfg.data.input_size[1]}; use a config of the same input "
                              f"size (or --set data.input_size=[{size[0]},{size[1]}])")
    net = build_network(cfg, num_classes)
    try:
        if ck.get("kind") == "qgait-train":
            net.load_state_dict(ck["model"])
        elif ck.get("kind") == "qgait-model":
            net.model.load_state_dict(ck["state_dict"])
            if net.head is not None and ck.get("head_state_dict"):
                net.head.load_state_dict(ck["head_state_dict"])
        else:
            raise CheckpointError(f"{path}: not a full-precision qgait checkpoint (kind={ck.get('kind')!r})")
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the config's model: {e}") from e
    return net


class FrozenTeacher(nn.Module):
    """The frozen FP model: ``silhouettes -> {"fp_embeddings": [n, c, p]}`` in eval mode, no gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.model.eval()
        return {"fp_embeddings": self.model(x).float()}


def _losses(cfg: ExperimentConfig, stage: int, has_head: bool, idc_only: bool = False,
            kd_terms: dict | None = None) -> tuple[LossSum, bool]:
    """The stage's loss: the task losses (triplet, CE) plus IDC and IDD against the frozen FP model where the
    config enables them for ``stage``, plus the distillation terms ``kd_terms`` (``{name: (module, weight)}``,
    :func:`qgait.workflows.distill.build_distill_terms`; not in the IDC-only phase); ``idc_only``: IDC alone.
    Returns the sum and whether IDC is in it."""
    q = cfg.quant
    use_idc = q.idc is not None and q.idc.weight > 0 and (idc_only or stage in q.idc.stages)
    use_idd = q.idd is not None and q.idd.weight > 0 and stage in q.idd.stages and not idc_only
    if idc_only:
        if not use_idc:
            raise ValueError("the IDC-only calibration phase needs quant.idc with a weight > 0")
        terms = {}
    else:
        base = build_losses(cfg.loss, has_head)
        terms = {k: (m, base.weights[k]) for k, m in base.terms.items()}
    if use_idc:
        i = q.idc
        terms["idc"] = (IDCTerm(i.pairs, i.normalize, i.loss, i.huber_delta), i.weight)
    if use_idd:
        terms["idd"] = (IDDTerm(q.idd.temperature, q.idd.per_part), q.idd.weight)
    if kd_terms and not idc_only:
        terms.update(kd_terms)
    return LossSum(terms), use_idc


def run_quantize(cfg: ExperimentConfig, fp_checkpoint: str | Path, out_dir: str | Path, progress: bool = True,
                 fp_results: dict | None = None, stage1_from: str | Path | None = None,
                 fp_embedding_stats: dict | None = None, teachers: list[str | Path] | None = None,
                 teacher_cache: str | Path | None = None) -> dict:
    """QGait from ``fp_checkpoint`` into ``out_dir``; returns ``{stage: {NM, BG, CL, mean}}`` and timings.

    Every evaluation's JSON carries the embedding-space diagnostics (issue 13): ``embedding_stats`` (per-part
    embedding norm and inter-class mean distance, :func:`qgait.evaluation.embedding_stats.embedding_stats`) and,
    against the FP model's, ``embedding_drift`` (quantized over FP per part, and how far the ratios spread).

    Args:
        fp_results: the FP model's ``{NM, BG, CL, mean}`` (skips evaluating the FP model).
        fp_embedding_stats: the FP model's ``embedding_stats`` (from its results JSON); without them the drift is
            added once the FP model has been evaluated (only when ``fp_results`` is not given).
        stage1_from: a finished run folder whose stage 1 (``stage1_last.pt``, ``stage1_results.json``) this run
            reuses (see :func:`reuse_stage1`), so that stage-2 variants start from one stage-1 model.
        teachers: distillation teachers (checkpoints, :func:`qgait.workflows.distill.load_teacher`; issue 14):
            the config's ``distill`` terms (its defaults without the section: GaitKD's KL + AB) are added to each
            QAT stage's loss next to IDC / IDD (QAT and GaitKD in one pass). Checked before any training; width
            connectors are trained with the stage and kept in the stage checkpoints, not in ``model.pt``.
        teacher_cache: a folder where the teachers' outputs are cached across runs
            (:func:`qgait.workflows.distill.prepare_distillation`); the summary then has ``teacher_cache``.

    Raises:
        ValueError: the config has no ``quant`` section, ``stage1_from``'s stage 1 is unfinished, or a teacher is
            refused (:func:`qgait.workflows.distill.check_teacher`).
        ResumeMismatch: ``out_dir`` holds a run of another architecture or data, or made with other teachers
            (:func:`qgait.workflows.resume.check_resume`; other changed settings are logged and recorded in the
            summary as ``config_changes_on_resume``).
        CheckpointError: the FP checkpoint cannot be loaded into the config's model or was trained at another
            input size, or ``stage1_from`` has no readable ``stage1_last.pt``.
    """
    if cfg.quant is None:
        raise ValueError(f"config {cfg.name!r} has no quant section")
    q = cfg.quant
    out_dir = Path(out_dir)
    kd_teachers = load_teachers(teachers) if teachers else []
    changes = check_resume(cfg, out_dir)  # before anything in out_dir is written
    teacher_record = check_teachers(out_dir, kd_teachers, teachers or [])  # resuming with other teachers is refused
    if stage1_from is not None:
        reuse_stage1(stage1_from, out_dir, q.stage1.iterations)
    ctx, store, split = prepare_run(cfg, out_dir, progress)
    if ctx.is_main:
        record_teachers(out_dir, teacher_record)
    try:
        batches = make_train_batches(cfg, store, split.train_subjects, ctx)
        net = load_fp_network(fp_checkpoint, cfg, batches.num_classes).to(ctx.device)
        if q.channels_last:  # before quantize_ (which keeps the format): step sizes are 1-D, unaffected
            net = net.to(memory_format=torch.channels_last)
        teacher = FrozenTeacher(copy.deepcopy(net.model))
        if not q.fp_reference:  # the FP reference trains the same stages without quantizers
            quantize_(net.model, q.config)
            calib = [x.to(ctx.device) for x, _ in batches.held_out(q.calibration_batches)]
            calibrate_(net.model, calib)
            del calib
        train_net, kd_terms, kd_fn = net, {}, None
        if kd_teachers:
            train_net, kd_terms, kd_fn = prepare_distillation(cfg, kd_teachers, net, ctx.device,
                                                              calib=functools.partial(teacher_calibration, batches),
                                                              cache_dir=teacher_cache)
        summary: dict = {
            "name": cfg.name, "fp_checkpoint": str(fp_checkpoint), "stages": {}, "seconds": {},
            **({"teachers": [str(t) for t in teachers]} if kd_teachers else {}),
            **({"config_changes_on_resume": changes} if changes else {}),
            "bits": ("FP (reference: the QAT schedule without quantizers)" if q.fp_reference else
                     f"mixed (base W{q.config.weight_bits}A{q.config.act_bits}, {len(q.config.bit_map)} bit_map "
                     f"entries)" if q.config.bit_map else f"W{q.config.weight_bits}A{q.config.act_bits}"),
            "quantizer": "none" if q.fp_reference else q.config.quantizer,
            "iterations": 0 if q.config.quantizer == "ptq"
            else q.calib_only.iterations + q.stage1.iterations + q.stage2.iterations,
        }
        size = tuple(cfg.data.input_size)

        fp_stats = {"stats": fp_embedding_stats}

        def evaluate(stage: str, model: nn.Module) -> dict:
            path = out_dir / f"{stage}_results.json"
            if path.is_file():
                res = json.loads(path.read_text())
            else:
                t0 = time.perf_counter()
                res = evaluate_with_stats(model, store, split.test_subjects, cfg, ctx.device, progress,
                                          None if stage == "fp" else fp_stats["stats"])
                res["eval_seconds"] = round(time.perf_counter() - t0, 1)
                res["model"] = f"{cfg.name} {stage}"
                if stage == "fp":
                    fp_stats["stats"] = res["embedding_stats"]
                write_results(res, out_dir, f"{stage}_results")
            row = rank1_row(res)
            summary["stages"][stage] = row
            log(f"{stage}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
            return row

        def save_model(name: str) -> None:
            save_inference_model(
                out_dir / name, net.model, cfg.model.name, cfg.model.args, size,
                quant_config=None if q.fp_reference else q.config.model_dump(mode="json"),
                extra={"experiment": cfg.name, "eval_protocol": cfg.eval.protocol,
                       "head_state_dict": net.head.state_dict() if net.head else None},
            )

        def trainer(stage_name: str, loss_fn, params, iterations: int, lr_fn, hooks=(), train_mode_fn=None):
            opt = torch.optim.SGD(params, lr=lr_fn(0), momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
            extra = combine_outputs(teacher if {"idc", "idd"} & set(loss_fn.terms) else None,
                                    kd_fn if set(KD_TERMS) & set(loss_fn.terms) else None)
            return Trainer(
                train_net, loss_fn, batches, opt, lr_fn, iterations, out_dir, ctx,
                log_every=cfg.train.log_every, save_every=cfg.train.save_every, amp=cfg.train.amp,
                extra_outputs=extra, hooks=hooks,
                train_mode_fn=train_mode_fn, checkpoint_name=f"{stage_name}_last.pt",
                config=dump_config(cfg), progress=progress, tag=stage_name,
            )

        if ctx.is_main and not q.fp_reference:
            (out_dir / "quant_summary.txt").write_text(quant_summary(net.model))
        ptq = q.config.quantizer == "ptq"
        if ptq and ctx.is_main:  # post-training quantization: calibration only, no training
            save_model("model.pt")
            evaluate("final", net.model)
        if q.calib_only.iterations and not ptq:
            loss_fn, _ = _losses(cfg, 0, net.head is not None, idc_only=True)

            def steps_and_bn_stats(m: nn.Module) -> None:  # BN layers update their running statistics
                m.train()

            t0 = time.perf_counter()
            trainer("calib", loss_fn, step_parameters(net.model), q.calib_only.iterations,
                    lambda it: q.calib_only.lr, train_mode_fn=steps_and_bn_stats).fit()
            summary["seconds"]["calib"] = round(time.perf_counter() - t0, 1)

        for idx, st in ((1, q.stage1), (2, q.stage2)):
            if not st.iterations or ptq:
                continue
            run_stage(idx, st, cfg, train_net, trainer, summary, kd_terms)
            intermediate = idx == 1 and q.stage2.iterations
            if not intermediate and q.bn_reestimate_batches:  # deterministic batches: a resumed run gets the same
                n = reestimate_bn_stats(net.model, (x.to(ctx.device) for x, _ in
                                                    batches.iter_held_out(q.bn_reestimate_batches, batches.BN_STREAM)))
                summary["bn_reestimated_batches"] = n
                log(f"stage {idx}: batch-norm statistics re-estimated on {n} training batches")
            if ctx.is_main:
                save_model("stage1_model.pt" if intermediate else "model.pt")
                if not intermediate or q.evaluate_stage1:
                    evaluate(f"stage{idx}", net.model)
        if ctx.is_main:
            if fp_results is None:
                fp_results = evaluate("fp", teacher.model)
                add_drift(out_dir, ("stage1", "stage2", "final"), fp_stats["stats"])
            summary["stages"]["fp"] = fp_results
            drift = {k: json.loads(p.read_text()).get("embedding_drift") for k in ("stage1", "stage2", "final")
                     if (p := out_dir / f"{k}_results.json").is_file()}
            summary["embedding_drift"] = {k: v for k, v in drift.items() if v}
            summary.update(cache_stats(kd_teachers))
            if q.plot:
                models = {"FP": teacher.model}
                if (out_dir / "stage1_model.pt").is_file():
                    models["stage 1"] = load_inference_model(out_dir / "stage1_model.pt")[0]
                models["final"] = net.model
                gallery = plot_gallery(store, split.test_subjects, cfg.eval.protocol)
                labels = [store.records[i].subject for i in gallery]
                dists = {
                    name: interclass_distances(
                        extract_embeddings(m, store, gallery, size, cfg.data.test_max_frames, ctx.device, False),
                        labels, cfg.eval.metric)
                    for name, m in models.items()
                }
                plot_interclass(dists, out_dir / "interclass_distances.png", title=cfg.name)
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(format_comparison({f"{cfg.name} {k}": v for k, v in summary["stages"].items()}))
        return summary
    finally:
        cleanup(ctx)


PLOT_MAX_SEQUENCES = 1000
"""At most this many test sequences in the inter-class distance plot (the first in store order)."""

PLOT_CONDITIONS = {"grew": ("01",), "ccpg": ("U0_D0",), "sustech1k": ("00-nm",), "gait3d": None}
"""The plot's condition per dataset protocol (GREW: the labelled gallery, not the unlabelled ``probe`` subject's
sequences; Gait3D: every sequence); a cross-view protocol's is its first gallery condition (CASIA-B ``nm-01``)."""


def plot_gallery(store, subjects, protocol: str) -> list[int]:
    """Indices of the labelled test sequences whose inter-class distances ``qgait quantize`` plots: one condition
    of ``protocol`` (:data:`PLOT_CONDITIONS`), at most :data:`PLOT_MAX_SEQUENCES`.

    Raises:
        ValueError: no such sequence of ``subjects`` in the store.
    """
    from ..evaluation.cross_view import get_protocol
    from ..evaluation.runner import dataset_protocol

    dataset = dataset_protocol(protocol)
    conditions = PLOT_CONDITIONS[dataset] if dataset else get_protocol(protocol).gallery_conditions[:1]
    idx = store.select(subjects=subjects, conditions=list(conditions) if conditions else None)
    if not idx:
        raise ValueError(f"the inter-class distance plot: no test sequence of the {protocol} protocol's condition "
                         f"{list(conditions or [])} in the store (quant.plot=false skips the plot)")
    return idx[:PLOT_MAX_SEQUENCES]


def add_drift(out_dir: Path, stages: tuple[str, ...], fp_stats: dict | None) -> None:
    """Add ``embedding_drift`` against ``fp_stats`` to the ``<stage>_results.json`` files of ``out_dir`` that have
    ``embedding_stats`` but no drift yet (stages evaluated before the FP model was). Atomic rewrite."""
    if fp_stats is None:
        return
    for stage in stages:
        path = out_dir / f"{stage}_results.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        if "embedding_stats" in res and "embedding_drift" not in res:
            res["embedding_drift"] = embedding_drift(res["embedding_stats"], fp_stats)
            write_results(res, out_dir, f"{stage}_results")


def reuse_stage1(src_dir: str | Path, out_dir: str | Path, iterations: int) -> None:
    """Start ``out_dir`` from the finished stage 1 of the run ``src_dir``: copies ``stage1_last.pt`` (and
    ``stage1_results.json`` when present, so the stage-1 model is not re-evaluated) unless ``out_dir`` already has
    a stage-1 checkpoint (a resumed run keeps its own). Stage 1 then resumes at its last iteration, i.e. is not
    retrained; the config's stage-1 settings must be those of ``src_dir`` (not checked beyond the iteration count).

    Raises:
        CheckpointError: ``src_dir/stage1_last.pt`` is missing or unreadable.
        ValueError: that checkpoint stopped before ``iterations`` (stage 1 unfinished there).
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if (out_dir / "stage1_last.pt").is_file():
        return
    ckpt = load_checkpoint(src_dir / "stage1_last.pt", required=("iteration", "model"))
    if ckpt["iteration"] != iterations:
        raise ValueError(f"{src_dir / 'stage1_last.pt'}: stage 1 stopped at iteration {ckpt['iteration']}, "
                         f"the config's stage 1 has {iterations}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("stage1_results.json", "stage1_results.md"):  # before the checkpoint, whose presence marks done
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)
    save_atomic(ckpt, out_dir / "stage1_last.pt")


def run_stage(idx: int, st: StageConfig, cfg: ExperimentConfig, net: GaitWithHead, trainer, summary: dict,
              kd_terms: dict | None = None) -> None:
    """Train stage ``idx`` (1: LSQ + STE, 2: soft quantizer) with its rounding, lr schedule and alpha schedule;
    ``net`` is the trained network (a :class:`~qgait.workflows.distill.DistillNetwork` with teachers),
    ``kd_terms`` the distillation terms added to the stage's loss."""
    q = cfg.quant
    keep_outputs_ste = st.rounding != "ste" and q.config.soft.outputs == "ste"  # SoftQuantConfig.outputs
    soft = q.config.soft
    set_rounding_(net.model, st.rounding, outputs="ste" if keep_outputs_ste else None, apply_to=soft.apply_to,
                  step_grad=soft.step_grad)
    hooks = []
    if st.rounding != "ste":
        def anneal(it: int, n=st.iterations) -> None:
            set_alpha_(net.model, alpha_at(q.config.soft, it / max(1, n - 1)))

        hooks.append(anneal)
    loss_fn, use_idc = _losses(cfg, idx, net.head is not None, kd_terms=kd_terms)
    t0 = time.perf_counter()
    trainer(f"stage{idx}", loss_fn, net.parameters(), st.iterations,
            lambda it: lr_at(it, st.lr, st.milestones, st.gamma), hooks=hooks).fit()
    summary["seconds"][f"stage{idx}"] = round(time.perf_counter() - t0, 1)
    summary.setdefault("idc", {})[f"stage{idx}"] = use_idc
    summary.setdefault("idd", {})[f"stage{idx}"] = "idd" in loss_fn.terms
    if kd_terms:
        summary.setdefault("kd", {})[f"stage{idx}"] = sorted(set(KD_TERMS) & set(loss_fn.terms))
