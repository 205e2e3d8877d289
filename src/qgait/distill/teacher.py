"""Frozen teachers for distillation (GaitKD, arXiv 2604.26255; methods.md 2).

A :class:`Teacher` wraps a trained network and produces the named outputs the distillation terms of
:mod:`qgait.losses.distill` read: ``{"teacher_embeddings": [n, c, p], "teacher_logits": [n, C, p]}`` (logits only
when the network has a BNNeck head, i.e. returns ``"logits"``). It is meant as the trainer's ``extra_outputs``
(:class:`qgait.engine.trainer.Trainer`), which merges them into the student's outputs on the same (augmented)
batch.

The teacher is never part of the student:

- it is a plain Python object, **not** an ``nn.Module``, so assigning it to a module attribute does not register
  it: it is absent from the student's ``state_dict`` / ``parameters()`` (no teacher key in a checkpoint, no
  teacher weights in the optimizer), and ``student.train()`` / ``.to()`` / DDP never reach it (move it with
  :meth:`Teacher.to`);
- pickling it (``torch.save`` of an object that holds it) raises ``TypeError``: save ``teacher.net`` on its own
  if you mean to (``copy.copy`` shares the network, ``copy.deepcopy`` copies it);
- its parameters have ``requires_grad=False``, it is put back in eval mode before every forward (batch norm uses
  its running statistics and never updates them; dropout is off), and the forward runs under
  ``torch.no_grad()``. Not ``torch.inference_mode()``: inference tensors cannot be saved for the student's
  backward (the KL's backward keeps its target), so they would need a copy.

Precision: float32 by default, bf16 autocast (``amp``), or int8 (:meth:`Teacher.quantize_int8`: the backbone
post-training quantized with PyTorch's PT2E x86 path and compiled by inductor, the BNNeck head float32).

Output cache: :meth:`Teacher.use_cache` reads the outputs on a batch seen before (same teacher, same bytes) from
disk instead of running the network (:mod:`qgait.distill.cache`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Teacher", "MultiTeacher"]


class Teacher:
    """A frozen, always-eval teacher network: ``silhouettes -> {f"{prefix}_embeddings", f"{prefix}_logits"}``.

    Args:
        net: the trained network: a :class:`qgait.models.heads.GaitWithHead` (returns a dict with
            ``"embeddings"`` and, with a head, ``"logits"``) or a bare inference model returning the embeddings
            tensor ``[n, c, p]``. It is frozen in place (``eval()``, ``requires_grad_(False)``).
        prefix: the output-key prefix (``"teacher"``; :class:`MultiTeacher` uses ``"teacher0"``, ...).
        amp: run the teacher's forward pass under ``torch.autocast`` with this dtype (``torch.bfloat16``: about
            2x faster on a CPU with AVX-512 BF16 or AMX; config ``distill.teacher_amp``), or ``None`` (float32).
            The outputs are float32 either way; the student's own precision is ``train.amp``.

    Call: ``teacher(x)`` -> dict of float32 tensors, without gradient; ``teacher.num_classes``,
    ``teacher.embed_dim``, ``teacher.parts`` describe it where the network tells (else ``None``).

    Raises:
        TypeError: ``net`` is not an ``nn.Module`` (construction); the network returns neither a tensor nor a dict
            with ``"embeddings"`` (call); pickling.
        ValueError: ``amp`` is not ``None``, ``torch.bfloat16`` or ``torch.float16``.
    """

    def __init__(self, net: nn.Module, prefix: str = "teacher", amp: torch.dtype | None = None) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"Teacher needs an nn.Module, got {type(net).__name__}")
        if not prefix or not isinstance(prefix, str):
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        self.net = net.eval().requires_grad_(False)
        self.prefix = prefix
        self.amp = amp
        self._int8: Callable[[Tensor], Tensor] | None = None
        self._int8_calib = ""
        self.cache = None  # a qgait.distill.cache.TeacherOutputCache once use_cache is called

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype of the teacher's forward pass (``torch.bfloat16``), or ``None`` for float32."""
        return self._amp

    @amp.setter
    def amp(self, dtype: torch.dtype | None) -> None:
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"teacher amp must be None, torch.bfloat16 or torch.float16, got {dtype!r}")
        self._amp = dtype

    @property
    def int8(self) -> bool:
        """Whether the backbone runs as the int8 graph of :meth:`quantize_int8` (``amp`` is then unused)."""
        return self._int8 is not None

    def quantize_int8(self, calib: Sequence[Tensor]) -> Teacher:
        """Run the teacher's backbone as int8 from now on: PT2E post-training quantization
        (:func:`qgait.export.pt2e.pt2e_from_fp`: ``X86InductorQuantizer``, uint8 per-tensor activations, int8
        per-channel weights, batch norm folded; the per-part FC stays float32) calibrated on ``calib``, lowered by
        inductor to oneDNN int8 convolutions (:func:`qgait.export.pt2e.compile_inductor`). The BNNeck head (the
        logits) runs in float32 on the int8 backbone's embeddings. The network's own weights are unchanged.

        Each new input shape compiles again (seconds; training batches have one shape). Measured on the GaitBase
        CPU teachers (``benchmarks/teacher_forward.py``): 4.1x faster than their bf16 channels-last forward,
        embedding cosine >= 0.9997 to float32; not faster for GaitSet (docs/distillation.md, "Teacher precision").

        Args:
            calib: calibration batches ``[n, T, h, w]`` (float silhouettes in [0, 1]; 2 training batches suffice).

        Returns:
            ``self``.

        Raises:
            ValueError: no calibration batch; the network is not on the CPU (the int8 kernels are x86 CPU ones).
        """
        from ..export.pt2e import compile_inductor, pt2e_from_fp  # torch.export / torchao only when asked for

        calib = [torch.as_tensor(x) for x in calib]
        if not calib:
            raise ValueError("an int8 teacher needs at least one calibration batch")
        devices = {p.device.type for p in self.net.parameters()} | {x.device.type for x in calib}
        if devices != {"cpu"}:
            raise ValueError(f"an int8 teacher runs on the CPU (x86 int8 kernels); the teacher or its calibration "
                             f"batches are on {sorted(devices)}: use distill.teacher_amp bf16 or none there")
        gm = pt2e_from_fp(self._inference_model(), tuple(calib[0].shape[-2:]), calib)
        self._int8 = compile_inductor(gm)
        from .cache import batches_digest

        self._int8_calib = batches_digest(calib)  # the int8 graph depends on its calibration batches too
        return self

    # -------------------------------------------------------------------- what the teacher is
    @property
    def training(self) -> bool:
        """Always False."""
        return False

    def _inference_model(self) -> nn.Module:
        return getattr(self.net, "model", self.net)

    @property
    def embed_dim(self) -> int | None:
        v = getattr(self._inference_model(), "embed_dim", None)
        return int(v) if v is not None else None

    @property
    def parts(self) -> int | None:
        v = getattr(self._inference_model(), "parts", None)
        return int(v) if v is not None else None

    @property
    def num_classes(self) -> int | None:
        """Classifier classes of the BNNeck head (``head.weight`` ``[p, c, C]``), ``None`` without a head."""
        head = getattr(self.net, "head", None)
        w = getattr(head, "weight", None)
        return int(w.shape[-1]) if isinstance(w, Tensor) and w.dim() == 3 else None

    @property
    def has_logits(self) -> bool:
        return self.num_classes is not None

    def parameters(self):
        """The (frozen) network's parameters."""
        return self.net.parameters()

    # -------------------------------------------------------------------- mode and device
    def train(self, mode: bool = True) -> Teacher:  # noqa: ARG002
        """No-op: the teacher stays in eval mode."""
        self.net.eval()
        return self

    def eval(self) -> Teacher:
        self.net.eval()
        return self

    def to(self, *args: Any, **kwargs: Any) -> Teacher:
        """Move / cast the network (``nn.Module.to``); returns the teacher."""
        self.net.to(*args, **kwargs)
        return self

    # -------------------------------------------------------------------- forward
    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        raw = self.cache.get(x, self._forward) if self.cache is not None else self._forward(x)
        return {f"{self.prefix}_{k}": v for k, v in raw.items()}

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        """``{"embeddings": [n, c, p], "logits": [n, C, p] (with a head)}``, float32, unprefixed."""
        if self.net.training:
            self.net.eval()
        if self._int8 is not None:
            with torch.no_grad():
                emb = self._int8(x).float()
                head = getattr(self.net, "head", None) if self.net is not self._inference_model() else None
                out = {"embeddings": emb, **({"logits": head(emb)[1]} if head is not None else {})}
        else:
            with torch.no_grad(), torch.autocast(x.device.type, dtype=self._amp or torch.bfloat16,
                                                 enabled=self._amp is not None):
                out = self.net(x)
        if isinstance(out, Tensor):
            emb, logits = out, None
        elif isinstance(out, Mapping) and "embeddings" in out:
            emb, logits = out["embeddings"], out.get("logits")
        else:
            raise TypeError(
                "the teacher network must return embeddings [n, c, p] or a dict with 'embeddings', got "
                f"{type(out).__name__}" + (f" with keys {sorted(out)}" if isinstance(out, Mapping) else "")
            )
        res = {"embeddings": emb.float()}
        if logits is not None:
            res["logits"] = logits.float()
        return res

    # -------------------------------------------------------------------- output cache
    def use_cache(self, root: str | Path, channels_last: bool = False, description: dict | None = None) -> Teacher:
        """Read this teacher's outputs from, and store them in, the disk cache ``root``
        (:class:`qgait.distill.cache.TeacherOutputCache`): a batch seen before with the same teacher, precision,
        memory format, device, PyTorch version and thread count is read back instead of computed. Call it once the
        teacher is set up (``amp``, :meth:`quantize_int8`, device and memory format); ``channels_last`` says
        whether its weights are in channels-last format. Returns ``self``."""
        from .cache import TeacherOutputCache, teacher_fingerprint

        device = next((p.device for p in self.net.parameters()), torch.device("cpu"))
        fp = teacher_fingerprint(self.net, amp=None if self.int8 else self._amp, int8=self.int8, device=device,
                                 channels_last=channels_last, extra=self._int8_calib)
        self.cache = TeacherOutputCache(root, fp, {**(description or {}), "amp": str(self._amp),
                                                   "int8": self.int8, "channels_last": channels_last})
        return self

    # -------------------------------------------------------------------- never serialised with a student
    def __reduce_ex__(self, protocol: int):  # noqa: ARG002
        raise TypeError(
            "a Teacher is not saved with the student (it would put the teacher's weights in the student's "
            "checkpoint); save teacher.net explicitly if you mean to"
        )

    def renamed(self, prefix: str) -> Teacher:
        """The same teacher (network, precision, int8 graph and output cache shared) under another output prefix."""
        t = Teacher(self.net, prefix, self.amp)
        t._int8, t._int8_calib, t.cache = self._int8, self._int8_calib, self.cache
        return t

    def __copy__(self) -> Teacher:
        return self.renamed(self.prefix)

    def __deepcopy__(self, memo: dict) -> Teacher:
        """A copy of the network in float (or ``amp``); call :meth:`quantize_int8` again for an int8 copy."""
        return Teacher(copy.deepcopy(self.net, memo), self.prefix, self.amp)

    def __repr__(self) -> str:
        return (f"Teacher(prefix={self.prefix!r}, net={type(self.net).__name__}, embed_dim={self.embed_dim}, "
                f"parts={self.parts}, num_classes={self.num_classes})")


