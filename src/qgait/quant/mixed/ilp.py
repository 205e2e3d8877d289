"""Bit allocation as an integer linear program (LCPAQ, arXiv 2402.17706; HAWQ-V3, Yao et al., ICML 2021,
arXiv 2011.10680, its ILP over size, BOPs and latency), solved by ``scipy.optimize.milp`` (HiGHS branch and bound).

Variables ``x[l, c] in {0, 1}``: layer ``l`` takes its option ``c`` (a (weight bits, act bits) pair with a cost
``Omega_{l,c}`` and metrics such as size and BOPs):

    minimise    sum_{l,c} Omega_{l,c} x[l,c]
    subject to  sum_c x[l,c] = 1                                    for every layer l
                sum_{l,c} m_k[l,c] x[l,c] <= B_k                    for every budget k (size, BOPs, ...)
                sum_{c: key(c)=v} x[t0,c] = sum_{c: key(c)=v} x[t,c]  for every tie, member t, value v

``key`` is the weight bits, the act bits or the pair, per :class:`~qgait.quant.mixed.ties.Tie`. A budget below the
smallest achievable value is refused with a ``ValueError`` that names the smallest feasible budget (a second
integer program: minimise ``m_k`` under the ties and the other budgets).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ties import Tie

__all__ = ["Option", "Allocation", "allocate", "smallest_budget", "evaluate_choice"]

_REL_TOL = 1e-9


@dataclass(frozen=True)
class Option:
    """One choice for one layer: ``weight_bits``, ``act_bits`` (``None``: exact input), its ``cost`` (summed
    ``Omega``) and ``metrics`` (e.g. ``{"size_bits": ..., "bops": ...}``)."""

    weight_bits: int
    act_bits: int | None
    cost: float
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def bits(self) -> tuple[int, int | None]:
        return self.weight_bits, self.act_bits


@dataclass(frozen=True)
class Allocation:
    """A choice of one option per layer.

    Attributes:
        choice: ``{layer: Option}``, in the order of the options given.
        cost: summed cost. metrics: summed metrics. budgets: the budgets it was solved under (may be empty).
        seconds: solver wall time (0 for an allocation that was not solved for).
    """

    choice: dict[str, Option]
    cost: float
    metrics: dict[str, float]
    budgets: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def bits(self) -> dict[str, tuple[int, int | None]]:
        """``{layer: (weight bits, act bits)}``."""
        return {n: o.bits for n, o in self.choice.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: cost, metrics, budgets, seconds, ``bits: {layer: [w, a]}``."""
        return dict(cost=self.cost, metrics=self.metrics, budgets=self.budgets, seconds=self.seconds,
                    bits={n: [o.weight_bits, o.act_bits] for n, o in self.choice.items()})


def evaluate_choice(options: Mapping[str, Sequence[Option]], pick: Callable[[str, Option], bool] | Mapping[str, int],
                    budgets: Mapping[str, float] | None = None) -> Allocation:
    """The :class:`Allocation` of a given choice: ``pick`` maps each layer to an option index, or is a predicate
    ``pick(layer, option)`` of which the first matching option is taken (e.g. uniform W3A3).

    Raises:
        ValueError: a layer with no matching option, or a missing index.
    """
    choice = {}
    for name, opts in options.items():
        if isinstance(pick, Mapping):
            if name not in pick:
                raise ValueError(f"no option index for layer {name!r}")
            choice[name] = opts[pick[name]]
        else:
            hit = [o for o in opts if pick(name, o)]
            if not hit:
                raise ValueError(f"layer {name!r}: no option matches")
            choice[name] = hit[0]
    return _summarise(choice, dict(budgets or {}), 0.0)


def _summarise(choice: dict[str, Option], budgets: dict[str, float], seconds: float) -> Allocation:
    keys = sorted({k for o in choice.values() for k in o.metrics})
    metrics = {k: float(math.fsum(o.metrics.get(k, 0.0) for o in choice.values())) for k in keys}
    return Allocation(choice, float(math.fsum(o.cost for o in choice.values())), metrics, budgets, seconds)


