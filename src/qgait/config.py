"""Experiment configuration: YAML files validated against a schema.

A config is layered: ``base: other.yaml`` names a parent whose values it overrides (deep merge), as OpenGait's
defaults + experiment files do; a ``model`` section that names another model than its base's drops the base's
``model.args`` (GaitSet's recipe over GaitBase's does not inherit GaitBase's ``strides``). Every section forbids
unknown keys, so a misspelt key fails at start with the file and the key named. Relative paths in ``data`` are
resolved against the directory of the file that sets them, never against the working directory; in the recipes
shipped with qgait (:mod:`qgait.recipes`) against the project folder. A config path may also be a shipped
recipe's name (``gaitbase_casiab_cpu``), on the command line, in :func:`load_config` and in ``base:``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .quant.config import QuantConfig


class ConfigError(ValueError):
    """A config file that cannot be read or does not match the schema; the message names the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class AugmentConfig(_Strict):
    """Per-sequence augmentations of the GaitBase CASIA-B recipe (probabilities per sequence)."""

    rotation_prob: float = Field(0.2, ge=0, le=1)
    max_degrees: float = Field(10.0, ge=0)
    erasing_prob: float = Field(0.2, ge=0, le=1)
    flip_prob: float = Field(0.0, ge=0, le=1)


class DataConfig(_Strict):
    """Where the silhouettes are and how batches are drawn."""

    source: Path | None = Field(None, description="OpenGait-format folder or folder of per-subject .tar.xz archives")
    store: Path = Field(..., description="packed store; built from `source` on first use if missing")
    store_cut_width: bool = Field(True, description="a store built here keeps frames cut to 64x44 (as read)")
    partition: str = Field("casia-b", description="built-in partition name or a partition JSON path")
    train_subjects_limit: int | None = Field(None, ge=2, description="use only the first N training subjects")
    test_subjects_limit: int | None = Field(None, ge=2, description="use only the first N test subjects")
    input_size: tuple[int, int] = (64, 44)
    train_frames: int = Field(30, ge=1)
    test_max_frames: int = Field(720, ge=1)
    p: int = Field(8, ge=2, description="subjects per batch")
    k: int = Field(16, ge=2, description="sequences per subject in a batch")
    augment: AugmentConfig | None = AugmentConfig()
    skip_bad: bool = False
    prefetch: bool = True


class ModelConfig(_Strict):
    name: str = "gaitbase"
    args: dict[str, Any] = Field(default_factory=dict)
    head: Literal["bnneck", "none"] = "bnneck"


class TripletConfig(_Strict):
    weight: float = 1.0
    margin: float = 0.2


class CrossEntropyConfig(_Strict):
    weight: float = 1.0
    scale: float = 16.0
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class LossConfig(_Strict):
    triplet: TripletConfig | None = TripletConfig()
    ce: CrossEntropyConfig | None = CrossEntropyConfig()


class OptimConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: list[int] = Field(default_factory=lambda: [20000, 40000, 50000])
    gamma: float = 0.1
    warmup_iterations: int = Field(0, ge=0)


class TrainConfig(_Strict):
    iterations: int = Field(60000, ge=1)
    seed: int = 0
    log_every: int = Field(50, ge=1)
    save_every: int = Field(1000, ge=1)
    eval_every: int = Field(0, ge=0, description="0: evaluate only at the end")
    amp: Literal["none", "bf16", "fp16"] = "none"
    compile: bool = False
    channels_last: bool = False
    threads: int | None = Field(None, ge=1)


class EvalConfig(_Strict):
    protocol: str = "casia-b"
    metric: Literal["euc", "cos"] = "euc"
    distance_precision: Literal["float64", "float32"] = Field(
        "float64", description="float64: distances (and so the ranking) as exact distances give them; float32: "
        "the faster Gram expansion, which flips near-ties (issue 16; the low-bit study pins it for its rows)")
    periodic_subjects_limit: int | None = Field(None, ge=2, description="test subjects used by periodic evaluation")


class IDCConfig(_Strict):
    """Inter-class distance-guided calibration against the frozen FP model (methods.md 1.5)."""

    weight: float = Field(1.0, ge=0, description="lambda_IDC; 0 disables IDC")
    pairs: Literal["inter", "all"] = "inter"
    normalize: bool | Literal["part", "global", "none"] = Field(
        True, description="per-part (true / 'part'), one across parts ('global') or none (false / 'none')")
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)
    stages: list[Literal[1, 2]] = Field(default_factory=lambda: [1, 2], description="stages that add IDC")


class IDDConfig(_Strict):
    """Inter-class distance-guided distillation from the frozen FP model (QGait v1's framing of IDC; issue 13):
    the teacher's neighbour distribution over the retrieval distance (:mod:`qgait.losses.idd`)."""

    weight: float = Field(1.0, ge=0, description="lambda_IDD; 0 disables IDD")
    temperature: float = Field(0.1, gt=0, description="tau on distances normalised to mean 1")
    per_part: bool = False
    stages: list[Literal[1, 2]] = Field(default_factory=lambda: [1, 2], description="stages that add IDD")