class MultiTeacher:
    """Several frozen teachers: ``x -> {"teacher0_embeddings", "teacher0_logits", "teacher1_...", ...}``.

    Distillation terms given ``teachers=multi.prefixes`` sum one loss per teacher (GaitKD's multi-teacher path).
    With ``ensemble=True`` the outputs also hold ``f"{prefix}_logits"`` (``"teacher_logits"``): pseudo-logits
    whose softened distribution at ``scale`` and ``temperature`` is the mean of the teachers'
    (:func:`qgait.losses.distill.ensemble_logits`), so a single-teacher :class:`~qgait.losses.distill.PartKLTerm`
    with the **same** scale and temperature distils the ensemble (equivalently: ``PartKLTerm(multi.prefixes,
    ensemble=True)``). Teachers with different part counts are pooled to the smallest for the ensemble.

    Args:
        nets: networks (or :class:`Teacher` objects, whose networks are re-wrapped) in order.
        ensemble: add the ensemble pseudo-logits (every teacher needs logits over the same classes).
        scale, temperature: ``gamma`` and ``T`` of the ensemble distribution.
        prefix: teacher ``i``'s outputs are ``f"{prefix}{i}_*"``; the ensemble's ``f"{prefix}_logits"``.

    Raises:
        ValueError: no teachers; ``ensemble`` with a teacher without a BNNeck head, or with different class
            counts (the message names them).
    """

    def __init__(self, nets: Sequence[nn.Module | Teacher], ensemble: bool = False, scale: float = 16.0,
                 temperature: float = 4.0, prefix: str = "teacher") -> None:
        if not nets:
            raise ValueError("MultiTeacher needs at least one teacher")
        self.teachers = [t.renamed(f"{prefix}{i}") if isinstance(t, Teacher) else Teacher(t, f"{prefix}{i}")
                         for i, t in enumerate(nets)]
        self.ensemble, self.prefix = bool(ensemble), prefix
        self.scale, self.temperature = float(scale), float(temperature)
        if self.ensemble:
            counts = {t.prefix: t.num_classes for t in self.teachers}
            if any(c is None for c in counts.values()):
                raise ValueError(f"the ensemble needs every teacher's logits (a BNNeck head); classes: {counts}")
            if len(set(counts.values())) > 1:
                raise ValueError(f"the ensemble needs one class count, the teachers have {counts}")

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(t.prefix for t in self.teachers)

    def __len__(self) -> int:
        return len(self.teachers)

    def __iter__(self):
        return iter(self.teachers)

    def train(self, mode: bool = True) -> MultiTeacher:  # noqa: ARG002
        for t in self.teachers:
            t.eval()
        return self

    def eval(self) -> MultiTeacher:
        return self.train(False)

    def to(self, *args: Any, **kwargs: Any) -> MultiTeacher:
        for t in self.teachers:
            t.to(*args, **kwargs)
        return self

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for t in self.teachers:
            out.update(t(x))
        if self.ensemble:
            from ..losses.distill import ensemble_logits  # here: qgait.losses.distill imports this package

            out[f"{self.prefix}_logits"] = ensemble_logits(
                [out[f"{p}_logits"] for p in self.prefixes], self.scale, self.temperature
            )
        return out

    def __reduce_ex__(self, protocol: int):  # noqa: ARG002
        raise TypeError("a MultiTeacher is not saved with the student; save each teacher.net explicitly")

    def __deepcopy__(self, memo: dict) -> MultiTeacher:
        return MultiTeacher([copy.deepcopy(t.net, memo) for t in self.teachers], self.ensemble, self.scale,
                            self.temperature, self.prefix)

    def __repr__(self) -> str:
        return f"MultiTeacher({self.teachers!r}, ensemble={self.ensemble})"
