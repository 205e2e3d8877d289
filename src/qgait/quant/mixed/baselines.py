"""The allocations LCPAQ is compared with (issue 15, the table's rows): random allocation at equal size, and a
Hessian-only (HAWQ-style) allocation.

* :func:`random_allocation`: every option gets a seeded uniform random cost, and the integer program of
  :func:`~qgait.quant.mixed.allocate` picks the cheapest choice under the same budgets and ties **and** with each
  budgeted metric at least ``fill`` times its budget, so that the random model is as large (and as costly in BOPs)
  as the allocation it is compared with, not a smaller one that loses for being smaller.
* :func:`hessian_only_options`: the options of a weight-only, Hessian-weighted allocation as HAWQ-V2 ranks layers
  (Dong et al., NeurIPS 2020, arXiv 1911.03852: the average Hessian trace times the weight quantization error):
  every layer keeps the activation bits of the uniform setting, and the cost is ``Omega^W`` alone (no activation
  term), so only the weight bits move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .ilp import Allocation, Option, _check_budgets, _Program, _summarise
from .sensitivity import LayerSensitivity, SensitivityReport
from .ties import Tie

__all__ = ["random_allocation", "hessian_only_options"]


def random_allocation(options: Mapping[str, Sequence[Option]], budgets: Mapping[str, float], ties: Sequence[Tie] = (),
                      *, seed: int = 0, fill: float = 0.97) -> Allocation:
    """A random choice of one option per layer under ``budgets`` and ``ties``, each budgeted metric at least
    ``fill`` times its budget (module docstring). The returned allocation's ``cost`` is the options' own summed
    cost (e.g. summed Omega), not the random one, so that it compares with other allocations.

    Args:
        options: ``{layer: [Option, ...]}`` (:func:`~qgait.quant.mixed.build_options`).
        budgets: ``{metric: upper bound}``, at least one.
        ties: layers that share bits.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same allocation.
        fill: in ``(0, 1]``.

    Raises:
        ValueError: no budget, ``fill`` outside ``(0, 1]``; no allocation between ``fill * budget`` and the budget
            under the ties.
    """
    budgets = _check_budgets(budgets)
    if not budgets:
        raise ValueError("random allocation needs a budget (the size it must match)")
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fill must be in (0, 1], got {fill}")
    prog = _Program(options, ties)
    costs = np.random.default_rng(seed).uniform(size=prog.n)
    floors = {k: fill * b for k, b in budgets.items()}
    choice = prog.solve(costs, budgets, None, floors=floors)
    if choice is None:
        raise ValueError(f"no allocation between {fill:g} x and 1 x the budgets {budgets} under the ties")
    return _summarise(choice, budgets, 0.0)


def hessian_only_options(options: Mapping[str, Sequence[Option]],
                         sensitivity: SensitivityReport | Mapping[str, LayerSensitivity],
                         act_bits: int) -> dict[str, list[Option]]:
    """The options restricted to activation bits ``act_bits`` (exact-input layers keep their ``None``), each
    costed by its weight term ``Omega^W`` only (module docstring).

    Raises:
        ValueError: a layer with no option at ``act_bits``, or without a sensitivity.
    """
    sens = sensitivity.layers if isinstance(sensitivity, SensitivityReport) else sensitivity
    out: dict[str, list[Option]] = {}
    for name, opts in options.items():
        if name not in sens:
            raise ValueError(f"layer {name!r}: no sensitivity")
        keep = [o for o in opts if o.act_bits is None or o.act_bits == act_bits]
        if not keep:
            raise ValueError(f"layer {name!r}: no option with {act_bits}-bit activations")
        out[name] = [Option(o.weight_bits, o.act_bits, sens[name].omega_weight(o.weight_bits), o.metrics)
                     for o in keep]
    return out
