"""The bit-allocation integer program against brute force; ties; infeasible budgets; the Pareto frontier."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from qgait.quant.mixed import Option, Tie, allocate, evaluate_choice, pareto_frontier, smallest_budget

PAIRS = [(2, 4), (4, 4), (8, 8)]


def _instance(seed: int, layers: int = 4, pairs=PAIRS, scale: int = 1) -> dict[str, list[Option]]:
    """Random costs; sizes ``n * w`` and BOPs ``macs * w * a`` (``scale`` multiplies both, e.g. 10^6 gives BOPs of
    the order of a real network's, where a solver's absolute tolerances matter)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(layers):
        n, macs = scale * int(rng.integers(10, 1000)), scale * int(rng.integers(100, 10000))
        out[f"l{i}"] = [Option(w, a, float(rng.exponential()) * 2.0 ** (-w), {"size_bits": n * w,
                                                                             "bops": macs * w * a})
                        for w, a in pairs]
    return out


def _tie_ok(combo: dict[str, Option], ties) -> bool:
    for t in ties:
        key = {"both": lambda o: o.bits, "weight": lambda o: o.weight_bits, "act": lambda o: o.act_bits}[t.on]
        if len({key(combo[n]) for n in t.layers}) != 1:
            return False
    return True


def _brute(options, budgets, ties=()):
    """Minimum cost over all combinations (None if none is feasible)."""
    names = list(options)
    best = None
    for combo in itertools.product(*(options[n] for n in names)):
        c = dict(zip(names, combo))
        if not _tie_ok(c, ties):
            continue
        if any(sum(o.metrics[k] for o in combo) > b for k, b in budgets.items()):
            continue
        cost = math.fsum(o.cost for o in combo)
        best = cost if best is None or cost < best else best
    return best


def _range(options, metric):
    lo = sum(min(o.metrics[metric] for o in opts) for opts in options.values())
    hi = sum(max(o.metrics[metric] for o in opts) for opts in options.values())
    return lo, hi


@pytest.mark.parametrize("seed", range(12))
def test_ilp_matches_brute_force(seed):
    options = _instance(seed, scale=10**6 if seed >= 8 else 1)
    rng = np.random.default_rng(100 + seed)
    lo_s, hi_s = _range(options, "size_bits")
    lo_b, hi_b = _range(options, "bops")
    budgets = {"size_bits": float(rng.uniform(lo_s, hi_s))}
    if seed % 2:
        budgets["bops"] = float(rng.uniform(lo_b, hi_b))
    ties = [Tie(("l1", "l2"), on=("both", "weight", "act")[seed % 3])] if seed % 4 == 3 else []
    best = _brute(options, budgets, ties)
    if best is None:
        with pytest.raises(ValueError, match="infeasible"):
            allocate(options, budgets, ties)
        return
    a = allocate(options, budgets, ties)
    assert a.cost == pytest.approx(best, rel=1e-9, abs=1e-12)
    for k, b in budgets.items():
        assert a.metrics[k] <= b
    assert _tie_ok(a.choice, ties)
    assert a.cost == pytest.approx(sum(o.cost for o in a.choice.values()))


def test_no_budget_takes_the_cheapest_options():
    options = _instance(0)
    a = allocate(options)
    for name, opts in options.items():
        assert a.choice[name].cost == min(o.cost for o in opts)


def test_tied_layers_get_equal_bits():
    # untied, l0 wants 2 bits and l1 wants 8; tied on both, they must agree
    options = {
        "l0": [Option(2, 4, 0.0, {"size_bits": 2}), Option(8, 8, 1.0, {"size_bits": 8})],
        "l1": [Option(2, 4, 5.0, {"size_bits": 2}), Option(8, 8, 0.0, {"size_bits": 8})],
        "l2": [Option(2, 4, 0.0, {"size_bits": 2}), Option(8, 8, 3.0, {"size_bits": 8})],
    }
    free = allocate(options)
    assert free.choice["l0"].bits != free.choice["l1"].bits
    tied = allocate(options, ties=[Tie(("l0", "l1"))])
    assert tied.choice["l0"].bits == tied.choice["l1"].bits == (8, 8)
    assert tied.choice["l2"].bits == (2, 4)
    assert tied.cost == pytest.approx(1.0)
    # a three-way tie under a budget that forces the low option
    t3 = allocate(options, {"size_bits": 6}, ties=[Tie(("l0", "l1", "l2"))])
    assert {o.bits for o in t3.choice.values()} == {(2, 4)}


def test_weight_tie_lets_activation_bits_differ():
    options = {n: [Option(w, a, c, {"size_bits": w}) for (w, a), c in zip(PAIRS + [(2, 8)], costs)]
               for n, costs in (("a", [0.0, 9, 9, 9]), ("b", [9, 9, 9, 0.0]))}
    a = allocate(options, ties=[Tie(("a", "b"), on="weight")])
    assert a.choice["a"].weight_bits == a.choice["b"].weight_bits == 2
    assert a.choice["a"].act_bits == 4 and a.choice["b"].act_bits == 8
    b = allocate(options, ties=[Tie(("a", "b"), on="both")])
    assert b.choice["a"].bits == b.choice["b"].bits


