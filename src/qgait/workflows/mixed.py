"""``qgait mixed-precision``: per-layer bits for a quantize config (issue 15; LCPAQ, arXiv 2402.17706).

From a full-precision checkpoint and a quantize config (one with a ``quant`` section: which layers are quantized,
the schedule that will train them): Hessian sensitivity on real training batches, hardware costs under a runtime
profile, the integer program under the budget, and the result written as a quantize config layered over the given
one (``base:``) that sets ``quant.config.bit_map``, so that ``qgait quantize OUT.yaml --from FP_CKPT`` trains it.
The flow is :mod:`qgait.quant.mixed`'s (docs/mixed_precision.md; ``benchmarks/mixed_precision.py`` is the same on
the CPU recipe, timed):

1. sensitivity: Hutchinson traces of the task loss (triplet + cross-entropy on the BNNeck head, the config's
   weights; eval mode) w.r.t. each target layer's weights and input, on ``batches`` training batches of P x K
   sequences (no augmentation, seeded), and the quantization errors per bit width: ``Omega`` per layer and bits;
2. hardware: MACs of one ``mac_frames``-frame sequence (forward hooks), residual ties, the options' size / BOPs
   under the ``runtime`` profile (``ideal``, ``onnxruntime``, ``pt2e``: :data:`qgait.quant.mixed.RUNTIMES`);
3. allocation: :func:`~qgait.quant.mixed.allocate` under the budget (:func:`parse_budget`);
4. frontier: the exact Pareto walks of summed ``Omega`` over size and over BOPs (JSON, optional PNG).

Outputs: ``OUT.yaml`` (the config), ``OUT.json`` beside it (the report: per-layer traces with their standard
errors and costs, the chosen bits, size / BOPs / summed ``Omega`` of the choice and of the uniform references, the
frontiers, the seconds of each part) and optionally the frontier PNG. An existing output is refused unless
``overwrite``; all are written atomically together (:mod:`qgait.workflows.outputs`).

Budget syntax (``--budget``): comma-separated ``size=...`` and / or ``bops=...`` terms, each either a uniform
reference ``wNaM`` (the size / BOPs of uniform WNAM under the chosen runtime profile) or a number: KiB of weights
for ``size`` (packed at the runtime's storage bits), giga-BOPs per ``mac_frames``-frame sequence for ``bops``::

    size=w3a3              size=160                bops=w3a3,size=w3a3          size=w4a4,bops=5.5
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch

from .common import log

__all__ = ["BudgetTerm", "parse_budget", "resolve_budget", "run_mixed_precision", "format_result",
           "METRICS", "EXACT_INPUT_BITS"]

METRICS = {"size": ("size_bits", 8 * 1024, "KiB"), "bops": ("bops", 1e9, "GBOPs")}
"""Budget keys: ``{key: (metric of the options, divisor to the user's unit, unit)}``."""

EXACT_INPUT_BITS = 8
"""Input bits counted in the BOPs of a layer with an exact input (as :func:`qgait.quant.mixed.build_options`)."""

_UNIFORM = re.compile(r"^w([0-9]+)a([0-9]+)$")
_SUFFIX = {"size": ("kib",), "bops": ("gbops", "g")}


@dataclass(frozen=True)
class BudgetTerm:
    """One term of a budget: ``key`` (``"size"`` / ``"bops"``) at the uniform ``W{weight_bits}A{act_bits}``'s value
    or at ``value`` (KiB / GBOPs)."""

    key: str
    weight_bits: int | None = None
    act_bits: int | None = None
    value: float | None = None

    @property
    def metric(self) -> str:
        return METRICS[self.key][0]

    def spec(self) -> str:
        """The term as written on the command line (normalised)."""
        if self.value is None:
            return f"{self.key}=w{self.weight_bits}a{self.act_bits}"
        return f"{self.key}={self.value:g}"


def parse_budget(spec: str) -> list[BudgetTerm]:
    """Parse a ``--budget`` (module docstring).

    Raises:
        ValueError: one line naming the problem and the syntax: empty spec, a term without ``=``, an unknown key,
            a key given twice, a value that is neither ``wNaM`` (bits 2..8) nor a positive finite number.
    """
    syntax = ("expected size=w3a3, size=<KiB>, bops=w3a3, bops=<GBOPs> or a comma-separated combination such as "
              "size=w3a3,bops=w3a3")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--budget is empty: {syntax}")
    terms: list[BudgetTerm] = []
    for raw in spec.split(","):
        part = raw.strip()
        if "=" not in part:
            raise ValueError(f"--budget {spec!r}: {part!r} is not KEY=VALUE; {syntax}")
        key, _, value = (s.strip() for s in part.partition("="))
        key = key.lower()
        if key not in METRICS:
            raise ValueError(f"--budget {spec!r}: unknown budget {key!r} (known: size, bops); {syntax}")
        if any(t.key == key for t in terms):
            raise ValueError(f"--budget {spec!r}: {key} is given twice")
        v = value.lower().replace(" ", "")
        m = _UNIFORM.match(v)
        if m:
            w, a = int(m.group(1)), int(m.group(2))
            if not (2 <= w <= 8 and 2 <= a <= 8):
                raise ValueError(f"--budget {spec!r}: {value!r}: bits must be 2..8")
            terms.append(BudgetTerm(key, weight_bits=w, act_bits=a))
            continue
        for suffix in _SUFFIX[key]:
            if v.endswith(suffix):
                v = v[: -len(suffix)]
                break
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"--budget {spec!r}: {key}={value!r} is neither wNaM (a uniform reference such as "
                             f"w3a3) nor a number of {METRICS[key][2]}; {syntax}") from None
        if not (math.isfinite(x) and x > 0):
            raise ValueError(f"--budget {spec!r}: {key}={value!r} must be a positive number of {METRICS[key][2]}")
        terms.append(BudgetTerm(key, value=x))
    return terms


def _uniform_metrics(layers, macs: dict[str, int], runtime: str, weight_bits: int, act_bits: int) -> dict[str, float]:
    """Size and BOPs of uniform ``W{weight_bits}A{act_bits}`` on ``runtime``: the options' formulas
    (:mod:`qgait.quant.mixed.options`), for any bits, in the search's grid or not."""
    from ..quant.mixed import get_runtime

    rt = get_runtime(runtime)
    size = math.fsum(t.n_params * rt.storage_bits(weight_bits) for t in layers)
    bops = math.fsum(macs[t.name] * rt.exec_bits(weight_bits)
                     * rt.exec_bits(EXACT_INPUT_BITS if t.exact_input else act_bits) for t in layers)
    return {"size_bits": float(size), "bops": float(bops)}


def resolve_budget(terms: Sequence[BudgetTerm], layers, macs: dict[str, int], runtime: str) -> dict[str, float]:
    """``{metric: bound}`` in the options' units (bits, BOPs) for :func:`qgait.quant.mixed.allocate`."""
    out = {}
    for t in terms:
        if t.value is None:
            out[t.metric] = _uniform_metrics(layers, macs, runtime, t.weight_bits, t.act_bits)[t.metric]
        else:
            out[t.metric] = t.value * METRICS[t.key][1]
    return out


def _ceil_sig(x: float, digits: int = 6) -> float:
    """``x`` rounded up to ``digits`` significant digits (a printed budget that is still feasible)."""
    if x <= 0 or not math.isfinite(x):
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale - 1e-9) / scale


