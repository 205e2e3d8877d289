"""Model-level verbs: ``quantize_`` (torchao-style, in place), calibration, stage switches and summaries.

Typical QGait flow (methods.md 1.4)::

    model = build_fp_model(); model.load_state_dict(fp_ckpt)
    quantize_(model, QuantConfig(weight_bits=4, act_bits=4, exclude=["bnneck*"]))
    calibrate_(model, calib_batches)                # every step initialised from data
    ... stage 1: QAT with LSQ + STE (+ IDC) ...
    set_rounding_(model, "soft_backward")           # stage 2: soft quantizer
    for it in range(n): set_alpha_(model, alpha_at(cfg.soft, it / n)); ...

This module is model-agnostic: it works on any ``nn.Module`` and imports nothing from other qgait packages.

Notes:
    - Batch norm stays unfolded during QAT (methods.md 1.2 asks to document which): the conv weights are
      quantized, BN follows in floating point. With per-channel weight steps, folding BN's per-channel factor
      ``k_c = gamma_c / sigma_c`` into the weights keeps the same integers with step ``s_c |k_c|`` (for
      ``k_c < 0`` the integers change sign, so ``-Q_N`` would leave the signed grid: re-check after folding).
    - Steps initialise lazily on the first forward when :func:`calibrate_` was not called; under data-parallel
      training call :func:`calibrate_` (same batches on every rank) or broadcast the state after the first step.
    - Hooks registered on a replaced module are not carried over to its quantized twin.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .config import BitSpec, QuantConfig, SoftQuantConfig
from .modules import QUANT_TWINS, QuantLayer
from .outputs import attach_output_quantizer, output_quantizers
from .quantizers import InitMethod, LSQQuantizer

__all__ = [
    "quantize_",
    "calibrate_",
    "set_rounding_",
    "set_alpha_",
    "set_quant_enabled_",
    "alpha_at",
    "iter_quantizers",
    "quant_layers",
    "step_parameters",
    "non_step_parameters",
    "is_quantized",
    "quant_summary",
    "quant_summary_dict",
]

_ROUNDING_ALIASES = {
    "ste": "ste",
    "lsq": "ste",
    "soft_backward": "soft_backward",
    "backward_only": "soft_backward",
    "soft_forward": "soft_forward",
}


def _ancestors_and_self(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _match(pattern: str, name: str) -> bool:
    return pattern == name or fnmatch.fnmatchcase(name, pattern)


def _bit_spec(cfg: QuantConfig, name: str) -> BitSpec | None:
    """The ``bit_map`` entry of module ``name``: its exact name, else the last matching pattern."""
    spec = cfg.bit_map.get(name)
    if spec is None:
        for key, s in cfg.bit_map.items():
            if _match(key, name):
                spec = s  # last matching pattern wins
    return spec


def is_quantized(model: nn.Module) -> bool:
    """True if ``model`` contains a quantized layer or an :class:`LSQQuantizer`."""
    return any(isinstance(m, (QuantLayer, LSQQuantizer)) for m in model.modules())


def quantize_(model: nn.Module, config: QuantConfig | Mapping[str, Any]) -> nn.Module:
    """Replace every targeted layer of ``model`` by its quantized twin, in place (torchao's verb; methods.md 1.2).

    Targeted: modules whose exact type is one of ``config.targets`` (``nn.Conv1d/2d/3d``, ``nn.Linear``), not
    excluded by ``config.exclude`` (a pattern matching the module's name or a parent's name). Bits per layer, by
    precedence: ``bit_map`` (exact name, else last matching pattern; ``weight``/``act`` independently) >
    ``keep_first_last_8bit`` (first and last layer: 8-bit weights and 8-bit input activations) > defaults.
    The first layer has no input quantizer when ``first_layer_exact_input``. Modules matching
    ``config.output_quant`` get an output quantizer (:mod:`qgait.quant.outputs`). Weight/bias Parameters are shared
    with the replaced modules (no copy); modules registered under several names are replaced everywhere.
    Steps are not initialised here: call :func:`calibrate_` (or the first forward initialises lazily).

    Args:
        model: any ``nn.Module`` (nested containers, ``ModuleList``, ``Sequential``, ``ModuleDict`` all work).
        config: a :class:`QuantConfig` or a mapping validated into one.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: model already quantized; nothing to quantize; the root module itself is a target; a name in
            ``first_layer``/``last_layer`` that is not a targeted layer; an ``exclude`` pattern matching no module;
            a ``bit_map`` key matching no targeted layer; an ``output_quant`` pattern matching no module.
        pydantic.ValidationError: invalid mapping config.
    """
    cfg = config if isinstance(config, QuantConfig) else QuantConfig.model_validate(config)
    if is_quantized(model):
        raise ValueError("model is already quantized (it contains QuantLayer/LSQQuantizer modules)")
    names = [n for n, _ in model.named_modules()]
    for pat in cfg.exclude:
        if not any(_match(pat, n) for n in names if n):
            raise ValueError(f"exclude pattern {pat!r} matches no module name")

    def excluded(name: str) -> bool:
        return any(_match(p, a) for p in cfg.exclude for a in _ancestors_and_self(name))

    classes = {getattr(nn, t) for t in cfg.targets}
    targeted = [(n, m) for n, m in model.named_modules() if type(m) in classes and not excluded(n)]
    if not targeted:
        raise ValueError(f"no module of types {cfg.targets} to quantize (after exclusions)")
    if targeted[0][0] == "":
        raise ValueError("the root module itself is a target: wrap it in a container (e.g. nn.Sequential)")
    tnames = [n for n, _ in targeted]
    first = cfg.first_layer if cfg.first_layer is not None else tnames[0]
    last = cfg.last_layer if cfg.last_layer is not None else tnames[-1]
    for what, n in (("first_layer", first), ("last_layer", last)):
        if n not in tnames:
            raise ValueError(f"{what}={n!r} is not a targeted layer; targeted: {tnames}")
    out_names = [n for n in names if n and any(_match(p, n) for p in cfg.output_quant)]
    for pat in cfg.output_quant:
        if not any(_match(pat, n) for n in names if n):
            raise ValueError(f"output_quant pattern {pat!r} matches no module name")
    for key in cfg.bit_map:
        if not any(_match(key, n) for n in tnames + out_names):
            raise ValueError(f"bit_map key {key!r} matches no targeted layer; targeted: {tnames}")

    act_signed = {"auto": None, "signed": True, "unsigned": False}[cfg.act_signed]
    replace: dict[int, nn.Module] = {}
    for name, mod in targeted:
        wb, ab = cfg.weight_bits, cfg.act_bits
        if cfg.keep_first_last_8bit and name in (first, last):
            wb, ab = 8, 8
        spec = _bit_spec(cfg, name)
        if spec is not None:
            wb = spec.weight if spec.weight is not None else wb
            ab = spec.act if spec.act is not None else ab
        twin = QUANT_TWINS[type(mod)].from_float(
            mod,
            weight_bits=wb,
            act_bits=ab,
            per_channel=cfg.per_channel,
            act_signed=act_signed,
            rounding=cfg.rounding,
            quantize_input=not (name == first and cfg.first_layer_exact_input),
            weight_init=cfg.init_method,
            act_init=cfg.init_method,
            percentile=cfg.ptq_percentile,
            narrow_weights=cfg.narrow_8bit_weights and wb == 8,
        )
        for q in twin.modules():
            if isinstance(q, LSQQuantizer):
                q.set_alpha(cfg.soft.alpha_start)
        replace[id(mod)] = twin

    for parent in list(model.modules()):
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in replace:
                parent._modules[key] = replace[id(child)]
    mods = dict(model.named_modules())
    for name in out_names:
        spec = _bit_spec(cfg, name)
        ab = spec.act if spec is not None and spec.act is not None else cfg.act_bits
        ref = next(iter(mods[name].parameters()), None)
        rounding = "ste" if cfg.soft.outputs == "ste" else cfg.rounding  # SoftQuantConfig.outputs
        q = LSQQuantizer(ab, signed=act_signed, per_channel=False, rounding=rounding, role="activation",
                         init_method=cfg.init_method, percentile=cfg.ptq_percentile)
        q.set_alpha(cfg.soft.alpha_start)
        attach_output_quantizer(mods[name], q.to(ref.device) if ref is not None else q)
    return model


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def calibrate_(
    model: nn.Module,
    batches: Iterable[Any],
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    method: InitMethod | None = None,
    *,
    max_batches: int | None = None,
    max_samples: int = 2**18,
    strict: bool = True,
) -> nn.Module:
    """(Re)initialise every quantizer's step from data, in place (methods.md 1.2 init; PTQ calibration).

    Weight quantizers: from their layer's weights. Input (and output) quantizers: an :class:`ActObserver` per
    quantizer records the layer inputs (module outputs) of a floating-point forward pass (all quantizers bypassed) over the calibration batches, in
    eval mode under ``torch.no_grad``; then each step is set from all the batches it saw (and ``act_signed="auto"``
    decided: unsigned iff every observed value was >= 0). BN running statistics are not changed. The model's
    training flag is restored afterwards.

    Args:
        model: a model prepared with :func:`quantize_`.
        batches: iterable of inputs (already on the model's device).
        forward_fn: ``forward_fn(model, batch)``; default ``model(batch)`` for a tensor, ``model(*batch)`` for a
            tuple/list, ``model(**batch)`` for a mapping.
        method: overrides every quantizer's ``init_method`` (``"lsq"``, ``"minmax"``, ``"percentile"``,
            ``"mse"``); default: each quantizer's own (``QuantConfig.lsq_init``, or ``ptq_method`` for ``ptq``).
        max_batches: stop after this many batches.
        max_samples: subsample size of each activation observer (memory bound).
        strict: raise if an input quantizer saw no data (layer unused by the forward); otherwise leave it to
            initialise lazily on its first forward.

    Returns:
        ``model``.

    Raises:
        ValueError: no quantizers in the model, or no batches.
        RuntimeError: (strict) input quantizers that saw no data.
    """
    layers = quant_layers(model)
    if not layers:
        raise ValueError("calibrate_: the model has no quantized layers; call quantize_ first")
    forward_fn = forward_fn or _default_forward
    was_training = model.training
    act_qs: dict[str, LSQQuantizer] = {}
    w_qs: list[LSQQuantizer] = []
    for name, layer in layers:
        wq = layer.weight_quantizer
        if isinstance(wq, LSQQuantizer):
            wq.initialize(layer.weight, method=method)
            w_qs.append(wq)
        aq = layer.input_quantizer
        if isinstance(aq, LSQQuantizer):
            act_qs[f"{name}.input_quantizer"] = aq
    for name, oq in output_quantizers(model):
        act_qs[f"{name}.output_quantizer"] = oq
    enabled = {id(q): q.enabled for _, q in iter_quantizers(model)}
    model.eval()
    n = 0
    try:
        for q in w_qs:
            q.enabled = False
        for q in act_qs.values():
            q.enabled = True
            q.start_observing(max_samples=max_samples)
        for batch in batches:
            if max_batches is not None and n >= max_batches:
                break
            forward_fn(model, batch)
            n += 1
    except BaseException:
        for q in act_qs.values():
            q.observer = None
        raise
    finally:
        for _, q in iter_quantizers(model):
            q.enabled = enabled[id(q)]
        model.train(was_training)
    if n == 0:
        for q in act_qs.values():
            q.observer = None
        raise ValueError("calibrate_: no calibration batches")
    unseen = [name for name, q in act_qs.items() if not q.finish_observing(method)]
    if unseen and strict:
        raise RuntimeError(f"calibrate_: these input quantizers saw no data: {unseen}")
    return model


_ROLES = {"both": ("weight", "activation"), "weights": ("weight",), "activations": ("activation",)}


def set_rounding_(model: nn.Module, rounding: str, outputs: str | None = None, apply_to: str = "both",
                  step_grad: str | None = None) -> nn.Module:
    """Set every quantizer's rounding: ``"ste"`` (alias ``"lsq"``), ``"soft_backward"`` (alias
    ``"backward_only"``) or ``"soft_forward"`` (methods.md 1.3-1.4: stage 1 -> stage 2). In place; returns model.

    Args:
        outputs: rounding of the output quantizers (:mod:`qgait.quant.outputs`) if not ``rounding``, e.g.
            ``"ste"`` to keep them on the STE during the soft stage (:class:`SoftQuantConfig`, ``outputs``).
        apply_to: ``"both"``, ``"weights"`` or ``"activations"``: the quantizers of the other role get ``"ste"``
            (:class:`SoftQuantConfig`, ``apply_to``). Output quantizers are activations.
        step_grad: if given, every quantizer's step gradient for the soft roundings, ``"soft"`` or ``"ste"``
            (:meth:`LSQQuantizer.set_step_grad`).

    Raises:
        ValueError: unknown rounding, ``apply_to`` or ``step_grad``.
    """
    for r in (rounding, outputs):
        if r is not None and r not in _ROUNDING_ALIASES:
            raise ValueError(f"rounding must be one of {sorted(_ROUNDING_ALIASES)}, got {r!r}")
    if apply_to not in _ROLES:
        raise ValueError(f"apply_to must be one of {sorted(_ROLES)}, got {apply_to!r}")
    for _, q in iter_quantizers(model):
        q.set_rounding(_ROUNDING_ALIASES[rounding] if q.role in _ROLES[apply_to] else "ste")
        if step_grad is not None:
            q.set_step_grad(step_grad)
    if outputs is not None:
        for _, q in output_quantizers(model):
            q.set_rounding(_ROUNDING_ALIASES[outputs])
    return model


def set_alpha_(model: nn.Module, alpha: float) -> nn.Module:
    """Set the soft-rounding sharpness of every quantizer (methods.md 1.3). In place; returns model.

    Raises:
        ValueError: alpha not positive and finite.
    """
    for _, q in iter_quantizers(model):
        q.set_alpha(alpha)
    return model


def set_quant_enabled_(model: nn.Module, enabled: bool, *, weights: bool = True, activations: bool = True) -> nn.Module:
    """Enable or bypass (floating point) the weight and/or activation quantizers. In place; returns model."""
    for _, q in iter_quantizers(model):
        if (q.role == "weight" and weights) or (q.role == "activation" and activations):
            q.enabled = bool(enabled)
    return model


def alpha_at(config: SoftQuantConfig, progress: float) -> float:
    """Soft-quantizer sharpness at ``progress`` in [0, 1] of stage 2 (methods.md 1.3).

    ``linear``: ``a0 + (a1 - a0) p``; ``exponential``: ``a0 (a1 / a0)^p`` (geometric); ``constant``: ``a0``.
    ``progress`` is clamped to [0, 1].

    Raises:
        ValueError: ``progress`` is NaN.
    """
    p = float(progress)
    if p != p:
        raise ValueError("progress is NaN")
    p = min(max(p, 0.0), 1.0)
    a0, a1 = config.alpha_start, config.alpha_end
    if config.schedule == "constant":
        return a0
    if config.schedule == "linear":
        return a0 + (a1 - a0) * p
    return a0 * (a1 / a0) ** p


def iter_quantizers(model: nn.Module) -> Iterator[tuple[str, LSQQuantizer]]:
    """Iterate ``(name, LSQQuantizer)`` over the model, in ``named_modules()`` order."""
    for name, m in model.named_modules():
        if isinstance(m, LSQQuantizer):
            yield name, m


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    """The quantized layers ``(name, module)`` in ``named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned step sizes (for a step-only optimiser, e.g. an IDC calibration phase, methods.md 1.5)."""
    return [q.step for _, q in iter_quantizers(model)]


def non_step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter except the step sizes (to give steps their own learning rate / no weight decay)."""
    steps = {id(p) for p in step_parameters(model)}
    return [p for p in model.parameters() if id(p) not in steps]


