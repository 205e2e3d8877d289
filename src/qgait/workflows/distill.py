"""``qgait distill``: train a student with knowledge distillation from frozen teachers (issue 14, items 1-3;
GaitKD, arXiv 2604.26255; methods.md 2).

The student is trained exactly as ``qgait train`` (same trainer, resumable, logged, evaluated at the end) with
the config's ``distill`` section's terms added to its loss (:class:`qgait.losses.LossSum`): GaitKD's part-wise
KL on the BNNeck logits (``loss/kd_kl``) and activation-boundary loss on the part embeddings (``loss/kd_ab``),
and the baselines global KD (``loss/kd_global``) and feature MSE (``loss/kd_mse``) where their weights are > 0.

Teachers are qgait checkpoints given on the command line (``--teacher``, repeatable): a ``model.pt`` (with its
``head_state_dict``: a BNNeck head gives logits) or a training ``last.pt`` (its own config rebuilds it). A
teacher's architecture comes from its own checkpoint, so it may differ from the student's (width, embedding
size, part count). :func:`check_teacher` refuses, before training, a teacher whose input size differs from the
student's, one without a head when a logit term is on, and one with a different class count (other training
subjects). Embedding widths that differ get a training-only :class:`~qgait.distill.align.PartConnector` held by
:class:`DistillNetwork` (the trainer's network, so the training checkpoint and DDP cover it); ``model.pt`` holds
the student's inference model and head only. Part counts are aligned by the terms (``distill.part_align``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import DistillConfig, ExperimentConfig
from ..distill import MultiTeacher, Teacher, build_connector
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..losses.distill import ABTerm, FeatureMSETerm, GlobalKDTerm, PartKLTerm
from ..models import GaitWithHead, build_model
from .common import log
from .resume import check_teachers, record_teachers
from .train import train_model

__all__ = ["DistillNetwork", "KD_TERMS", "build_distill_terms", "check_teacher", "combine_outputs",
           "teacher_calibration",
           "load_teacher", "load_teachers", "prepare_distillation", "run_distill", "cache_stats"]

KD_TERMS = ("kd_kl", "kd_global", "kd_ab", "kd_mse")  # LossSum names: logged as loss/<name>
_TRAIN_TAGS = (None, "train", "distill")  # training checkpoints of a full-precision model


def load_teacher(path: str | Path, prefix: str = "teacher") -> Teacher:
    """A frozen :class:`Teacher` (CPU) from a full-precision qgait checkpoint.

    ``model.pt`` (kind ``qgait-model``): the model from its ``model_name`` / ``model_args``, the BNNeck head from
    ``head_state_dict`` when saved (else no head: no logits). A training checkpoint (kind ``qgait-train``, tag
    ``train`` or ``distill``): the model and head from the checkpoint's own config and weights (a distillation
    run's connectors are ignored). The teacher gets ``input_size`` (the checkpoint's, ``(H, W)``) and ``path``
    attributes for :func:`check_teacher`.

    Raises:
        CheckpointError: missing or unreadable file, a quantized or quantization-stage checkpoint, a training
            checkpoint without its config, or weights that do not fit the saved architecture (the message names
            the file).
    """
    path = Path(path)
    ck = load_checkpoint(path)
    kind = ck.get("kind")
    try:
        if kind == "qgait-model":
            name, args = ck.get("model_name"), ck.get("model_args") or {}
            state, head_state = ck.get("state_dict"), ck.get("head_state_dict")
            if not isinstance(name, str) or not isinstance(state, dict):
                raise CheckpointError(f"{path}: model checkpoint lacks model_name or state_dict")
            input_size = ck.get("input_size")
            model = build_model(name, **args)
            model.load_state_dict(state)
            num_classes = int(head_state["weight"].shape[-1]) if head_state else None
            net = GaitWithHead(model, num_classes)
            if head_state:
                net.head.load_state_dict(head_state)
        elif kind == "qgait-train":
            if ck.get("tag") not in _TRAIN_TAGS:
                raise CheckpointError(f"{path}: a {ck.get('tag')!r} checkpoint of a quantization run, not a "
                                      "full-precision teacher; give a training run's model.pt or last.pt")
            cfg = ck.get("config") or {}
            mcfg, dcfg = cfg.get("model"), cfg.get("data") or {}
            if not isinstance(mcfg, dict) or "name" not in mcfg or not isinstance(ck.get("model"), dict):
                raise CheckpointError(f"{path}: training checkpoint lacks its config's model section or weights")
            input_size = dcfg.get("input_size")
            weights = {k: v for k, v in ck["model"].items() if k.startswith(("model.", "head."))}
            num_classes = int(weights["head.weight"].shape[-1]) if "head.weight" in weights else None
            net = GaitWithHead(build_model(mcfg["name"], **(mcfg.get("args") or {})), num_classes)
            net.load_state_dict(weights)
        else:
            raise CheckpointError(f"{path}: not a full-precision qgait checkpoint (kind={kind!r}); a teacher is a "
                                  "training run's model.pt or last.pt")
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: cannot rebuild the teacher from its checkpoint: {e}") from e
    teacher = Teacher(net, prefix)
    teacher.input_size = tuple(int(v) for v in input_size) if input_size is not None else None
    teacher.path = path
    return teacher


def check_teacher(teacher: Teacher, student_net: GaitWithHead, path: str | Path, *,
                  input_size: Sequence[int] | None = None, needs_logits: bool = True) -> None:
    """Refuse a teacher that cannot teach ``student_net``; call before training.

    Args:
        teacher: from :func:`load_teacher` (its ``input_size`` attribute, if any, is compared).
        student_net: the student (its head gives the class count).
        path: the teacher's file, named in every message.
        input_size: the student's ``data.input_size``.
        needs_logits: a logit term (KL, global KD) is on: the teacher needs a BNNeck head with the student's
            class count, and the student a head.

    Raises:
        ValueError: input sizes differ; ``needs_logits`` and the teacher (or student) has no head, or the class
            counts differ (a teacher trained on other subjects). The message names the file and both values.
    """
    t_size = getattr(teacher, "input_size", None)
    if input_size is not None and t_size is not None and tuple(t_size) != tuple(input_size):
        raise ValueError(f"teacher {path}: input size {list(t_size)} differs from the student's data.input_size "
                         f"{list(input_size)}; a teacher sees the student's batches")
    if not needs_logits:
        return
    if teacher.num_classes is None:
        raise ValueError(f"teacher {path}: no BNNeck head (no logits), but distill.kl / distill.global_kd is on; "
                         "set their weights to 0 or give a teacher saved with its head")
    head = getattr(student_net, "head", None)
    if head is None:
        raise ValueError(f"teacher {path}: the student has no BNNeck head (model.head: none), but distill.kl / "
                         "distill.global_kd is on")
    s_classes = int(head.weight.shape[-1])
    if teacher.num_classes != s_classes:
        raise ValueError(f"teacher {path}: {teacher.num_classes} classes, the student has {s_classes}; logit "
                         "distillation needs a teacher trained on the same training subjects")


def load_teachers(paths: Sequence[str | Path]) -> list[Teacher]:
    """:func:`load_teacher` for each path (prefixes ``"teacher"`` for one, ``"teacher0"``, ... for several).

    Raises:
        ValueError: no path; CheckpointError: as :func:`load_teacher`.
    """
    if not paths:
        raise ValueError("distillation needs at least one --teacher checkpoint")
    if len(paths) == 1:
        return [load_teacher(paths[0])]
    return [load_teacher(p, f"teacher{i}") for i, p in enumerate(paths)]


def _uses_logits(d: DistillConfig) -> bool:
    return d.kl.weight > 0 or d.global_kd.weight > 0


def _uses_embeddings(d: DistillConfig) -> bool:
    return d.ab.weight > 0 or d.feature_mse.weight > 0


class DistillNetwork(nn.Module):
    """The training network of a distillation run: the student (``model``, ``head``, as
    :class:`~qgait.models.GaitWithHead`) plus the training-only width connectors, one per teacher whose
    embedding width differs. Outputs the student's (``embeddings``, ``bn_embeddings``, ``logits``) and, per
    teacher prefix ``t``, ``embeddings_to_{t}``: the student's embeddings through ``t``'s connector (the
    embeddings themselves without one), which the AB / MSE terms read (``key="embeddings_to_{teacher}"``).
    ``model`` alone is the inference model; the connectors are in the training checkpoint, never in ``model.pt``.
    """

    def __init__(self, net: GaitWithHead, prefixes: Sequence[str],
                 connectors: Mapping[str, nn.Module | None] | None = None) -> None:
        super().__init__()
        self.model, self.head = net.model, net.head
        self.prefixes = tuple(prefixes)
        self.connectors = nn.ModuleDict({k: v for k, v in (connectors or {}).items() if v is not None})

    def forward(self, silhouettes: Tensor) -> dict[str, Tensor]:
        emb = self.model(silhouettes)
        out = {"embeddings": emb}
        if self.head is not None:
            out["bn_embeddings"], out["logits"] = self.head(emb)
        for p in self.prefixes:
            out[f"embeddings_to_{p}"] = self.connectors[p](emb) if p in self.connectors else emb
        return out


def build_distill_terms(d: DistillConfig, prefixes: Sequence[str], scale: float = 16.0) -> dict:
    """The enabled distillation terms as LossSum entries ``{name: (module, weight)}`` (names :data:`KD_TERMS`).

    ``scale`` is the cross-entropy's logit scale ``gamma`` (``loss.ce.scale``). Embedding terms read
    ``embeddings_to_{teacher}`` (:class:`DistillNetwork`).
    """
    prefixes = tuple(prefixes)
    terms: dict = {}
    if d.kl.weight > 0:
        terms["kd_kl"] = (PartKLTerm(prefixes, scale, d.kl.temperature, d.kl.calibration, d.kl.epsilon,
                                     ensemble=d.ensemble and len(prefixes) > 1, part_align=d.part_align),
                          d.kl.weight)
    if d.global_kd.weight > 0:
        terms["kd_global"] = (GlobalKDTerm(prefixes, scale, d.global_kd.temperature,
                                           ensemble=d.ensemble and len(prefixes) > 1), d.global_kd.weight)
    if d.ab.weight > 0:
        terms["kd_ab"] = (ABTerm(prefixes, d.ab.margin, part_align=d.part_align, key="embeddings_to_{teacher}"),
                          d.ab.weight)
    if d.feature_mse.weight > 0:
        terms["kd_mse"] = (FeatureMSETerm(prefixes, part_align=d.part_align, key="embeddings_to_{teacher}"),
                           d.feature_mse.weight)
    if not terms:
        raise ValueError("distill: every term has weight 0 (kl, ab, global_kd, feature_mse)")
    return terms


def combine_outputs(*fns):
    """One ``extra_outputs`` callable from several (``None`` skipped): their dicts merged, in order; ``None``
    when none is given."""
    fns = [f for f in fns if f is not None]
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def merged(x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for f in fns:
            out.update(f(x))
        return out

    return merged


def teacher_calibration(batches, n: int = 2) -> list[torch.Tensor]:
    """The int8 teachers' calibration batches: ``n`` training batches at fixed indices past any training iteration
    (:meth:`~qgait.data.loader.TrainBatches.held_out`), the same on every start and resume of a run;
    ``[[n_b, T, h, w], ...]``."""
    return [x for x, _ in batches.held_out(n)]


def prepare_distillation(cfg: ExperimentConfig, teachers: Sequence[Teacher], net: GaitWithHead, device,
                         calib: Callable[[], Sequence[torch.Tensor]] | None = None,
                         cache_dir: str | Path | None = None):
    """Check ``teachers`` against the student ``net`` and build what a distillation run adds; sets each teacher's
    forward precision from ``distill.teacher_amp`` (:attr:`qgait.distill.Teacher.amp`; ``int8``:
    :meth:`qgait.distill.Teacher.quantize_int8` on the batches ``calib()`` returns) and, with
    ``train.channels_last`` (as the student), puts the teachers' weights in channels-last memory format: the same
    outputs (bit-identical in bf16, within 1.1e-6 in float32) from a 1.2-1.8x faster forward on this CPU
    (``benchmarks/teacher_forward.py``; docs/distillation.md, "Teacher precision"). With ``cache_dir`` each
    teacher reads its outputs on a batch it has seen before from that disk cache (:meth:`Teacher.use_cache`:
    bit-identical inputs to the same computation only; docs/distillation.md, "Teacher output cache").

    Returns:
        ``(train_net, terms, teacher_fn)``: the :class:`DistillNetwork` (with connectors, on ``device``), the
        LossSum entries (:func:`build_distill_terms`) and the teachers' ``extra_outputs`` (on ``device``).

    Raises:
        ValueError: a teacher that :func:`check_teacher` refuses; all weights 0; ``teacher_amp: int8`` without
            ``calib`` or on a device other than the CPU.
    """
    d = cfg.distill or DistillConfig()
    if d.teacher_amp == "int8" and (calib is None or torch.device(device).type != "cpu"):
        raise ValueError("distill.teacher_amp int8 runs the teachers on the CPU's int8 kernels and needs "
                         f"calibration batches; this run is on {torch.device(device).type}"
                         + ("" if calib is not None else " without calibration batches")
                         + ": use teacher_amp bf16 or none")
    for t in teachers:
        check_teacher(t, net, getattr(t, "path", t.prefix), input_size=cfg.data.input_size,
                      needs_logits=_uses_logits(d))
        t.amp = torch.bfloat16 if d.teacher_amp == "bf16" else None
    prefixes = [t.prefix for t in teachers]
    connectors = {}
    if _uses_embeddings(d):
        s_parts, s_width = int(net.model.parts), int(net.model.embed_dim)
        for t in teachers:
            if t.embed_dim is None:
                raise ValueError(f"teacher {getattr(t, 'path', t.prefix)}: its model does not tell its embedding "
                                 "width (embed_dim)")
            connectors[t.prefix] = build_connector(s_parts, s_width, t.embed_dim)
            if connectors[t.prefix] is not None:
                log(f"teacher {getattr(t, 'path', t.prefix)}: width {t.embed_dim} vs student {s_width}: "
                    "training-only connector")
    train_net = DistillNetwork(net, prefixes, connectors).to(device)
    scale = cfg.loss.ce.scale if cfg.loss.ce is not None else 16.0
    terms = build_distill_terms(d, prefixes, scale)
    for t in teachers:
        t.to(device)
        if cfg.train.channels_last:
            t.to(memory_format=torch.channels_last)
    if d.teacher_amp == "int8":
        batches = list(calib())
        for t in teachers:
            t.quantize_int8(batches)
        log(f"teachers' backbones in int8 (PT2E, calibrated on {len(batches)} training batches)")
    if cache_dir is not None:
        for t in teachers:
            t.use_cache(cache_dir, channels_last=cfg.train.channels_last,
                        description={"checkpoint": str(getattr(t, "path", t.prefix))})
            log(f"teacher {getattr(t, 'path', t.prefix)}: output cache {t.cache.folder}")
    fn = teachers[0] if len(teachers) == 1 else MultiTeacher(list(teachers))
    return train_net, terms, fn


def run_distill(cfg: ExperimentConfig, teacher_paths: Sequence[str | Path], out_dir: str | Path,
                progress: bool = True, resume: bool = True, evaluate: bool = True,
                teacher_cache: str | Path | None = None) -> dict:
    """Train ``cfg``'s student into ``out_dir`` with distillation from ``teacher_paths`` (as
    :func:`qgait.workflows.train.run_train`: resumable from ``out_dir/last.pt``, ``model.pt``, evaluation).

    The config's ``distill`` section (or, without one, :class:`~qgait.config.DistillConfig`'s defaults: GaitKD's
    reference) sets the terms. Teachers are loaded and checked before any training. ``teacher_cache``: a folder
    where the teachers' outputs are cached across runs (:func:`prepare_distillation`).

    Returns:
        The summary of :func:`run_train` plus ``"teachers"`` (the checkpoint paths) and, with ``teacher_cache``,
        ``"teacher_cache"`` (per teacher: the cache folder, hits and misses of this start).

    Raises:
        CheckpointError: a teacher file is missing or unreadable (:func:`load_teacher`).
        ValueError: no teacher; a teacher refused by :func:`check_teacher` (the message names its file).
        ResumeMismatch: resuming ``out_dir`` with other teachers than its run's
            (:func:`qgait.workflows.resume.check_teachers`; the teachers are recorded in ``teachers.json``).
    """
    teachers = load_teachers(teacher_paths)
    d = cfg.distill or DistillConfig()
    for t in teachers:  # what can be checked before opening the data
        check_teacher(t, None, t.path, input_size=cfg.data.input_size, needs_logits=False)
        if _uses_logits(d) and t.num_classes is None:
            check_teacher(t, None, t.path, needs_logits=True)
    names = [str(p) for p in teacher_paths]
    teacher_record = check_teachers(out_dir, teachers, teacher_paths, resume)  # the run's teachers, or refused

    def setup(net, loss_fn, batches, ctx):
        if ctx.is_main:
            record_teachers(out_dir, teacher_record)
        train_net, terms, fn = prepare_distillation(cfg, teachers, net, ctx.device,
                                                    calib=functools.partial(teacher_calibration, batches),
                                                    cache_dir=teacher_cache)
        from ..losses import LossSum

        all_terms = {k: (m, loss_fn.weights[k]) for k, m in loss_fn.terms.items()}
        all_terms.update(terms)
        log("distillation terms: " + ", ".join(f"{k} x{w:g}" for k, (_, w) in all_terms.items()))
        return train_net, LossSum(all_terms), fn

    return train_model(cfg, out_dir, resume=resume, progress=progress, evaluate=evaluate, setup=setup,
                       tag="distill", label="FP32, distilled", extra_meta={"teachers": names},
                       end_meta=functools.partial(cache_stats, teachers))


def cache_stats(teachers: Sequence[Teacher]) -> dict:
    """``{"teacher_cache": [{"dir", "hits", "misses"}, ...]}`` of the teachers that use an output cache; ``{}``
    when none does."""
    stats = [t.cache.stats() for t in teachers if t.cache is not None]
    return {"teacher_cache": stats} if stats else {}
