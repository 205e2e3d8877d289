"""Validated configuration of the quantization layer (methods.md section 1).

Every model forbids unknown keys (``extra="forbid"``), so a misspelt key is an error at load time, not a silently
ignored option. The defaults follow methods.md 1.2-1.3: LSQ (Esser et al., ICLR 2020) with STE for stage 1, the
soft quantizer (QGait, arXiv 2405.13859; DSQ family, Gong et al., ICCV 2019) in ``backward_only`` mode for stage 2.

Example::

    cfg = QuantConfig(weight_bits=4, act_bits=4, exclude=["head.bnneck.*"],
                      bit_map={"backbone.conv1": {"weight": 8}})
    quantize_(model, cfg)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BitSpec",
    "SoftQuantConfig",
    "QuantConfig",
    "TargetName",
    "Rounding",
    "rounding_for",
]

TargetName = Literal["Conv1d", "Conv2d", "Conv3d", "Linear"]
"""Names of the ``torch.nn`` layer classes that :func:`qgait.quant.quantize_` can replace."""

Rounding = Literal["ste", "soft_backward", "soft_forward"]
"""Rounding modes of :class:`qgait.quant.LSQQuantizer` (see :mod:`qgait.quant.quantizers`)."""

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BitSpec(_Strict):
    """Per-layer bit-width override used in :attr:`QuantConfig.bit_map`.

    ``weight`` / ``act``: bits in 2..8, ``None`` keeps what the defaults (or ``keep_first_last_8bit``) give.
    Mixed-precision search (methods.md section 3) writes its per-layer choice here.
    """

    weight: int | None = Field(default=None, ge=2, le=8)
    act: int | None = Field(default=None, ge=2, le=8)


class SoftQuantConfig(_Strict):
    """The soft quantizer of QGait stage 2 (methods.md 1.3).

    - ``mode``: ``"backward_only"`` keeps the hard ``round`` forward and uses the soft derivative
      ``alpha / (2 tanh(alpha/2)) * sech^2(alpha r)`` in the backward pass (also inside LSQ's ``dx_q/ds``);
      ``"soft_forward"`` also uses ``softround_alpha`` in the forward pass while training.
    - ``alpha_start`` / ``alpha_end`` (> 0): sharpness at the start / end of stage 2.
    - ``schedule``: how :func:`qgait.quant.alpha_at` moves from start to end (``constant`` stays at start).
    - ``outputs``: rounding of the output quantizers (``QuantConfig.output_quant``) while the others are soft.
      ``"ste"`` (default, our choice) keeps them on the straight-through estimator: the soft derivative peaks
      at ``alpha / (2 tanh(alpha/2))`` (5 at alpha 10) and output quantizers put quantizers in series on the
      residual path, so their soft derivatives multiply. Measured on a trained W4A4 GaitBase (CPU recipe,
      ``scripts/soft_grad_norms.py``): conv-weight gradient norm 118x the STE's at alpha 10 with soft output
      quantizers, 14x with ``"ste"`` (8x for the same model family without output quantizers); the soft
      stage with soft output quantizers diverged (docs/results.md, "Ablation"). ``"soft"``: like the others.
    - ``step_grad``: ``"soft"`` (methods.md 1.3: the soft derivative also enters LSQ's ``dx_q/ds``) or ``"ste"``
      (the step gradient keeps LSQ's STE form ``round(u) - u``; the soft derivative shapes only the input
      gradient). Issue 13: the soft step gradient's per-element spread is 3-21x the STE's.
    - ``apply_to``: which quantizers round softly in the soft stage, ``"both"``, ``"weights"`` or
      ``"activations"``; the others stay on the STE (the paper's motivation, small input perturbations, points
      at activations).
    """

    mode: Literal["backward_only", "soft_forward"] = "backward_only"
    alpha_start: float = Field(default=2.0, gt=0.0, le=1e6)
    alpha_end: float = Field(default=10.0, gt=0.0, le=1e6)
    schedule: Literal["linear", "exponential", "constant"] = "linear"
    outputs: Literal["ste", "soft"] = "ste"
    step_grad: Literal["soft", "ste"] = "soft"
    apply_to: Literal["both", "weights", "activations"] = "both"


class QuantConfig(_Strict):
    """What :func:`qgait.quant.quantize_` does to a model (methods.md 1.2).

    Fields
    ------
    weight_bits, act_bits:
        Default bit widths, 2..8. Weights are signed (``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1)-1``).
    per_channel:
        One weight step per output channel (axis 0 of the weight) instead of one per layer.
    quantizer:
        ``"lsq"``: learned steps, STE rounding (stage 1). ``"soft"``: learned steps, soft rounding per ``soft``
        (stage 2). ``"ptq"``: steps calibrated by ``ptq_method`` (post-training quantization, STE if trained).
    act_signed:
        ``"auto"`` decides at initialisation from the data: unsigned if its minimum is ``>= 0``.
    keep_first_last_8bit:
        First and last quantized layers get 8-bit weights and 8-bit input activations
        (the first layer's input stays exact when ``first_layer_exact_input``).
    first_layer_exact_input:
        The first quantized layer gets no input quantizer (binary silhouettes are exact).
    first_layer, last_layer:
        Module names (as in ``named_modules()``); default the first / last targeted, not excluded module.
    exclude:
        ``fnmatch`` patterns on module names; a module is excluded if its name or the name of one of its parents
        matches. Every pattern must match at least one module name.
    bit_map:
        Per-layer override ``{"name or pattern": {"weight": b, "act": b}}``. Precedence: exact name, then the last
        matching pattern (insertion order). Every key must match at least one quantized layer.
    targets:
        Which ``torch.nn`` classes are replaced (exact type match, subclasses are left alone).
    ptq_method, ptq_percentile:
        Step calibration for ``quantizer="ptq"``.
    output_quant:
        ``fnmatch`` patterns of module names whose OUTPUT gets a learned per-tensor activation quantizer
        (``act_bits``, or the ``act`` of a matching ``bit_map`` key; sign from the data): the pre-residual tensors
        an integer runtime must requantize (:mod:`qgait.quant.outputs`; ``find_residual_outputs`` lists them, for
        GaitBase ``["*.bn2", "*.downsample.1"]``). Every pattern must match a module. Default none.
    narrow_8bit_weights:
        8-bit weight grids are the narrow ``[-127, 127]`` (the TFLite int8 weight specification) instead of
        ``[-128, 127]``: the batch-norm fold negates the integer weights of channels with a negative BN scale
        (:mod:`qgait.export.fold`), and ``-128`` negated does not fit int8 (it was clamped, a one-level error that
        4-bit activations downstream amplify in mixed-precision models). Below 8 bits the full grid is kept (its
        negation fits the int8 container). Default on; checkpoints saved before the option load with the full grid.
    lsq_init:
        Step initialisation for ``lsq`` / ``soft``: ``"lsq"`` is ``2 mean|x| / sqrt(Q_P)`` (LSQ, Esser et al.
        ICLR 2020, section 2). It is a training start, not a PTQ: at 8 bits it covers about +-21 of the +-127
        levels for Gaussian weights; ``"mse"`` starts much closer to FP (see tests/quant/test_transform.py).
    """

    weight_bits: int = Field(default=4, ge=2, le=8)
    act_bits: int = Field(default=4, ge=2, le=8)
    per_channel: bool = True
    quantizer: Literal["lsq", "soft", "ptq"] = "lsq"
    soft: SoftQuantConfig = Field(default_factory=SoftQuantConfig)
    act_signed: Literal["auto", "signed", "unsigned"] = "auto"
    keep_first_last_8bit: bool = False
    first_layer_exact_input: bool = True
    first_layer: str | None = None
    last_layer: str | None = None
    exclude: list[str] = Field(default_factory=list)
    bit_map: dict[str, BitSpec] = Field(default_factory=dict)
    targets: list[TargetName] = Field(
        default_factory=lambda: ["Conv1d", "Conv2d", "Conv3d", "Linear"], min_length=1
    )
    ptq_method: Literal["minmax", "percentile", "mse"] = "mse"
    ptq_percentile: float = Field(default=99.99, gt=50.0, le=100.0)
    lsq_init: Literal["lsq", "minmax", "mse"] = "lsq"
    narrow_8bit_weights: bool = True
    output_quant: list[str] = Field(default_factory=list)

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in targets: {v}")
        return v

    @property
    def rounding(self) -> Rounding:
        """The quantizer rounding mode this config asks for (see :func:`rounding_for`)."""
        return rounding_for(self)

    @property
    def init_method(self) -> str:
        """Step initialisation method: ``ptq_method`` for ``ptq``, ``lsq_init`` otherwise."""
        return self.ptq_method if self.quantizer == "ptq" else self.lsq_init


def rounding_for(config: QuantConfig) -> Rounding:
    """Map a config to a rounding mode: ``lsq``/``ptq`` -> ``"ste"``; ``soft`` -> ``"soft_backward"`` for
    ``soft.mode == "backward_only"``, ``"soft_forward"`` for ``soft.mode == "soft_forward"``."""
    if config.quantizer != "soft":
        return "ste"
    return "soft_backward" if config.soft.mode == "backward_only" else "soft_forward"