def _infeasible(options, ties, budgets: dict[str, float], terms: Sequence[BudgetTerm], cause: Exception) -> ValueError:
    """The one-line error of an infeasible budget in the ``--budget``'s units, naming the smallest feasible one."""
    from ..quant.mixed import smallest_budget

    by_metric = {t.metric: t for t in terms}
    unit = {t.metric: (t.key, *METRICS[t.key][1:]) for t in terms}  # metric -> (key, divisor, unit)
    try:
        alone = {m: smallest_budget(options, m, ties) for m in budgets}
    except ValueError:  # the ties alone leave nothing: the library's message says so
        return ValueError(str(cause))
    low = [m for m in budgets if budgets[m] < alone[m] * (1 - 1e-9)]
    parts = []
    if low:
        for m in low:
            key, div, u = unit[m]
            parts.append(f"{by_metric[m].spec()} is {budgets[m] / div:.6g} {u}, below the smallest feasible "
                         f"{key} {alone[m] / div:.6g} {u} (--budget {key}={_ceil_sig(alone[m] / div):g} or more)")
        return ValueError("infeasible budget: " + "; ".join(parts))
    for m in budgets:
        key, div, u = unit[m]
        try:
            need = smallest_budget(options, m, ties, budgets)
            parts.append(f"{key}={_ceil_sig(need / div):g} ({u})")
        except ValueError:
            parts.append(f"{key}: none whatever its value")
    return ValueError(f"infeasible budget {','.join(t.spec() for t in terms)}: each is feasible alone but not "
                      f"together; given the others, the smallest feasible ones are " + ", ".join(parts))


@contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 while the solver runs (HiGHS prints debug lines from C++ in some branch-and-bound
    runs; stdout carries the command's results)."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # stdout replaced by an object without a descriptor
        yield
        return
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _bits_tuple(name: str, bits: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in bits}))
    if not out:
        raise ValueError(f"{name}: no bit widths given")
    bad = [b for b in out if not 2 <= b <= 8]
    if bad:
        raise ValueError(f"{name}: bit widths must be 2..8, got {bad}")
    return out


def _dump(report: dict) -> str:
    """``json.dumps(indent=1)`` with each frontier point on one line."""
    blocks = {}
    fronts = dict(report.get("frontiers", {}))
    for key, fr in fronts.items():
        blocks[key] = "[\n  " + ",\n  ".join(json.dumps(p, separators=(",", ":")) for p in fr["points"]) + "]"
        fronts[key] = {**fr, "points": f"@@{key}@@"}
    text = json.dumps({**report, "frontiers": fronts}, indent=1)
    for key, block in blocks.items():
        text = text.replace(f'"@@{key}@@"', block)
    return text


def _figures(a) -> dict[str, Any]:
    """Size (KiB), GBOPs and summed Omega of an allocation, besides its raw metrics."""
    return {"size_kib": a.metrics["size_bits"] / 8192, "gbops": a.metrics["bops"] / 1e9, "omega": a.cost}