def test_infeasible_budget_names_the_smallest_feasible_one():
    options = _instance(3)
    ties = [Tie(("l0", "l3"))]
    m = smallest_budget(options, "size_bits", ties)
    assert m == min(sum(o.metrics["size_bits"] for o in combo)
                    for combo in itertools.product(*options.values())
                    if _tie_ok(dict(zip(options, combo)), ties))
    with pytest.raises(ValueError, match=re.escape(f"{m:.6g}")) as err:
        allocate(options, {"size_bits": m - 1}, ties)
    assert "smallest feasible size_bits budget" in str(err.value)
    assert allocate(options, {"size_bits": m}, ties).metrics["size_bits"] <= m  # the named budget is feasible


def test_jointly_infeasible_budgets_name_each_given_the_other():
    options = {
        "l0": [Option(2, 8, 1.0, {"size_bits": 2, "bops": 30}), Option(8, 2, 1.0, {"size_bits": 8, "bops": 16}),
               Option(2, 2, 1.0, {"size_bits": 2, "bops": 40})],
    }
    # size 2 alone is feasible, bops 16 alone is feasible; together they are not (at size 2, bops >= 30)
    with pytest.raises(ValueError, match="together") as err:
        allocate(options, {"size_bits": 2, "bops": 16})
    assert "size_bits >= 8" in str(err.value) and "bops >= 30" in str(err.value)


def test_bad_problems_are_refused():
    options = _instance(0)
    with pytest.raises(ValueError, match="unknown layers"):
        allocate(options, ties=[Tie(("l0", "nope"))])
    with pytest.raises(ValueError, match="not a metric"):
        allocate(options, {"latency": 1.0})
    with pytest.raises(ValueError, match="finite"):
        allocate(options, {"size_bits": float("nan")})
    with pytest.raises(ValueError, match="two distinct"):
        Tie(("l0", "l0"))
    disjoint = {"a": [Option(2, 4, 0.0, {})], "b": [Option(4, 4, 0.0, {})]}
    with pytest.raises(ValueError, match="ties leave no feasible"):
        allocate(disjoint, ties=[Tie(("a", "b"))])
    exact = {"a": [Option(2, None, 0.0, {})], "b": [Option(2, 4, 0.0, {})]}
    with pytest.raises(ValueError, match="exact input"):
        allocate(exact, ties=[Tie(("a", "b"), on="act")])
    assert allocate(exact, ties=[Tie(("a", "b"), on="weight")]).cost == 0.0


@pytest.mark.parametrize("points,scale", [(None, 1), (7, 1), (None, 10**6)])
def test_frontier_is_monotone_and_optimal(points, scale):
    options = _instance(5, layers=4, scale=scale)
    ties = [Tie(("l1", "l2"))]
    front = pareto_frontier(options, "size_bits", ties, points=points)
    assert len(front) >= 2
    sizes = [a.metrics["size_bits"] for a in front]
    costs = [a.cost for a in front]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert all(c1 > c2 for c1, c2 in zip(costs, costs[1:]))  # more size, strictly less cost
    for a in front:  # every point is the optimum at its own size, within its budget
        assert a.metrics["size_bits"] <= a.budgets.get("size_bits", math.inf)
        assert a.cost == pytest.approx(_brute(options, {"size_bits": a.metrics["size_bits"]}, ties), rel=1e-9)
    if points is None:  # the walk finds every corner: the brute-force frontier
        combos = [dict(zip(options, c)) for c in itertools.product(*options.values())]
        combos = [c for c in combos if _tie_ok(c, ties)]
        corners = set()
        for c in combos:
            s = sum(o.metrics["size_bits"] for o in c.values())
            best = _brute(options, {"size_bits": s}, ties)
            smaller = [_brute(options, {"size_bits": s - scale}, ties)]
            if smaller[0] is None or smaller[0] > best + 1e-12:
                corners.add(s)
        assert set(sizes) == corners


def test_evaluate_choice_sums_metrics():
    options = _instance(1)
    a = evaluate_choice(options, lambda _n, o: o.bits == (4, 4))
    assert a.metrics["size_bits"] == sum(o.metrics["size_bits"] for opts in options.values() for o in opts
                                         if o.bits == (4, 4))
    assert evaluate_choice(options, {n: 0 for n in options}).choice["l0"].bits == (2, 4)
    with pytest.raises(ValueError, match="no option matches"):
        evaluate_choice(options, lambda _n, o: o.weight_bits == 3)


def test_frontier_json_and_plot(tmp_path):
    from qgait.quant.mixed import frontier_json, plot_frontier

    options = _instance(2)
    front = pareto_frontier(options, "size_bits", points=5)
    js = frontier_json(front, "size_bits")
    assert js["layers"] == list(options) and len(js["points"]) == len(front)
    assert js["points"][0]["bits"] == [f"W{o.weight_bits}A{o.act_bits}" for o in front[0].choice.values()]
    assert [p["cost"] for p in js["points"]] == [a.cost for a in front]
    ref = evaluate_choice(options, lambda _n, o: o.bits == (4, 4))
    png = plot_frontier(tmp_path / "f" / "front.png", {"size_bits": front, "bops": front},
                        references={"W4A4": ref}, chosen={"pick": front[1]})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
