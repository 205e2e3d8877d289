"""Per-layer sensitivity of a loss to quantizing a layer's weights and its input (methods.md 3; LCPAQ, arXiv
2402.17706; HAWQ-V2, Dong et al., NeurIPS 2020, arXiv 1911.03852, the Omega of its eq. (2.11), and its
extension to activations).

Weights (LCPAQ / HAWQ-V2):

    Omega_l^W(b) = tr(H_l^W) / n_l * || Q_b(W_l) - W_l ||^2

a second-order estimate of the loss increase ``1/2 dW^T H dW`` (times 2) when the quantization noise ``dW`` is
treated as isotropic within the layer (``E[dW dW^T] = ||dW||^2 / n_l I``): at a trained model the first-order term
vanishes. ``tr(H)`` is Hutchinson's estimate (:mod:`.hutchinson`), ``Q_b`` the per-channel MSE-calibrated
quantizer (:mod:`.qerror`).

Activations (our choice, the same form): quantizing the input ``A_l`` of layer ``l`` adds noise ``dA`` to a tensor
with ``N_l`` elements per batch; the same isotropic-noise argument gives

    Omega_l^A(b) = tr(H_l^A) / N_l * || Q_b(A_l) - A_l ||^2 = tr(H_l^A) * mse_l(b)

with ``H_l^A`` the Hessian of the batch-mean loss w.r.t. the layer's (private copy of its) input, estimated by the
same Hutchinson pass, and ``mse_l(b)`` the mean squared error per element of the per-tensor MSE-calibrated
quantizer on the same batches. Why this and not a Fisher proxy ``E[(g^T dA)^2]``: it is the weights' formula with
the same estimator and the same units (loss increase), so weight and activation costs add up in one objective
without a tuning weight; the first-order term ``g^T dA`` averages out for zero-mean rounding noise (it does not
vanish per sample, unlike the weights' gradient at a minimum). Both costs assume the noise of different layers
does not interact (the additive objective of LCPAQ and HAWQ-V2/V3).

Negative trace estimates (noise, or negative curvature away from a minimum) are clamped to 0 in the costs: a
negative cost would reward removing bits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..calibration import ActObserver
from .hutchinson import LossFn, TraceEstimate, hessian_traces
from .qerror import act_quant_mse, weight_quant_error

__all__ = ["LayerSensitivity", "SensitivityReport", "layer_sensitivity"]


@dataclass(frozen=True)
class LayerSensitivity:
    """Sensitivity of one layer.

    Attributes:
        name: the module name.
        weight_trace: Hutchinson estimate of ``tr(H^W)`` (:class:`TraceEstimate`, ``numel = n_l``).
        weight_error: ``{bits: ||Q_b(W) - W||^2}``.
        act_trace: estimate of ``tr(H^A)`` of the layer input, or ``None`` (not estimated).
        act_mse: ``{bits: mean squared error per input element}`` (empty without ``act_trace``).
    """

    name: str
    weight_trace: TraceEstimate
    weight_error: dict[int, float]
    act_trace: TraceEstimate | None = None
    act_mse: dict[int, float] = field(default_factory=dict)

    def omega_weight(self, bits: int) -> float:
        """``max(tr(H^W), 0) / n_l * ||Q_b(W) - W||^2``.

        Raises:
            KeyError: ``bits`` was not evaluated.
        """
        return max(self.weight_trace.trace, 0.0) / self.weight_trace.numel * self.weight_error[bits]

    def omega_act(self, bits: int | None) -> float:
        """``max(tr(H^A), 0) * mse(b)``; 0 for ``bits=None`` (exact input) or without an activation estimate.

        Raises:
            KeyError: ``bits`` was not evaluated.
        """
        if bits is None or self.act_trace is None:
            return 0.0
        return max(self.act_trace.trace, 0.0) * self.act_mse[bits]

    def omega(self, weight_bits: int, act_bits: int | None) -> float:
        """``Omega^W(w) + Omega^A(a)``: the cost of the choice ``(w, a)`` for this layer."""
        return self.omega_weight(weight_bits) + self.omega_act(act_bits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: traces, errors and the costs per bit width (keys as strings)."""
        return dict(
            name=self.name,
            weight_trace=self.weight_trace.to_dict(),
            weight_error={str(b): e for b, e in self.weight_error.items()},
            omega_weight={str(b): self.omega_weight(b) for b in self.weight_error},
            act_trace=self.act_trace.to_dict() if self.act_trace else None,
            act_mse={str(b): e for b, e in self.act_mse.items()},
            omega_act={str(b): self.omega_act(b) for b in self.act_mse},
        )


@dataclass(frozen=True)
class SensitivityReport:
    """``layers[name]`` sensitivities and ``seconds`` (``"hessian"``: the Hutchinson pass, ``"errors"``: the
    quantization errors)."""

    layers: dict[str, LayerSensitivity]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dict(layers={n: s.to_dict() for n, s in self.layers.items()}, seconds=self.seconds)


def layer_sensitivity(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    layers: Sequence[str],
    *,
    weight_bits: Sequence[int] = (2, 3, 4, 8),
    act_bits: Sequence[int] = (4, 8),
    probes: int = 8,
    activations: bool = True,
    per_channel: bool = True,
    seed: int = 0,
    train_mode: bool = False,
    max_samples: int = 2**18,
    blocks: str = "layer",
) -> SensitivityReport:
    """Hessian traces and quantization costs ``Omega`` of each layer (module doc).

    One Hutchinson pass over ``batches`` (:func:`hessian_traces`, which also feeds an
    :class:`qgait.quant.ActObserver` per layer input), then the quantization error of each weight and input per
    bit width.

    Args:
        model, loss_fn, batches, layers, probes, seed, train_mode, blocks: as :func:`hessian_traces`.
        weight_bits, act_bits: the bit widths to cost (2..8).
        activations: estimate the input costs too (else ``act_trace`` is ``None`` and ``omega_act`` 0).
        per_channel: per-channel weight steps (as ``QuantConfig.per_channel``).
        max_samples: subsample size of each activation observer.

    Raises:
        ValueError: as :func:`hessian_traces`; bits outside 2..8.
    """
    observers = {n: ActObserver(max_samples=max_samples, seed=seed) for n in layers} if activations else {}

    def observe(name: str, x: Tensor) -> None:
        observers[name].update(x)

    traces = hessian_traces(model, loss_fn, batches, layers, probes=probes, activations=activations, seed=seed,
                            train_mode=train_mode, observe=observe if activations else None, blocks=blocks)
    t0 = time.perf_counter()
    mods = dict(model.named_modules())
    out = {}
    for name in layers:
        w_err = {int(b): weight_quant_error(mods[name].weight, int(b), per_channel=per_channel) for b in weight_bits}
        a_tr = traces.activations.get(name)
        a_mse = act_quant_mse(observers[name], act_bits) if a_tr is not None else {}
        out[name] = LayerSensitivity(name, traces.weights[name], w_err, a_tr, a_mse)
    return SensitivityReport(out, {"hessian": traces.seconds, "errors": time.perf_counter() - t0})