def run_mixed_precision(config: str | Path, fp_checkpoint: str | Path, budget: str, out_path: str | Path, *,
                        runtime: str = "ideal", weight_bits: Sequence[int] = (2, 3, 4, 8),
                        act_bits: Sequence[int] = (3, 4, 8), batches: int = 2, probes: int = 4,
                        p: int | None = None, k: int = 2, mac_frames: int = 30, seed: int = 0,
                        frontier_points: int | None = None, frontier_png: str | Path | None = None,
                        overwrite: bool = False, progress: bool = True, method: str = "lcpaq") -> dict[str, Any]:
    """Choose per-layer bits for ``config`` under ``budget`` and write the quantize config (module docstring).

    Args:
        config: a quantize config (file or shipped recipe's name) with a ``quant`` section; the written config
            is layered over it (``base:``, relative to the output's folder for a file).
        fp_checkpoint: the FP model (a run's ``model.pt`` with its head, or ``last.pt``).
        budget: :func:`parse_budget` syntax.
        out_path: the config to write (``.yaml`` / ``.yml``); the report goes beside it (``.json``).
        runtime: the hardware profile of sizes and BOPs (``ideal``, ``onnxruntime``, ``pt2e``).
        weight_bits, act_bits: the choices per layer (2..8).
        batches, probes: Hessian batches and Rademacher probes per batch and block.
        p, k: subjects and sequences per subject of a Hessian batch (default: the config's P, and K = 2).
        mac_frames: frames of the example sequence whose MACs count (the BOPs are per such sequence).
        seed: the batches' and the probes' seed.
        frontier_points: ``None``: the exact frontier walks; N >= 2: N budgets per frontier.
        frontier_png: also plot the frontiers there.
        overwrite: replace existing outputs.
        progress: log each step to stderr.
        method: ``"lcpaq"`` (default): the minimum summed ``Omega`` under the budget; ``"hessian"``: HAWQ-style,
            weight ``Omega`` only with every layer at the budget's uniform activation bits
            (:func:`~qgait.quant.mixed.hessian_only_options`; needs a ``size=wXaY`` / ``bops=wXaY`` budget);
            ``"random"``: a random allocation filling at least 97 % of each budget
            (:func:`~qgait.quant.mixed.random_allocation`, seeded by ``seed``): the rows LCPAQ is compared with.

    Returns:
        the report (also written as JSON): ``layers`` (traces, standard errors, ``Omega`` per bits, chosen bits),
        ``allocation`` (bits, size / BOPs / summed ``Omega``), ``uniform`` references, ``frontiers``,
        ``seconds``, ``outputs``, ``train_command``.

    Raises:
        ValueError: a malformed budget, bits outside 2..8, an unknown runtime, an output that exists (without
            ``overwrite``) or is an input, a config without a ``quant`` section, an infeasible budget (one line
            naming the smallest feasible budget in the ``--budget``'s units).
        CheckpointError: the FP checkpoint does not fit the config's model.
    """
    from ..config import load_config, resolve_config_path
    from ..data.loader import TrainBatches
    from ..quant.mixed import (RUNTIMES, allocate, bit_map_of, build_options, count_macs, evaluate_choice,
                               find_residual_ties, frontier_json, hessian_only_options, layer_sensitivity,
                               pareto_frontier, plot_frontier, random_allocation, target_layers, uniform,
                               write_quant_config)
    from .common import build_losses, open_or_build_store, split_subjects
    from .outputs import check_outputs, staged
    from .quantize import load_fp_network

    t_start = time.perf_counter()
    say = log if progress else (lambda _msg: None)
    terms = parse_budget(budget)  # malformed budgets fail before anything is loaded
    if method not in ("lcpaq", "hessian", "random"):
        raise ValueError(f"method must be lcpaq, hessian or random, got {method!r}")
    hessian_act = next((t.act_bits for t in terms if t.value is None), None)
    if method == "hessian" and hessian_act is None:
        raise ValueError("--method hessian keeps every layer at the uniform setting's activation bits: give the "
                         "budget as size=wXaY or bops=wXaY")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    weight_bits = _bits_tuple("--weight-bits", weight_bits)
    act_bits = _bits_tuple("--act-bits", act_bits)
    for name, v, lo in (("--batches", batches, 1), ("--probes", probes, 1), ("--k", k, 1),
                        ("--mac-frames", mac_frames, 1)):
        if v < lo:
            raise ValueError(f"{name} must be at least {lo}, got {v}")
    if frontier_points is not None and frontier_points < 2:
        raise ValueError(f"--frontier-points must be at least 2, got {frontier_points}")
    out_path = Path(out_path)
    if out_path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{out_path}: the output is a quantize config; give a .yaml file name")
    json_path = out_path.with_suffix(".json")
    if frontier_png and Path(frontier_png).suffix.lower() != ".png":
        raise ValueError(f"{frontier_png}: the frontier plot is a PNG; give a .png file name")
    outputs = [out_path, json_path] + ([Path(frontier_png)] if frontier_png else [])
    config_file = resolve_config_path(config)
    check_outputs(outputs, inputs=[config_file, fp_checkpoint], overwrite=overwrite)
    if not Path(fp_checkpoint).is_file():
        raise FileNotFoundError(f"{fp_checkpoint}: FP checkpoint not found")

    cfg = load_config(config)
    if cfg.quant is None:
        raise ValueError(f"{config}: no quant section; give a quantize config (e.g. qgait_w4a4_cpu) whose layers, "
                         f"exclusions and schedule the mixed precision is layered over")
    qcfg = cfg.quant.config
    store = open_or_build_store(cfg.data, progress)
    split = split_subjects(store, cfg.data)
    size = tuple(cfg.data.input_size)
    p = p or cfg.data.p
    if p < 2:
        raise ValueError(f"--p must be at least 2 (the triplet loss needs two subjects), got {p}")
    tb = TrainBatches(store, store.select(subjects=split.train_subjects), p=p, k=k, frames=cfg.data.train_frames,
                      size=size, augment=None, seed=seed)
    hess_batches = tb.held_out(batches)
    net = load_fp_network(fp_checkpoint, cfg, tb.num_classes).eval()
    losses = build_losses(cfg.loss, net.head is not None)

    def loss_fn(_model, batch):
        x, y = batch
        return losses(net(x), y)[0]

    model = net.model
    layers = target_layers(model, qcfg)
    names = [t.name for t in layers]
    t_setup = time.perf_counter() - t_start

    say(f"mixed precision: {len(names)} layers of {cfg.name}, {batches} Hessian batches of {p} x {k} sequences x "
        f"{cfg.data.train_frames} frames, {probes} probes per block; choices W{{{','.join(map(str, weight_bits))}}} "
        f"x A{{{','.join(map(str, act_bits))}}}, runtime {runtime}")
    t0 = time.perf_counter()
    sens = layer_sensitivity(model, loss_fn, hess_batches, names, weight_bits=weight_bits, act_bits=act_bits,
                             probes=probes, seed=seed, per_channel=qcfg.per_channel)
    t_sens = time.perf_counter() - t0
    say(f"sensitivity: {t_sens:.1f} s (Hessian {sens.seconds['hessian']:.1f}, errors {sens.seconds['errors']:.1f})")

    t0 = time.perf_counter()
    example = torch.rand(1, mac_frames, *size, generator=torch.Generator().manual_seed(seed)).round()
    macs = count_macs(model, example, names)
    ties = find_residual_ties(model, example, names)
    options = build_options(sens, layers, macs, weight_bits=weight_bits, act_bits=act_bits, runtime=runtime,
                            exact_input_bits=EXACT_INPUT_BITS)
    budgets = resolve_budget(terms, layers, macs, runtime)
    t_hw = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        with _quiet_stdout():
            if method == "lcpaq":
                alloc = allocate(options, budgets, ties)
            elif method == "hessian":
                picked = allocate(hessian_only_options(options, sens, hessian_act), budgets, ties).choice
                # the same choice costed with the full Omega, so that the methods compare
                alloc = evaluate_choice(options, lambda n, o: o.bits == picked[n].bits, budgets)
            else:
                alloc = random_allocation(options, budgets, ties, seed=seed)
    except ValueError as e:
        if not str(e).startswith("infeasible"):
            raise
        raise _infeasible(options, ties, budgets, terms, e) from None
    t_alloc = time.perf_counter() - t0
    say(f"allocation: {alloc.seconds:.2f} s, summed Omega {alloc.cost:.4g}")

    t0 = time.perf_counter()
    with _quiet_stdout():
        fronts = {m: pareto_frontier(options, m, ties, points=frontier_points) for m in ("size_bits", "bops")}
    t_front = time.perf_counter() - t0
    say(f"frontiers: {t_front:.1f} s ({len(fronts['size_bits'])} points over size, {len(fronts['bops'])} over "
        f"BOPs)")

    refs: dict[str, Any] = {}
    ref_allocs = {}  # the uniform references that are choices of this search (plotted)
    ref_pairs = [(8, 8), (4, 4), (3, 3)] + [(t.weight_bits, t.act_bits) for t in terms if t.value is None]
    for w, a in dict.fromkeys(ref_pairs):
        key = f"W{w}A{a}"
        if w in weight_bits and a in act_bits:
            ref_allocs[key] = u = uniform(options, w, a)
            refs[key] = {**u.to_dict(), **_figures(u)}
        else:  # not a choice of this search: its size and BOPs only
            mt = _uniform_metrics(layers, macs, runtime, w, a)
            refs[key] = {"cost": None, "metrics": mt, "size_kib": mt["size_bits"] / 8192, "gbops": mt["bops"] / 1e9,
                         "omega": None, "note": "not in the search's choices: no summed Omega"}
    bit_map = bit_map_of(alloc)
    seconds = {"setup": t_setup, "sensitivity": t_sens, "hessian": sens.seconds["hessian"],
               "errors": sens.seconds["errors"], "hardware": t_hw, "allocation": t_alloc, "frontier": t_front}
    seconds["search"] = t_sens + t_hw + t_alloc + t_front
    ref_omega = {k: v["omega"] for k, v in refs.items() if v["omega"] is not None}
    train_cmd = f"qgait quantize {out_path} --from {fp_checkpoint}"
    spec = ",".join(t.spec() for t in terms)
    comment = (f"Mixed precision by `qgait mixed-precision` ({date.today()}): --method {method}"
               + (f" --seed {seed}" if method == "random" else "") + f" --budget {spec} (runtime {runtime}) "
               f"over {config}, FP model {fp_checkpoint}.\n"
               f"Weights {alloc.metrics['size_bits'] / 8192:.2f} KiB, {alloc.metrics['bops'] / 1e9:.4g} GBOPs per "
               f"{mac_frames}-frame sequence, summed Omega {alloc.cost:.4g}"
               + "".join(f"; uniform {k} {v:.4g}" for k, v in ref_omega.items()) + ".\n"
               f"Report: {json_path.name}. Train it: {train_cmd}")

    report: dict[str, Any] = {
        "command": "mixed-precision", "date": date.today().isoformat(), "torch": torch.__version__,
        "config": str(config), "config_name": cfg.name, "fp_checkpoint": str(fp_checkpoint),
        "budget": {"spec": budget, "terms": [t.spec() for t in terms], "bounds": budgets,
                   "size_kib": budgets["size_bits"] / 8192 if "size_bits" in budgets else None,
                   "gbops": budgets["bops"] / 1e9 if "bops" in budgets else None},
        "runtime": runtime, "runtime_note": RUNTIMES[runtime].note,
        "settings": {"weight_bits": list(weight_bits), "act_bits": list(act_bits), "batches": batches,
                     "p": p, "k": k, "frames": cfg.data.train_frames, "probes": probes, "seed": seed,
                     "mac_frames": mac_frames, "exact_input_bits": EXACT_INPUT_BITS,
                     "frontier_points": frontier_points, "per_channel": qcfg.per_channel,
                     "loss": "task loss (config's triplet / CE weights) on the BNNeck head, eval mode"},
        "layers": [{"name": t.name, "kind": t.kind, "n_params": t.n_params, "macs": macs[t.name],
                    "exact_input": t.exact_input, **sens.layers[t.name].to_dict(),
                    "chosen": {"weight": alloc.choice[t.name].weight_bits, "act": alloc.choice[t.name].act_bits}}
                   for t in layers],
        "ties": [list(t.layers) for t in ties],
        "method": method,
        "allocation": {**alloc.to_dict(), **_figures(alloc), "bit_map": bit_map},
        "uniform": refs,
        "frontiers": {m: frontier_json(f, m) for m, f in fronts.items()},
        "seconds": seconds,
        "outputs": {"config": str(out_path), "report": str(json_path),
                    "frontier_png": str(frontier_png) if frontier_png else None},
        "train_command": train_cmd,
    }

    with staged(outputs) as tmp:
        # the config is written beside its final path first: ``base:`` is relative to the file's folder, and the
        # staging folder is one level below; it is checked to load with the chosen map, then staged
        beside = out_path.parent / f".qgait-partial-{os.getpid()}-{out_path.name}"
        try:
            write_quant_config(beside, bit_map, base=config_file if Path(config).is_file() else config,
                               name=out_path.stem, comment=comment)
            back = load_config(beside).quant.config.bit_map
            got = {n: v.model_dump(exclude_none=True) for n, v in back.items() if n in bit_map}
            if got != bit_map:
                raise RuntimeError(f"{out_path}: the written config reads back another bit_map: {got}")
            os.replace(beside, tmp[0])
        finally:
            beside.unlink(missing_ok=True)
        if frontier_png:
            chosen_label = f"chosen ({','.join(t.spec() for t in terms)})"
            plot_frontier(
                tmp[2], fronts, references=ref_allocs, chosen={chosen_label: alloc},
                scales={"size_bits": (8192, f"weights (KiB, {runtime} storage)"),
                        "bops": (1e9, f"GBOPs per {mac_frames}-frame sequence ({runtime})")},
                title=f"{cfg.name}: Hessian-weighted quantization error vs size / BOPs")
        seconds["total"] = time.perf_counter() - t_start
        tmp[1].write_text(_dump(report))
    return report