def _q_info(q: nn.Module | None) -> dict[str, Any]:
    if q is None:
        return dict(bits=None, signed=None, per_channel=None, step_min=None, step_mean=None, step_max=None,
                    initialized=None, rounding=None)
    if not isinstance(q, LSQQuantizer):
        return dict(bits=getattr(q, "bits", None), signed=None, per_channel=None, step_min=None, step_mean=None,
                    step_max=None, initialized=None, rounding=None)
    s = q.scale.float()
    init = q.is_initialized
    return dict(
        bits=q.bits,
        signed=q.is_signed,
        per_channel=q.per_channel,
        step_min=float(s.min()) if init else None,
        step_mean=float(s.mean()) if init else None,
        step_max=float(s.max()) if init else None,
        initialized=init,
        rounding=q.rounding,
    )


def quant_summary_dict(model: nn.Module) -> list[dict[str, Any]]:
    """One JSON-ready dict per quantized layer.

    Keys: ``name``, ``type``, ``weight_bits``, ``act_bits`` (None: exact input), ``weight_per_channel``,
    ``act_signed`` (None: undecided or exact), ``weight_step_min/mean/max``, ``act_step`` (None until
    initialised), ``initialized`` (all quantizers of the layer), ``rounding``. Output quantizers
    (``QuantConfig.output_quant``) follow as rows named ``"<module> (output)"`` with ``weight_bits`` None.
    """
    rows = []
    for name, layer in quant_layers(model):
        w = _q_info(layer.weight_quantizer)
        a = _q_info(layer.input_quantizer)
        rows.append(
            dict(
                name=name,
                type=type(layer).__name__,
                weight_bits=w["bits"],
                act_bits=a["bits"],
                weight_per_channel=w["per_channel"],
                act_signed=a["signed"],
                weight_step_min=w["step_min"],
                weight_step_mean=w["step_mean"],
                weight_step_max=w["step_max"],
                act_step=a["step_mean"],
                initialized=bool(w["initialized"]) and (layer.input_quantizer is None or bool(a["initialized"])),
                rounding=w["rounding"],
            )
        )
    for name, oq in output_quantizers(model):
        a = _q_info(oq)
        rows.append(dict(name=f"{name} (output)", type=type(model.get_submodule(name)).__name__, weight_bits=None,
                         act_bits=a["bits"], weight_per_channel=None, act_signed=a["signed"], weight_step_min=None,
                         weight_step_mean=None, weight_step_max=None, act_step=a["step_mean"],
                         initialized=bool(a["initialized"]), rounding=a["rounding"]))
    return rows


def quant_summary(model: nn.Module) -> str:
    """A text table of :func:`quant_summary_dict`: layer, type, W bits, A bits, signed, per-channel, weight step
    min/mean/max, activation step."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    rows = quant_summary_dict(model)
    header = ["layer", "type", "W", "A", "A signed", "per-ch", "w_step min", "w_step mean", "w_step max", "a_step"]
    keys = ["name", "type", "weight_bits", "act_bits", "act_signed", "weight_per_channel", "weight_step_min",
            "weight_step_mean", "weight_step_max", "act_step"]
    table = [header]
    for r in rows:
        cells = [fmt(r[k]) for k in keys]
        if r["act_bits"] is None:
            cells[3] = "exact"
        elif r["act_signed"] is None:
            cells[4] = "auto"
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_out = sum(r["weight_bits"] is None for r in rows)
    lines.append(f"{len(rows) - n_out} quantized layers" + (f", {n_out} output quantizers" if n_out else ""))
    return "\n".join(lines)