class StageConfig(_Strict):
    """One QAT stage: its iterations, learning rate, schedule and rounding."""

    iterations: int = Field(0, ge=0, description="0 skips the stage")
    lr: float = Field(0.01, gt=0)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = 0.1
    rounding: Literal["ste", "soft_backward", "soft_forward"] = "ste"


class CalibOnlyConfig(_Strict):
    """Optional IDC-only phase before stage 1 that updates only the step sizes and BN statistics."""

    iterations: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0)


class QuantExperimentConfig(_Strict):
    """QGait: quantizer config, calibration, the IDC-only phase, stage 1 (LSQ + STE) and stage 2 (soft)."""

    config: QuantConfig = QuantConfig()
    calibration_batches: int = Field(4, ge=1, description="training batches that initialise the steps")
    calib_only: CalibOnlyConfig = CalibOnlyConfig()
    stage1: StageConfig = StageConfig(iterations=500, lr=0.01, rounding="ste")
    stage2: StageConfig = StageConfig(iterations=0, lr=0.001, rounding="soft_backward")
    idc: IDCConfig | None = IDCConfig()
    idd: IDDConfig | None = Field(None, description="distance distillation from the FP model (off by default)")
    plot: bool = Field(True, description="save the inter-class distance histogram (FP vs stage 1 vs final)")
    evaluate_stage1: bool = Field(True, description="evaluate the stage-1 model of a two-stage run (test set)")
    bn_reestimate_batches: int = Field(
        0, ge=0, description="after the last QAT stage, re-estimate the batch-norm statistics on this many training "
        "batches with the final quantized weights (qgait.quant.bn_stats) before model.pt is saved; 0: off")
    channels_last: bool = Field(
        False, description="train the QAT network (and IDC / IDD's frozen FP copy) in channels-last memory format. "
        "On the CPU recipe the W4A4 LSQ step is 1.51x faster (results/bench/qat_step_2026-12-05_intel-xeon-processor_"
        "t2_2.json), but PyTorch's CPU batch norm in training mode is far less exact on channels-last input "
        "(results/bench/bn_channels_last_*.json), which moves low-bit activations across rounding thresholds. Measured "
        "at W4A4 (row lsq_cl of the low-bit study, 3 seeds): -0.27 +- 0.23 mean rank-1, bootstrap [-0.69, +0.13], "
        "so off by default (docs/results.md)")
    fp_reference: bool = Field(
        False, description="train the stages without quantizing (no quantizers, no calibration): the FP model "
        "fine-tuned with exactly this schedule, batches and losses, the reference a QAT row's gap to FP is measured "
        "against (issue 13); model.pt is then a full-precision model")

    @model_validator(mode="after")
    def _fp_reference_trains(self) -> QuantExperimentConfig:
        if self.fp_reference and (self.config.quantizer == "ptq" or self.calib_only.iterations):
            raise ValueError("quant.fp_reference trains the QAT stages in full precision: it takes no PTQ "
                             "quantizer and no IDC-only calibration phase (they act on step sizes)")
        return self


class KLDistillConfig(_Strict):
    """GaitKD's decision-level term: part-wise KL between the softened BNNeck logits of a teacher and of the
    student (:func:`qgait.losses.distill.part_kl_loss`), optionally with knowledge-adjusted teacher targets."""

    weight: float = Field(1.0, ge=0, description="weight of the part-wise KL; 0 disables it")
    temperature: float = Field(4.0, gt=0, description="T; the loss is multiplied by T^2")
    calibration: Literal["none", "ka_ps", "ka_lsr"] = Field(
        "none", description="teacher targets where the teacher is wrong: none, KA-PS (swap) or KA-LSR (smooth)")
    epsilon: float = Field(0.1, ge=0, lt=1, description="KA-LSR smoothing")


class ABDistillConfig(_Strict):
    """GaitKD's boundary-level term: activation-boundary loss (Heo et al., AAAI 2019) on the part embeddings."""

    weight: float = Field(0.003, ge=0, description="weight of the AB loss (per teacher); 0 disables it")
    margin: float = Field(1.0, ge=0, description="m")


class GlobalKDConfig(_Strict):
    """Plain-KD baseline (Hinton et al., 2015) on the part-averaged logits; off by default."""

    weight: float = Field(0.0, ge=0, description="0 disables it")
    temperature: float = Field(4.0, gt=0)


class FeatureMSEConfig(_Strict):
    """Feature-regression baseline (MSE between student and teacher embeddings); off by default."""

    weight: float = Field(0.0, ge=0, description="0 disables it")


