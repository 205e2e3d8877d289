"""Knowledge-distillation losses for part-based gait models: GaitKD (arXiv 2604.26255; methods.md 2) and its
baselines.

Notation: the student's and a frozen teacher's BNNeck outputs are part-wise cosine logits ``z [n, C, p]`` (in
[-1, 1]; :class:`qgait.models.blocks.BNNeckHead`) and part embeddings ``e [n, c, p]`` (the per-part FC output,
before the BNNeck). ``gamma`` is the cross-entropy's logit scale (16), ``T`` the temperature (4), ``m`` the AB
margin (1). Teachers are never differentiated (their tensors are detached).

**Decision level, part-wise logit distillation** (:func:`part_kl_loss`; Hinton et al., "Distilling the Knowledge
in a Neural Network", 2015, applied per part as GaitKD does)::

    P_t[i, :, k] = softmax_C(gamma z_t[i, :, k] / T)         (teacher; optionally calibrated, below)
    P_s[i, :, k] = softmax_C(gamma z_s[i, :, k] / T)
    L_KL = T^2 / (n q) * sum_{i, k} sum_c P_t[i, c, k] (log P_t[i, c, k] - log P_s[i, c, k])

summed over classes, averaged over the ``n`` samples and the ``q`` (aligned) parts: exactly the reference's
``kl_div(reduction="batchmean") * T^2 / p`` on ``[n, C, p]``. ``T^2`` keeps the gradient's size independent of
``T`` (Hinton et al.). Calibrated targets (GaitKD's knowledge-adjusted variants), for the (sample, part) entries
whose teacher top-1 ``argmax_c P_t[i, c, k]`` is not the label ``y_i``:

- ``"ka_ps"`` (probability shift): swap ``P_t[i, argmax, k]`` and ``P_t[i, y_i, k]`` (the row stays a
  distribution; its top-1 becomes the label).
- ``"ka_lsr"`` (label-smoothing replacement): the row becomes ``1 - eps`` on ``y_i`` and ``eps / (C - 1)`` on
  every other class (as the reference code; sums to 1).

Several teachers: either one term per teacher, summed (the reference), or the ensemble: ``P_t`` is the mean of
the teachers' softened distributions (calibration, if any, then applies to the mean).

**Boundary level, activation-boundary loss** (:func:`ab_loss`; Heo et al., "Knowledge Transfer via Distillation
of Activation Boundaries Formed by Hidden Neurons", AAAI 2019) on the embeddings, element-wise for student value
``s`` and teacher value ``t`` at the same (sample, channel, part)::

    l(s, t) = (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]
    L_AB    = 1 / (n q) * sum_{i, j, k} l(e_s[i, j, k], e_t[i, j, k])

summed over channels, averaged over samples and parts (the reference flattens ``[n, c, p]`` to ``[n p, c]``,
sums and divides by ``n p``). It is zero exactly where the student agrees with the teacher's sign beyond the
margin (``t > 0, s >= m`` or ``t <= 0, s <= -m``): it transfers the teacher's activation pattern, not its values.

**Baselines**: :func:`global_kd_loss` (plain KD on one logit vector per sample: the part logits averaged over
parts, then the KL above with ``q = 1``) and :func:`feature_mse_loss` (mean squared error between student and
teacher embeddings, averaged over every element).

**Heterogeneous pairs** (:mod:`qgait.distill.align`): parts are aligned to ``q = min(p_s, p_t)`` by adaptive
average pooling over the part axis (or truncation); embedding widths by a training-only
:class:`~qgait.distill.align.PartConnector` ``[c_s -> c_t]`` applied to the student's embeddings (over its own
``p_s`` parts, before the part alignment). Logits need equal class counts (same training subjects).

**Loss terms** (for :class:`qgait.losses.LossSum`): :class:`PartKLTerm`, :class:`GlobalKDTerm`, :class:`ABTerm`,
:class:`FeatureMSETerm` read the student's ``outputs["logits"]`` / ``outputs["embeddings"]`` and, for each teacher
prefix ``t`` (``"teacher"`` for :class:`qgait.distill.Teacher`; ``"teacher0"``, ``"teacher1"``, ... for
:class:`qgait.distill.MultiTeacher`), ``outputs[f"{t}_logits"]`` / ``outputs[f"{t}_embeddings"]``. With several
prefixes the per-teacher losses are summed (or, for the logit terms with ``ensemble=True``, the averaged
distribution is distilled). A term's connectors are its submodules: the optimizer must include the loss's
parameters, and they are not in the student's state dict. A ``"{teacher}"`` in a term's student ``key`` is
replaced by each teacher's prefix, for student outputs computed per teacher (e.g. by connectors that live in the
training network instead of the term).

Losses are computed in float32 (float64 when an input is float64) whatever the input dtype (bf16 autocast).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distill.align import PART_ALIGN_MODES, align_pair, align_parts, common_parts

__all__ = [
    "CALIBRATIONS",
    "calibrate_teacher_probs",
    "teacher_probs",
    "ensemble_logits",
    "part_kl_loss",
    "global_kd_loss",
    "ab_loss",
    "feature_mse_loss",
    "PartKLTerm",
    "GlobalKDTerm",
    "ABTerm",
    "FeatureMSETerm",
]

CALIBRATIONS = ("none", "ka_ps", "ka_lsr")
Calibration = Literal["none", "ka_ps", "ka_lsr"]


# ----------------------------------------------------------------------------------------------- helpers
def _dtype(*xs: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _check_kl_options(scale: float, temperature: float, calibration: str, epsilon: float, part_align: str) -> None:
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if part_align not in PART_ALIGN_MODES:
        raise ValueError(f"part_align must be one of {PART_ALIGN_MODES}, got {part_align!r}")


def _as_list(z_t: Tensor | Sequence[Tensor]) -> list[Tensor]:
    teachers = [z_t] if isinstance(z_t, Tensor) else list(z_t)
    if not teachers:
        raise ValueError("at least one teacher tensor is needed")
    return teachers


def _check_logits(z_s: Tensor | None, teachers: list[Tensor]) -> None:
    """Logits are ``[n, C, p]``; one ``n`` and one ``C`` for all (the part counts may differ)."""
    ref = z_s if z_s is not None else teachers[0]
    for name, z in [("student", z_s)] + [(f"teacher {i}", z) for i, z in enumerate(teachers)]:
        if z is None:
            continue
        if z.dim() != 3:
            raise ValueError(f"{name} logits must be [n, C, p], got shape {tuple(z.shape)}")
        if z.shape[0] != ref.shape[0]:
            raise ValueError(f"{name} logits have batch size {z.shape[0]}, expected {ref.shape[0]}")
        if z.shape[1] != ref.shape[1]:
            what = "student" if z_s is not None else "teacher 0"
            raise ValueError(
                f"class counts differ: {what} has {ref.shape[1]} classes, {name} has {z.shape[1]}; logit "
                "distillation needs a teacher trained on the same subjects (same classifier classes)"
            )


def _check_labels(labels: Tensor | None, n: int, num_classes: int) -> Tensor:
    if labels is None:
        raise ValueError("calibration 'ka_ps' / 'ka_lsr' needs the labels")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be [n={n}], got shape {tuple(labels.shape)}")
    labels = labels.long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


# ----------------------------------------------------------------------------------------------- decision level
@torch.no_grad()
def calibrate_teacher_probs(p_t: Tensor, labels: Tensor, calibration: Calibration = "none",
                            epsilon: float = 0.1) -> Tensor:
    """Knowledge-adjusted teacher targets (GaitKD's KA-PS / KA-LSR) on the rows where the teacher is wrong.

    Args:
        p_t: ``[n, C, p]`` teacher probabilities (each ``[i, :, k]`` a distribution).
        labels: ``[n]`` class indices in ``[0, C)``.
        calibration: ``"none"`` (returned unchanged), ``"ka_ps"`` (swap the probabilities of the teacher's top-1
            and of the label) or ``"ka_lsr"`` (replace the row by ``1 - eps`` on the label, ``eps / (C - 1)``
            elsewhere; with ``C == 1`` the row is 1).
        epsilon: the smoothing ``eps`` of ``"ka_lsr"``.

    Returns:
        A new ``[n, C, p]`` tensor (``p_t`` is not modified); the rows whose top-1 is the label are unchanged.

    Raises:
        ValueError: unknown ``calibration``; ``labels`` not ``[n]`` class indices in range.
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if calibration == "none":
        return p_t
    n, num_classes, parts = p_t.shape
    labels = _check_labels(labels, n, num_classes)
    y = labels.view(n, 1, 1).expand(n, 1, parts)  # [n, 1, p]
    pred = p_t.argmax(dim=1, keepdim=True)  # [n, 1, p]
    wrong = pred != y  # [n, 1, p]
    if calibration == "ka_ps":
        p_pred, p_true = p_t.gather(1, pred), p_t.gather(1, y)
        out = p_t.clone()
        # where the teacher is right pred == y and both writes put back the same value
        out.scatter_(1, pred, torch.where(wrong, p_true, p_pred))
        out.scatter_(1, y, torch.where(wrong, p_pred, p_true))
        return out
    off = epsilon / (num_classes - 1) if num_classes > 1 else 0.0
    smooth = torch.full_like(p_t, off)
    smooth.scatter_(1, y, 1.0 - epsilon if num_classes > 1 else 1.0)
    return torch.where(wrong, smooth, p_t)


@torch.no_grad()
def teacher_probs(z_t: Tensor | Sequence[Tensor], parts: int | None = None, scale: float = 16.0,
                  temperature: float = 4.0, part_align: Literal["pool", "truncate"] = "pool") -> Tensor:
    """Softened teacher distribution ``softmax_C(gamma z_t / T)``, ``[n, C, q]``; for a list of teachers the mean
    of their distributions (the ensemble). Each teacher's logits are first aligned to ``q`` parts (default: the
    smallest teacher part count). No gradient.

    Raises:
        ValueError: not ``[n, C, p]``, batch sizes or class counts differ, ``parts`` above a teacher's count.
    """
    teachers = _as_list(z_t)
    _check_logits(None, teachers)
    q = parts if parts is not None else common_parts(*(z.shape[-1] for z in teachers))
    dt = _dtype(*teachers)
    probs = [F.softmax(align_parts(z.detach().to(dt), q, part_align) * (scale / temperature), dim=1)
             for z in teachers]
    return probs[0] if len(probs) == 1 else torch.stack(probs).mean(dim=0)


@torch.no_grad()
def ensemble_logits(z_t: Sequence[Tensor], scale: float = 16.0, temperature: float = 4.0,
                    part_align: Literal["pool", "truncate"] = "pool") -> Tensor:
    """Pseudo-logits of the teachers' ensemble: ``(T / gamma) log(mean_k softmax_C(gamma z_k / T))``.

    ``softmax_C(gamma z / T)`` of the result is exactly the averaged distribution of :func:`teacher_probs`, so
    :func:`part_kl_loss` on them distils the ensemble **at the same** ``gamma`` **and** ``T`` only. Computed with
    ``logsumexp`` (finite). ``[n, C, q]``, ``q`` the smallest teacher part count. No gradient.

    Raises:
        ValueError: as :func:`teacher_probs`.
    """
    teachers = _as_list(z_t)
    _check_logits(None, teachers)
    q = common_parts(*(z.shape[-1] for z in teachers))
    dt = _dtype(*teachers)
    logp = torch.stack([F.log_softmax(align_parts(z.detach().to(dt), q, part_align) * (scale / temperature), dim=1)
                        for z in teachers])
    log_mean = torch.logsumexp(logp, dim=0) - math.log(len(teachers))
    return log_mean * (temperature / scale)


def part_kl_loss(
    z_s: Tensor,
    z_t: Tensor | Sequence[Tensor],
    labels: Tensor | None = None,
    scale: float = 16.0,
    temperature: float = 4.0,
    calibration: Calibration = "none",
    epsilon: float = 0.1,
    part_align: Literal["pool", "truncate"] = "pool",
) -> Tensor:
    """GaitKD's part-wise logit distillation (module docstring):
    ``T^2 / (n q) * sum_{i,k} KL(P_t[i, :, k] || P_s[i, :, k])``, ``P = softmax_C(gamma z / T)``.

    Args:
        z_s: ``[n, C, p_s]`` student cosine logits (the gradient flows here).
        z_t: ``[n, C, p_t]`` teacher cosine logits (detached), or a list of them: the ensemble, whose target is the
            mean of the teachers' softened distributions.
        labels: ``[n]`` class indices; needed only by ``calibration != "none"``.
        scale: ``gamma``, the cross-entropy's logit scale (16).
        temperature: ``T`` (4); the loss is multiplied by ``T^2``.
        calibration: ``"none"`` (the reference configuration), ``"ka_ps"`` or ``"ka_lsr"``
            (:func:`calibrate_teacher_probs`).
        epsilon: the ``"ka_lsr"`` smoothing.
        part_align: how parts are aligned to ``q = min(p_s, p_t)`` (``"pool"`` or ``"truncate"``).

    Returns:
        Scalar (float32; float64 if an input is float64), in nats times ``T^2``, per (sample, part); >= 0, and 0
        when the student's logits equal the (uncalibrated) teacher's.

    Raises:
        ValueError: not ``[n, C, p]``; batch sizes differ; class counts differ (the message names both); invalid
            options; calibration without valid labels.
    """
    _check_kl_options(scale, temperature, calibration, epsilon, part_align)
    teachers = _as_list(z_t)
    _check_logits(z_s, teachers)
    n = z_s.shape[0]
    q = common_parts(z_s.shape[-1], *(z.shape[-1] for z in teachers))
    dt = _dtype(z_s, *teachers)
    p_t = teacher_probs(teachers, q, scale, temperature, part_align)
    if calibration != "none":
        p_t = calibrate_teacher_probs(p_t, labels, calibration, epsilon)
    log_p_s = F.log_softmax(align_parts(z_s.to(dt), q, part_align) * (scale / temperature), dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="sum")  # sum over samples, classes and parts; 0 log 0 = 0
    return kl * (temperature**2) / (n * q)


def global_kd_loss(
    z_s: Tensor,
    z_t: Tensor | Sequence[Tensor],
    labels: Tensor | None = None,
    scale: float = 16.0,
    temperature: float = 4.0,
    calibration: Calibration = "none",
    epsilon: float = 0.1,
) -> Tensor:
    """Plain KD baseline (Hinton et al., 2015) on one logit vector per sample: the part logits averaged over
    parts, ``zbar = mean_k z[:, :, k]`` ``[n, C]``, then ``T^2 / n * sum_i KL(softmax(gamma zbar_t / T) ||
    softmax(gamma zbar_s / T))``. Part counts may differ (each side is averaged over its own parts). Arguments,
    returns and errors as :func:`part_kl_loss`; a list ``z_t`` averages the teachers' distributions.
    """
    teachers = _as_list(z_t)
    _check_logits(z_s, teachers)
    return part_kl_loss(
        z_s.mean(dim=2, keepdim=True), [z.mean(dim=2, keepdim=True) for z in teachers], labels,
        scale, temperature, calibration, epsilon,
    )


# ----------------------------------------------------------------------------------------------- boundary level
def _check_pair(e_s: Tensor, e_t: Tensor) -> None:
    if e_s.dim() != 3 or e_s.shape != e_t.shape:
        raise ValueError(
            f"student and teacher embeddings must both be [n, c, p] of one shape (align parts and widths first: "
            f"qgait.distill.align); got {tuple(e_s.shape)} and {tuple(e_t.shape)}"
        )


def ab_loss(e_s: Tensor, e_t: Tensor, margin: float = 1.0) -> Tensor:
    """Activation-boundary loss (Heo et al., AAAI 2019) as in GaitKD (module docstring)::

        L_AB = 1/(n p) * sum_{i,j,k} (s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0]

    Args:
        e_s: ``[n, c, p]`` student embeddings (through the connector if widths differ; the gradient flows here).
        e_t: ``[n, c, p]`` teacher embeddings (detached; only their signs matter).
        margin: ``m`` (>= 0; 1 in GaitKD).

    Returns:
        Scalar: summed over channels, averaged over samples and parts (float32; float64 kept). Exactly 0 when
        every student value is on the teacher's side beyond the margin (``t > 0, s >= m`` or ``t <= 0, s <= -m``).

    Raises:
        ValueError: shapes differ or are not ``[n, c, p]``; ``margin < 0``.
    """
    _check_pair(e_s, e_t)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    dt = _dtype(e_s, e_t)
    s, t = e_s.to(dt), e_t.detach().to(dt)
    pos = t > 0
    loss = (s + margin).pow(2) * ((s > -margin) & ~pos) + (s - margin).pow(2) * ((s <= margin) & pos)
    n, _, p = s.shape
    return loss.sum() / (n * p)


def feature_mse_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Feature-regression baseline: ``mean_{i,j,k} (e_s[i, j, k] - e_t[i, j, k])^2`` (averaged over samples,
    channels and parts, ``F.mse_loss``'s mean, as the reference's feature MSE).

    Args:
        e_s: ``[n, c, p]`` student embeddings (through the connector if widths differ).
        e_t: ``[n, c, p]`` teacher embeddings (detached).

    Raises:
        ValueError: shapes differ or are not ``[n, c, p]``.
    """
    _check_pair(e_s, e_t)
    dt = _dtype(e_s, e_t)
    return F.mse_loss(e_s.to(dt), e_t.detach().to(dt))


# ----------------------------------------------------------------------------------------------- loss terms
def _prefixes(teachers: str | Sequence[str]) -> tuple[str, ...]:
    out = (teachers,) if isinstance(teachers, str) else tuple(teachers)
    if not out or len(set(out)) != len(out) or not all(isinstance(t, str) and t for t in out):
        raise ValueError(f"teachers must be one or more distinct output prefixes, got {teachers!r}")
    return out


def _read(outputs: Mapping[str, Tensor], key: str, hint: str) -> Tensor:
    try:
        return outputs[key]
    except KeyError:
        raise KeyError(f"outputs have no {key!r} ({hint}); available: {sorted(outputs)}") from None


class _TeacherTerm(nn.Module):
    """Shared plumbing: the teacher prefixes, the student key, per-teacher info."""

    kind = "logits"
    tag = "kd"

    def __init__(self, teachers: str | Sequence[str], key: str) -> None:
        super().__init__()
        self.teachers, self.key = _prefixes(teachers), key

    def _student(self, outputs: Mapping[str, Tensor], prefix: str) -> Tensor:
        """``outputs[key]``; a ``"{teacher}"`` in ``key`` is replaced by the teacher's prefix (per-teacher
        student outputs, e.g. embeddings already mapped to that teacher's width by the training network)."""
        return _read(outputs, self.key.replace("{teacher}", prefix), "the student's output")

    def _teacher(self, outputs: Mapping[str, Tensor], prefix: str) -> Tensor:
        hint = ("the teacher has no BNNeck head, or it is not in the outputs" if self.kind == "logits"
                else "the teacher's outputs must be merged into the student's, e.g. Trainer(extra_outputs=teacher)")
        return _read(outputs, f"{prefix}_{self.kind}", hint)

    def _sum(self, per_teacher: dict[str, Tensor]) -> tuple[Tensor, dict]:
        total = sum(per_teacher.values())
        info = {f"{self.tag}/{k}": v.item() for k, v in per_teacher.items()} if len(per_teacher) > 1 else {}
        return total, info

    def extra_repr(self) -> str:
        return f"teachers={self.teachers}, key={self.key!r}"


class PartKLTerm(_TeacherTerm):
    """GaitKD's decision-level term: :func:`part_kl_loss` between ``outputs[key]`` (student, ``"logits"``) and
    each teacher's ``outputs[f"{prefix}_logits"]``.

    Args:
        teachers: teacher output prefix(es): ``"teacher"`` (:class:`qgait.distill.Teacher`) or e.g.
            ``("teacher0", "teacher1")`` (:class:`qgait.distill.MultiTeacher`).
        ensemble: with several teachers, distil the mean of their softened distributions (one KL) instead of
            summing one KL per teacher.
        scale, temperature, calibration, epsilon, part_align: as :func:`part_kl_loss`.
        key: the student's logits key.

    Forward: ``(outputs, labels [n]) -> (loss, info)``; ``info`` has ``kd_kl/<prefix>`` per teacher when several
    are summed.

    Raises:
        ValueError: invalid options (construction); shapes / class counts (forward).
        KeyError: a missing output (the message lists the available keys).
    """

    tag = "kd_kl"

    def __init__(self, teachers: str | Sequence[str] = "teacher", scale: float = 16.0, temperature: float = 4.0,
                 calibration: Calibration = "none", epsilon: float = 0.1, ensemble: bool = False,
                 part_align: Literal["pool", "truncate"] = "pool", key: str = "logits") -> None:
        super().__init__(teachers, key)
        _check_kl_options(scale, temperature, calibration, epsilon, part_align)
        self.scale, self.temperature, self.calibration = float(scale), float(temperature), calibration
        self.epsilon, self.ensemble, self.part_align = float(epsilon), bool(ensemble), part_align

    def _loss(self, z_s: Tensor, z_t: Tensor | list[Tensor], labels: Tensor) -> Tensor:
        return part_kl_loss(z_s, z_t, labels, self.scale, self.temperature, self.calibration, self.epsilon,
                            self.part_align)

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict]:
        z_ts = [self._teacher(outputs, t) for t in self.teachers]
        if self.ensemble:
            return self._loss(self._student(outputs, self.teachers[0]), z_ts, labels), {}
        return self._sum({t: self._loss(self._student(outputs, t), z, labels) for t, z in zip(self.teachers, z_ts)})

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, scale={self.scale}, temperature={self.temperature}, "
                f"calibration={self.calibration!r}, epsilon={self.epsilon}, ensemble={self.ensemble}, "
                f"part_align={self.part_align!r}")


