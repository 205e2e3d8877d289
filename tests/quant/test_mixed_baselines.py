"""The table's other allocations (issue 15): random at equal size, and Hessian-only (weight Omega, fixed act bits)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qgait.quant.mixed import Option, Tie, allocate, hessian_only_options, random_allocation, uniform
from qgait.quant.mixed.hutchinson import TraceEstimate
from qgait.quant.mixed.sensitivity import LayerSensitivity


def _options(seed=0, layers=5):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(layers):
        n, macs = int(rng.integers(50, 500)), int(rng.integers(100, 5000))
        out[f"l{i}"] = [Option(w, a, float(rng.exponential()) * 2.0 ** (-w), {"size_bits": n * w, "bops": macs * w * a})
                        for w in (2, 3, 4, 8) for a in (3, 4, 8)]
    return out


def test_random_allocation_fills_the_budget_and_varies_with_the_seed():
    options = _options()
    budget = uniform(options, 3, 3).metrics["size_bits"]
    ties = [Tie(("l1", "l2"), on="weight")]
    allocs = [random_allocation(options, {"size_bits": budget}, ties, seed=s) for s in range(6)]
    for a in allocs:
        assert 0.97 * budget <= a.metrics["size_bits"] <= budget
        assert a.choice["l1"].weight_bits == a.choice["l2"].weight_bits
        assert a.cost == pytest.approx(sum(o.cost for o in a.choice.values()))  # the options' own cost
    assert len({tuple(o.bits for o in a.choice.values()) for a in allocs}) > 1
    again = random_allocation(options, {"size_bits": budget}, ties, seed=3)
    assert again.choice == allocs[3].choice
    best = allocate(options, {"size_bits": budget}, ties)
    assert all(a.cost >= best.cost - 1e-12 for a in allocs)  # never better than the optimum under the same budget


def test_random_allocation_refuses_what_it_cannot_do():
    options = _options()
    with pytest.raises(ValueError, match="needs a budget"):
        random_allocation(options, {})
    with pytest.raises(ValueError, match="fill"):
        random_allocation(options, {"size_bits": 1e9}, fill=0.0)
    smallest = sum(min(o.metrics["size_bits"] for o in opts) for opts in options.values())
    with pytest.raises(ValueError, match="no allocation between"):  # above the largest size: nothing fills it
        random_allocation(options, {"size_bits": 100 * smallest}, fill=1.0)


def _sens(name, trace, n, errors):
    return LayerSensitivity(name, TraceEstimate(trace, 0.0, None, n, 1, 1), errors, None, {})


def test_hessian_only_keeps_the_act_bits_and_costs_weights_only():
    options = _options(layers=3)
    sens = {f"l{i}": _sens(f"l{i}", 10.0 * (i + 1), 100, {2: 4.0, 3: 1.0, 4: 0.25, 8: 0.001}) for i in range(3)}
    h = hessian_only_options(options, sens, act_bits=3)
    for name, opts in h.items():
        assert {o.act_bits for o in opts} == {3} and {o.weight_bits for o in opts} == {2, 3, 4, 8}
        for o in opts:
            assert o.cost == pytest.approx(sens[name].omega_weight(o.weight_bits))
    # brute force: the allocation is the cheapest weight-Omega choice under the size budget
    budget = uniform(h, 3, 3).metrics["size_bits"]
    alloc = allocate(h, {"size_bits": budget})
    best = min((c for c in itertools.product(*h.values()) if sum(o.metrics["size_bits"] for o in c) <= budget),
               key=lambda c: sum(o.cost for o in c))
    assert alloc.cost == pytest.approx(sum(o.cost for o in best))
    with pytest.raises(ValueError, match="no option with 5-bit"):
        hessian_only_options(options, sens, act_bits=5)
