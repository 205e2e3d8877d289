"""The options of the integer program: per layer and (weight bits, act bits) pair, the cost ``Omega`` from the
sensitivities and the metrics from the hardware profile.

Metrics of option ``(w, a)`` of layer ``l`` on runtime ``r`` (:mod:`.hardware`):

- ``size_bits = n_l * r.storage_bits(w)`` (weights only; the per-channel steps and the int32 bias are the same for
  every choice and left out);
- ``bops = MACs_l * r.exec_bits(w) * r.exec_bits(a)``; a layer with an exact input (no input quantizer: the
  binary silhouettes of the first layer) counts its input at ``exact_input_bits`` and has the single act choice
  ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .hardware import RuntimeProfile, get_runtime
from .ilp import Allocation, Option, evaluate_choice
from .layers import TargetLayer
from .sensitivity import LayerSensitivity, SensitivityReport

__all__ = ["build_options", "uniform"]


def build_options(
    sensitivity: SensitivityReport | Mapping[str, LayerSensitivity],
    layers: Sequence[TargetLayer],
    macs: Mapping[str, int],
    *,
    weight_bits: Sequence[int] = (2, 3, 4, 8),
    act_bits: Sequence[int] = (4, 8),
    runtime: str | RuntimeProfile = "ideal",
    exact_input_bits: int = 8,
    restrict: Mapping[str, Sequence[tuple[int, int | None]]] | None = None,
) -> dict[str, list[Option]]:
    """``{layer: [Option(w, a, Omega_w(w) + Omega_a(a), {"size_bits", "bops"}), ...]}`` (module docstring).

    Args:
        sensitivity: from :func:`layer_sensitivity` (its bit widths must cover ``weight_bits`` / ``act_bits``).
        layers: the target layers (:func:`target_layers`: sizes and exact inputs), in order.
        macs: ``{layer: MACs}`` (:func:`count_macs`).
        weight_bits, act_bits: the grid of choices (each in 2..8).
        runtime: a :data:`RUNTIMES` name or profile: storage and executed bits.
        exact_input_bits: input bits counted in the BOPs of a layer with an exact input.
        restrict: ``{layer: [(w, a), ...]}``: only these pairs for that layer (e.g. pin ``fcs.fc`` to
            ``[(8, 8)]``); for an exact-input layer give ``a = None``.

    Raises:
        ValueError: a layer without sensitivity or MACs, a restriction naming an unknown layer or leaving none, a
            bit width outside the runtime's table.
        KeyError: a bit width the sensitivity did not evaluate.
    """
    sens = sensitivity.layers if isinstance(sensitivity, SensitivityReport) else sensitivity
    rt = get_runtime(runtime)
    restrict = dict(restrict or {})
    names = {t.name for t in layers}
    unknown = sorted(set(restrict) - names)
    if unknown:
        raise ValueError(f"restrict names unknown layers: {unknown}")
    out: dict[str, list[Option]] = {}
    for t in layers:
        if t.name not in sens or t.name not in macs:
            raise ValueError(f"layer {t.name!r}: no sensitivity or no MACs")
        s = sens[t.name]
        acts: Sequence[int | None] = [None] if t.exact_input else act_bits
        pairs = [(w, a) for w in weight_bits for a in acts]
        if t.name in restrict:
            allowed = {(int(w), None if a is None else int(a)) for w, a in restrict[t.name]}
            pairs = [p for p in pairs if p in allowed]
            if not pairs:
                raise ValueError(f"restrict leaves layer {t.name!r} no option")
        opts = []
        for w, a in pairs:
            a_exec = rt.exec_bits(exact_input_bits if a is None else a)
            metrics = {"size_bits": float(t.n_params * rt.storage_bits(w)),
                       "bops": float(macs[t.name] * rt.exec_bits(w) * a_exec)}
            opts.append(Option(int(w), None if a is None else int(a), s.omega(w, a), metrics))
        out[t.name] = opts
    return out


def uniform(options: Mapping[str, Sequence[Option]], weight_bits: int, act_bits: int) -> Allocation:
    """The uniform allocation ``W{weight_bits}A{act_bits}`` (exact-input layers keep ``act_bits=None``).

    Raises:
        ValueError: a layer without that option.
    """
    return evaluate_choice(
        options, lambda _n, o: o.weight_bits == weight_bits and o.act_bits in (act_bits, None))