class GlobalKDTerm(PartKLTerm):
    """Plain-KD baseline term: :func:`global_kd_loss` (part logits averaged over parts, then the KL); arguments
    as :class:`PartKLTerm` (``part_align`` unused). Info: ``kd_global/<prefix>`` per summed teacher."""

    tag = "kd_global"

    def _loss(self, z_s: Tensor, z_t: Tensor | list[Tensor], labels: Tensor) -> Tensor:
        return global_kd_loss(z_s, z_t, labels, self.scale, self.temperature, self.calibration, self.epsilon)


class _EmbeddingTerm(_TeacherTerm):
    """Embedding terms: optional per-teacher connectors, then part alignment, then ``self._fn``."""

    kind = "embeddings"

    def __init__(self, teachers: str | Sequence[str], connectors: nn.Module | Mapping[str, nn.Module] | None,
                 part_align: str, key: str) -> None:
        super().__init__(teachers, key)
        if part_align not in PART_ALIGN_MODES:
            raise ValueError(f"part_align must be one of {PART_ALIGN_MODES}, got {part_align!r}")
        self.part_align = part_align
        if connectors is None:
            connectors = {}
        elif isinstance(connectors, nn.Module) and not isinstance(connectors, nn.ModuleDict):
            shared = connectors
            connectors = {t: shared for t in self.teachers}
        unknown = sorted(set(connectors) - set(self.teachers))
        if unknown:
            raise ValueError(f"connectors for unknown teachers {unknown}; teachers are {list(self.teachers)}")
        self.connectors = nn.ModuleDict(dict(connectors))

    def _fn(self, e_s: Tensor, e_t: Tensor) -> Tensor:
        raise NotImplementedError

    def match(self, e_s: Tensor, e_t: Tensor, prefix: str) -> tuple[Tensor, Tensor]:
        """The student's embeddings through ``prefix``'s connector (if any), then both aligned to
        ``min(p_s, p_t)`` parts. Raises ValueError when the widths still differ (naming both)."""
        if e_s.dim() != 3 or e_t.dim() != 3:
            raise ValueError(f"embeddings must be [n, c, p], got {tuple(e_s.shape)} and {tuple(e_t.shape)}")
        if e_s.shape[0] != e_t.shape[0]:
            raise ValueError(f"batch sizes differ: student {e_s.shape[0]}, {prefix} {e_t.shape[0]}")
        if prefix in self.connectors:
            e_s = self.connectors[prefix](e_s)
        if e_s.shape[1] != e_t.shape[1]:
            raise ValueError(
                f"embedding widths differ: student {e_s.shape[1]}, {prefix} {e_t.shape[1]}; pass a connector "
                f"(qgait.distill.align.PartConnector(student_parts, {e_s.shape[1]}, {e_t.shape[1]}))"
            )
        return align_pair(e_s, e_t.detach(), self.part_align)

    def forward(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict]:  # noqa: ARG002
        return self._sum({t: self._fn(*self.match(self._student(outputs, t), self._teacher(outputs, t), t))
                          for t in self.teachers})

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, part_align={self.part_align!r}"