class _Program:
    """The index of ``x[l, c]`` and the equality rows (one choice per layer, ties)."""

    def __init__(self, options: Mapping[str, Sequence[Option]], ties: Sequence[Tie]) -> None:
        if not options:
            raise ValueError("no layers to allocate")
        self.names = list(options)
        self.options = {n: list(options[n]) for n in self.names}
        empty = [n for n, o in self.options.items() if not o]
        if empty:
            raise ValueError(f"layers with no options: {empty}")
        self.offset, n = {}, 0
        for name in self.names:
            self.offset[name] = n
            n += len(self.options[name])
        self.n = n
        self.cost = np.array([o.cost for name in self.names for o in self.options[name]], dtype=float)
        if not np.all(np.isfinite(self.cost)):
            raise ValueError("option costs must be finite")
        rows, rhs = [], []
        for name in self.names:
            r = np.zeros(n)
            r[self.offset[name]: self.offset[name] + len(self.options[name])] = 1.0
            rows.append(r)
            rhs.append(1.0)
        for tie in ties:
            missing = [t for t in tie.layers if t not in self.options]
            if missing:
                raise ValueError(f"tie {tie.layers}: unknown layers {missing}")
            key = _TIE_KEYS[tie.on]
            if tie.on != "weight":
                exact = [t for t in tie.layers if any(o.act_bits is None for o in self.options[t])]
                if exact:
                    raise ValueError(f"tie {tie.layers} on {tie.on!r}: layers {exact} have an exact input")
            values = {key(o) for t in tie.layers for o in self.options[t]}
            first = tie.layers[0]
            for other in tie.layers[1:]:
                for v in values:
                    r = np.zeros(n)
                    for i, o in enumerate(self.options[first]):
                        if key(o) == v:
                            r[self.offset[first] + i] += 1.0
                    for i, o in enumerate(self.options[other]):
                        if key(o) == v:
                            r[self.offset[other] + i] -= 1.0
                    rows.append(r)
                    rhs.append(0.0)
        self.a_eq, self.b_eq = np.array(rows), np.array(rhs)

    def metric(self, key: str) -> np.ndarray:
        try:
            return np.array([o.metrics[key] for name in self.names for o in self.options[name]], dtype=float)
        except KeyError:
            raise ValueError(f"budget on {key!r}: not a metric of every option") from None

    def solve(self, c: np.ndarray, budgets: Mapping[str, float], time_limit: float | None,
              floors: Mapping[str, float] | None = None):
        """Optimal choice ``{layer: Option}`` or ``None`` when infeasible (``floors``: lower bounds on metrics).

        Budget rows stay in their own units: HiGHS' primal feasibility tolerance (1e-7) is absolute, so scaling a
        row of BOPs (coefficients up to 1e10) down to 1 would let a solution overshoot by 1e3 BOPs (measured). A
        solution counts only once rounded to 0/1: if its rounded metrics exceed a budget (an x within the
        integrality tolerance 1e-6 of 0/1 times a large coefficient: seen with presolve off), that budget is
        tightened by twice the excess and the program solved again (at most 8 times).
        """
        from scipy.optimize import Bounds, LinearConstraint, milp

        rows = {k: self.metric(k) for k in budgets}
        bounds = {k: b + _REL_TOL * max(1.0, abs(b)) for k, b in budgets.items()}
        opts: dict[str, Any] = {"mip_rel_gap": 1e-9}  # the exact optimum (HiGHS' default gap is 1e-4)
        if time_limit:
            opts["time_limit"] = time_limit
        for _ in range(8):
            cons = [LinearConstraint(self.a_eq, self.b_eq, self.b_eq)]
            if rows:
                cons.append(LinearConstraint(np.array(list(rows.values())), -np.inf, np.array(list(bounds.values()))))
            for k, lo in (floors or {}).items():
                cons.append(LinearConstraint(self.metric(k)[None, :], lo, np.inf))
            res = milp(c, constraints=cons, integrality=np.ones(self.n), bounds=Bounds(0, 1), options=opts)
            if res.status == 2:
                return None
            if res.x is None:
                raise RuntimeError(f"milp did not solve the allocation: {res.message}")
            choice = {}
            for name in self.names:
                k = len(self.options[name])
                choice[name] = self.options[name][int(np.argmax(res.x[self.offset[name]: self.offset[name] + k]))]
            over = {k: math.fsum(o.metrics[k] for o in choice.values()) - budgets[k] for k in budgets}
            over = {k: v for k, v in over.items() if v > _REL_TOL * max(1.0, abs(budgets[k]))}
            if not over:
                return choice
            for k, v in over.items():
                bounds[k] -= 2 * v
        raise RuntimeError(f"milp: no rounded solution within the budgets {dict(budgets)}")