def format_result(report: dict[str, Any]) -> str:
    """The terminal summary: per layer the chosen bits, then the totals against uniform W3A3 / W4A4 and the command
    that trains the config."""
    lines = []
    width = max(len(r["name"]) for r in report["layers"])
    lines.append(f"{'layer':{width}s}  weight  act")
    for r in report["layers"]:
        c = r["chosen"]
        act = "exact" if c["act"] is None else str(c["act"])
        lines.append(f"{r['name']:{width}s}  {c['weight']:>6d}  {act:>5s}")
    runtime = report["runtime"]
    lines.append("")
    lines.append(f"{'':12s} {'KiB':>10s} {'GBOPs':>10s} {'sum Omega':>10s}   ({runtime} profile)")
    rows = [("budget", {"size_kib": report["budget"]["size_kib"], "gbops": report["budget"]["gbops"],
                        "omega": None}),
            ("mixed", report["allocation"])]
    rows += [(f"uniform {k}", report["uniform"][k]) for k in ("W3A3", "W4A4") if k in report["uniform"]]

    def fmt(v, spec):
        return f"{'-':>10s}" if v is None else format(v, spec)

    for label, r in rows:
        lines.append(f"{label:12s} {fmt(r['size_kib'], '10.2f')} {fmt(r['gbops'], '10.4g')} "
                     f"{fmt(r['omega'], '10.3e')}")
    out = report["outputs"]
    lines.append("")
    lines.append(f"wrote {out['config']} and {out['report']}" + (f", {out['frontier_png']}" if out["frontier_png"]
                                                                 else ""))
    s = report["seconds"]
    lines.append(f"seconds: sensitivity {s['sensitivity']:.1f}, allocation {s['allocation']:.2f}, frontiers "
                 f"{s['frontier']:.1f}, together {s['total']:.1f}")
    lines.append(f"train it: {report['train_command']}")
    return "\n".join(lines)