class DistillConfig(_Strict):
    """Knowledge distillation from frozen teachers (issue 14; GaitKD, arXiv 2604.26255, methods.md 2).

    The teachers are checkpoints given on the command line (``qgait distill --teacher CKPT``, also
    ``qgait quantize --teacher CKPT``), not in the config. The defaults are GaitKD's reference configuration: the
    task losses (triplet 1, CE 1, from ``loss``) plus the part-wise KL (weight 1, T = 4) and the AB loss (weight
    0.003, margin 1); the global-KD and feature-MSE baselines are off. Each term's weight 0 turns it off.
    """

    ensemble: bool = Field(False, description="several teachers: distil the mean of their softened "
                           "distributions (one KL) instead of summing one KL per teacher")
    part_align: Literal["pool", "truncate"] = Field(
        "pool", description="parts aligned to min(p_s, p_t) by average pooling or truncation")
    teacher_amp: Literal["none", "bf16", "int8"] = Field(
        "none", description="the teachers' forward precision: bf16 autocast (about 2x faster on a CPU with "
                            "AVX-512 BF16 or AMX); int8: each teacher's backbone post-training quantized (PT2E, "
                            "x86 inductor, calibrated on 2 fixed training batches) and compiled, its head float32 "
                            "(CPU only; fast on CPUs with VNNI / AMX); outputs float32 either way; none: float32")
    kl: KLDistillConfig = KLDistillConfig()
    ab: ABDistillConfig = ABDistillConfig()
    global_kd: GlobalKDConfig = GlobalKDConfig()
    feature_mse: FeatureMSEConfig = FeatureMSEConfig()


class ExperimentConfig(_Strict):
    """A full experiment: data, model, losses, optimizer, training loop and evaluation."""

    name: str
    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    quant: QuantExperimentConfig | None = Field(None, description="quantization stages (see qgait quantize)")
    distill: DistillConfig | None = Field(
        None, description="distillation from teachers given with --teacher (qgait distill, qgait quantize)")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("name must be a plain folder name")
        return v


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """The config file ``path`` names: a file (relative to ``relative_to`` when given, else as it is), or else a
    shipped recipe's name (``gaitbase_casiab_cpu``, :mod:`qgait.recipes`).

    Raises:
        ConfigError: neither a file nor a recipe (the message lists the recipes).
    """
    from .recipes import RecipeNotFound, recipe_names, recipe_path

    p = Path(path)
    file = relative_to / p if relative_to is not None and not p.is_absolute() else p
    if file.is_file():
        return file
    if len(p.parts) == 1 and p.suffix in ("", ".yaml"):
        try:
            return recipe_path(p.name)
        except RecipeNotFound:
            pass
    raise ConfigError(f"{file}: config file not found (nor a shipped recipe: {', '.join(recipe_names())})")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    from .recipes import is_recipe_file, project_root

    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level")
    data = raw.get("data")
    if isinstance(data, dict):  # relative paths: against this file's folder (a shipped recipe: the project's)
        anchor = project_root() if is_recipe_file(path) else path.parent
        for key in ("source", "store"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str((anchor / data[key]).resolve())
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = _read_yaml(resolve_config_path(str(base), path.parent), seen + (path,))
    model, parent_model = raw.get("model"), parent.get("model")
    if isinstance(model, dict) and isinstance(parent_model, dict) and "name" in model \
            and str(model["name"]).lower() != str(parent_model.get("name", "gaitbase")).lower():
        parent = {**parent, "model": {k: v for k, v in parent_model.items() if k != "args"}}  # another model
    return _deep_merge(parent, raw)


def set_override(cfg: dict, dotted: str) -> None:
    """Apply one ``key.sub=value`` override (value parsed as YAML) to a raw config dict in place."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like key.sub=value")
    key, value = dotted.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"override {dotted!r}: the value is not valid YAML ({problem}); e.g. "
                          "train.iterations=100, optim.milestones=[100,200], data.source=null") from None
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p} is not a section")
    node[parts[-1]] = parsed


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read, merge and validate a config file.

    Args:
        path: YAML file, or the name of a shipped recipe (``gaitbase_casiab_cpu``, :mod:`qgait.recipes`).
        overrides: ``key.sub=value`` strings applied after merging (e.g. ``train.iterations=100``).

    Raises:
        ConfigError: missing file (and no such recipe), invalid YAML, an unknown or misspelt key, a value of the
            wrong type or an override value that is not YAML; the message names the file and the offending key.
    """
    raw = _read_yaml(resolve_config_path(path))
    for o in overrides:
        set_override(raw, o)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = "unknown key (misspelt?)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(f"{path}: invalid config\n" + "\n".join(lines)) from None


def dump_config(cfg: ExperimentConfig, relative_to: str | Path | None = None) -> dict:
    """The validated config as plain JSON/YAML-serialisable data (paths as strings).

    Args:
        relative_to: the folder the dump will be written to (a run folder's ``config.yaml``): ``data.source`` and
            ``data.store`` are then written relative to it, so that the file reads the same wherever the project
            is checked out (:func:`load_config` resolves them against the file's folder again). A path that has
            no folder in common with it but the file system root stays absolute.
    """
    out = cfg.model_dump(mode="json")
    if relative_to is not None:
        base = Path(relative_to).resolve()
        for key in ("source", "store"):
            value = out["data"].get(key)
            if value and Path(value).is_absolute():
                common = os.path.commonpath([str(base), value])
                if common != os.path.sep:
                    out["data"][key] = os.path.relpath(value, base)
    return out