class ABTerm(_EmbeddingTerm):
    """GaitKD's boundary-level term: :func:`ab_loss` between ``outputs[key]`` (student embeddings before the
    BNNeck) and each teacher's ``outputs[f"{prefix}_embeddings"]``, summed over teachers (weight 0.003 per
    teacher in the reference config; LossSum applies it).

    Args:
        teachers: teacher output prefix(es) (as :class:`PartKLTerm`).
        margin: ``m`` (1).
        connectors: width connector(s) ``[c_s -> c_t]`` (:class:`qgait.distill.align.PartConnector`), applied to
            the student's embeddings before the part alignment: one module (shared by every teacher) or a
            mapping ``prefix -> module`` (teachers without one need equal widths). Training-only submodules of
            this term: put the loss's parameters in the optimizer; they are not part of the student.
        part_align: ``"pool"`` or ``"truncate"`` to ``min(p_s, p_t)`` parts.
        key: the student's embeddings key; ``"{teacher}"`` in it is replaced by each teacher's prefix (e.g.
            ``"embeddings_to_{teacher}"``: embeddings that the training network already mapped to that
            teacher's width, when the connectors live there rather than in this term).

    Raises:
        ValueError: invalid options or connector names (construction); widths that differ without a connector,
            batch sizes that differ (forward). KeyError: a missing output.
    """

    tag = "kd_ab"

    def __init__(self, teachers: str | Sequence[str] = "teacher", margin: float = 1.0,
                 connectors: nn.Module | Mapping[str, nn.Module] | None = None,
                 part_align: Literal["pool", "truncate"] = "pool", key: str = "embeddings") -> None:
        super().__init__(teachers, connectors, part_align, key)
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def _fn(self, e_s: Tensor, e_t: Tensor) -> Tensor:
        return ab_loss(e_s, e_t, self.margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"


class FeatureMSETerm(_EmbeddingTerm):
    """Feature-regression baseline term: :func:`feature_mse_loss` after the connector and part alignment;
    arguments and errors as :class:`ABTerm` (no margin). Info: ``kd_mse/<prefix>`` per summed teacher."""

    tag = "kd_mse"

    def __init__(self, teachers: str | Sequence[str] = "teacher",
                 connectors: nn.Module | Mapping[str, nn.Module] | None = None,
                 part_align: Literal["pool", "truncate"] = "pool", key: str = "embeddings") -> None:
        super().__init__(teachers, connectors, part_align, key)

    def _fn(self, e_s: Tensor, e_t: Tensor) -> Tensor:
        return feature_mse_loss(e_s, e_t)