_TIE_KEYS: dict[str, Callable[[Option], Any]] = {
    "both": lambda o: (o.weight_bits, o.act_bits),
    "weight": lambda o: o.weight_bits,
    "act": lambda o: o.act_bits,
}


def _check_budgets(budgets: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for k, b in budgets.items():
        if not isinstance(b, (int, float)) or not math.isfinite(b):
            raise ValueError(f"budget {k!r} must be a finite number, got {b!r}")
        out[k] = float(b)
    return out


def smallest_budget(options: Mapping[str, Sequence[Option]], metric: str, ties: Sequence[Tie] = (),
                    budgets: Mapping[str, float] | None = None) -> float:
    """The smallest value of ``metric`` any allocation reaches under ``ties`` and the other ``budgets``.

    Raises:
        ValueError: ``metric`` missing from an option; no allocation satisfies the ties and other budgets.
    """
    prog = _Program(options, ties)
    others = {k: b for k, b in _check_budgets(budgets or {}).items() if k != metric}
    choice = prog.solve(prog.metric(metric), others, None)
    if choice is None:
        raise ValueError(f"no allocation satisfies the ties and the budgets {others}")
    return _summarise(choice, {}, 0.0).metrics[metric]


def allocate(options: Mapping[str, Sequence[Option]], budgets: Mapping[str, float] | None = None,
             ties: Sequence[Tie] = (), *, time_limit: float | None = None) -> Allocation:
    """The minimum-cost choice of one option per layer under ``budgets`` and ``ties`` (module docstring).

    Args:
        options: ``{layer: [Option, ...]}``.
        budgets: ``{metric: upper bound}`` (e.g. ``{"size_bits": 3 * n_weights}``); none: the cheapest options.
        ties: layers that share bits.
        time_limit: solver limit in seconds (None: none).

    Returns:
        :class:`Allocation` (its metrics are recomputed from the chosen options).

    Raises:
        ValueError: an empty layer list, a layer without options, non-finite costs or budgets, a budget on a metric
            an option lacks, a tie naming an unknown layer (or an act tie on an exact input); an infeasible budget
            (the message names the smallest feasible value: alone if it is below the metric's minimum, else given
            the other budgets); ties that no allocation satisfies.
        RuntimeError: the solver stopped without a solution (time limit).
    """
    budgets = _check_budgets(budgets or {})
    t0 = time.perf_counter()
    prog = _Program(options, ties)
    choice = prog.solve(prog.cost, budgets, time_limit)
    seconds = time.perf_counter() - t0
    if choice is not None:
        return _summarise(choice, budgets, seconds)
    if prog.solve(prog.cost, {}, None) is None:
        raise ValueError(f"the ties leave no feasible allocation: {[t.layers for t in ties]}")
    alone = {k: smallest_budget(options, k, ties) for k in budgets}
    low = [f"{k} budget {budgets[k]:.6g} is below the smallest feasible {k} budget {m:.6g}"
           for k, m in alone.items() if budgets[k] < m - _REL_TOL * max(1.0, abs(m))]
    if low:
        raise ValueError("infeasible budget: " + "; ".join(low))
    joint = []
    for k in budgets:
        try:
            joint.append(f"{k} >= {smallest_budget(options, k, ties, budgets):.6g}")
        except ValueError:
            joint.append(f"{k}: infeasible whatever its value")
    raise ValueError(f"infeasible budgets {budgets}: together they cannot be met; given the other budgets, the "
                     f"smallest feasible budgets are: " + ", ".join(joint))
