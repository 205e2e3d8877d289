"""Mixed precision on the CPU recipe (issue 15): Hessian sensitivity, Pareto frontier and ILP allocation, timed.

On the CPU recipe's FP checkpoint (``zoo/gaitbase_casiab_cpu/model.pt``, with its BNNeck head) and real training
batches of ``stores/casia-b-44`` (P x K sequences of the training subjects, the recipe's frame count, no
augmentation), with the task loss (triplet + cross-entropy on the BNNeck head, the recipe's weights):

1. sensitivity: per quantized layer (the layers ``quantize_`` targets under the quantize config), Hutchinson's
   trace of the Hessian w.r.t. its weights and its input (one product per block and probe), the quantization
   errors per bit width (MSE steps) and the costs ``Omega`` (:mod:`qgait.quant.mixed`);
2. hardware: MACs of one sequence of ``--frames`` frames (forward hooks), the residual ties;
3. frontier: the ILP swept over the weight-size budget and over the BOPs budget (ideal bit-exact accounting);
4. allocation: the ILP at uniform W3A3's weight size (and at W3A3's size and BOPs), and under the ONNX Runtime
   profile at the packed size of uniform W4.

Prints the time of each part and the per-layer traces; writes
``results/mixed/cpu_recipe_<date>_<cpu slug>.json`` (``_2``, ``_3``... beside an earlier run's; settings, CPU, load, times, per-layer figures, ties, uniform
references, frontiers, allocations with their bit maps), the PNG beside it, and the allocation at W3A3's size as a
quantize config layered over ``--config`` (``..._w3size.yaml``; at W3A3's size and BOPs ``..._w3a3.yaml``):
``qgait quantize <it> --from FP_CKPT`` trains it.

    nice -n 19 python benchmarks/mixed_precision.py [--p 8 --k 2 --batches 2 --probes 4 --threads 2]

``--device cuda`` runs the Hessian products on a GPU (the record's name then carries the GPU's).

The full-size GaitBase (no FP checkpoint on a CPU machine: ``--untrained`` times it with random weights, the
costs being the same; no quant config is written)::

    python benchmarks/mixed_precision.py --config qgait_w4a4_casiab --untrained --blocks joint --name full_size
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import torch

from qgait.config import load_config
from qgait.data.loader import TrainBatches
from qgait.data.store import SequenceStore
from qgait.quant.mixed import (allocate, bit_map_of, build_options, count_macs, find_residual_ties,
                               frontier_json, layer_sensitivity, pareto_frontier, plot_frontier, target_layers,
                               uniform, write_quant_config)
from qgait.runtime.cpu import cpu_info
from qgait.workflows.common import build_losses, build_network, split_subjects
from qgait.workflows.quantize import load_fp_network

from _record import record_path, slug  # benchmarks/_record.py: dated, CPU-named, never over an earlier run

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (HiGHS prints debug lines from C++ during some branch-and-bound runs)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _dump(out: dict) -> str:
    """``json.dumps(indent=1)`` with each frontier point on one line (hundreds of points x layers)."""
    lines = {}
    for key, fr in out["frontiers"].items():
        lines[key] = "[\n  " + ",\n  ".join(json.dumps(p, separators=(",", ":")) for p in fr["points"]) + "]"
        out = {**out, "frontiers": {**out["frontiers"], key: {**fr, "points": f"@@{key}@@"}}}
    text = json.dumps(out, indent=1)
    for key, block in lines.items():
        text = text.replace(f'"@@{key}@@"', block)
    return text


def _bits(values: str) -> tuple[int, ...]:
    return tuple(int(v) for v in values.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="qgait_w4a4_cpu", help="quantize config (targets, exclusions; the base)")
    ap.add_argument("--fp", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt")
    ap.add_argument("--untrained", action="store_true",
                    help="time the search on the config's model with random weights (no FP checkpoint: the "
                         "full-size GaitBase has none here); costs do not depend on the weights, the allocations do, "
                         "so no quant config is written")
    ap.add_argument("--name", default="cpu_recipe", help="the record's name: results/mixed/<name>_<date>_<cpu>.json")
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--p", type=int, default=8, help="subjects per Hessian batch")
    ap.add_argument("--k", type=int, default=2, help="sequences per subject in a Hessian batch")
    ap.add_argument("--batches", type=int, default=2, help="Hessian batches")
    ap.add_argument("--probes", type=int, default=4, help="Rademacher probes per batch and block")
    ap.add_argument("--blocks", choices=["layer", "joint"], default="layer")
    ap.add_argument("--weight-bits", type=_bits, default=(2, 3, 4, 8))
    ap.add_argument("--act-bits", type=_bits, default=(3, 4, 8))
    ap.add_argument("--frames", type=int, default=30, help="frames of the example sequence that MACs count")
    ap.add_argument("--points", type=int, default=None, help="budgets per frontier sweep (default: the exact walk)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the Hessian products run (cpu, cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=REPO / "results" / "mixed")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    cfg = load_config(a.config, [f"data.store={a.store}"])
    qcfg = cfg.quant.config if cfg.quant else None
    store = SequenceStore.open(a.store)
    split = split_subjects(store, cfg.data)
    size = tuple(cfg.data.input_size)
    tb = TrainBatches(store, store.select(subjects=split.train_subjects), p=a.p, k=a.k,
                      frames=cfg.data.train_frames, size=size, augment=None, seed=a.seed)
    device = torch.device(a.device)
    batches = [tuple(t.to(device) for t in b) for b in tb.held_out(a.batches)]
    if a.untrained:
        torch.manual_seed(a.seed)
        net = build_network(cfg, tb.num_classes).eval()
    else:
        net = load_fp_network(a.fp, cfg, tb.num_classes).eval()
    net = net.to(device)
    losses = build_losses(cfg.loss, net.head is not None)

    def loss_fn(_model, batch):
        x, y = batch
        return losses(net(x), y)[0]

    t_setup = time.perf_counter() - t_start
    model = net.model
    layers = target_layers(model, qcfg)
    names = [t.name for t in layers]

    # 1. sensitivity
    t0 = time.perf_counter()
    sens = layer_sensitivity(model, loss_fn, batches, names, weight_bits=a.weight_bits, act_bits=a.act_bits,
                             probes=a.probes, seed=a.seed, blocks=a.blocks)
    t_sens = time.perf_counter() - t0

    # 2. hardware costs and ties
    t0 = time.perf_counter()
    example = torch.rand(1, a.frames, *size, device=device).round()
    macs = count_macs(model, example, names)
    ties = find_residual_ties(model, example, names)
    options = build_options(sens, layers, macs, weight_bits=a.weight_bits, act_bits=a.act_bits, runtime="ideal")
    ort_options = build_options(sens, layers, macs, weight_bits=a.weight_bits, act_bits=a.act_bits,
                                runtime="onnxruntime")
    t_hw = time.perf_counter() - t0
    refs = {f"W{w}A{x}": uniform(options, w, x) for w, x in ((8, 8), (4, 4), (3, 3), (2, 4), (4, 8))
            if w in a.weight_bits and x in a.act_bits}

    # 3. frontiers
    t0 = time.perf_counter()
    with _quiet_stdout():
        front_size = pareto_frontier(options, "size_bits", ties, points=a.points)
        front_bops = pareto_frontier(options, "bops", ties, points=a.points)
    t_front = time.perf_counter() - t0

    # 4. allocations
    t0 = time.perf_counter()
    w3a3 = refs["W3A3"]
    budgets = {
        "w3a3_size": (options, {"size_bits": w3a3.metrics["size_bits"]}),
        "w3a3_size_bops": (options, {"size_bits": w3a3.metrics["size_bits"], "bops": w3a3.metrics["bops"]}),
        "onnxruntime_w4_size": (ort_options, {"size_bits": uniform(ort_options, 4, 4).metrics["size_bits"]}),
    }
    with _quiet_stdout():
        alloc = {k: allocate(opts, b, ties) for k, (opts, b) in budgets.items()}
    t_alloc = time.perf_counter() - t0
    total = t_sens + t_hw + t_front + t_alloc
    load_after = os.getloadavg()

    cpu = cpu_info()
    print(f"{cfg.name} on {_device_name(device)}: {len(names)} layers, Hessian batches {a.batches} x "
          f"{a.p * a.k} sequences x {cfg.data.train_frames} frames, {a.probes} probes per block ({a.blocks}), "
          f"{a.threads} threads, {cpu['model']}, load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"\n{'layer':34s} {'n':>7s} {'MMACs':>7s} {'tr(H_W)/n':>10s} {'+-se':>9s} {'tr(H_A)':>9s} {'+-se':>8s}"
          f" {'Om_W(3)':>9s} {'Om_A(3)':>9s}")
    for t in layers:
        s = sens.layers[t.name]
        w, ac = s.weight_trace, s.act_trace
        om_a = f"{s.omega_act(3):9.2e}" if 3 in s.act_mse and not t.exact_input else f"{'exact':>9s}"
        print(f"{t.name:34s} {t.n_params:7d} {macs[t.name] / 1e6:7.1f} {w.average:10.3e} {w.average_stderr:9.1e} "
              f"{ac.trace:9.2e} {ac.stderr:8.1e} {s.omega_weight(3) if 3 in s.weight_error else float('nan'):9.2e}"
              f" {om_a}")
    print(f"\nties: {[t.layers for t in ties]}")
    print(f"\n{'configuration':24s} {'weights KiB':>11s} {'GBOPs':>8s} {'sum Omega':>10s}")
    rows = {**{f"uniform {k}": v for k, v in refs.items()}, **{f"ILP {k}": v for k, v in alloc.items()
                                                               if k != "onnxruntime_w4_size"}}
    for k, v in rows.items():
        print(f"{k:24s} {v.metrics['size_bits'] / 8192:11.2f} {v.metrics['bops'] / 1e9:8.2f} {v.cost:10.3e}")
    for k, v in alloc.items():
        print(f"\n{k}: " + ", ".join(f"{n.replace('backbone.module.', 'b')}=W{w}A{x or '-'}"
                                      for n, (w, x) in v.bits().items()))
    ort = alloc["onnxruntime_w4_size"]
    print(f"onnxruntime_w4_size: packed size {ort.metrics['size_bits'] / 8192:.2f} KiB, executed GBOPs "
          f"{ort.metrics['bops'] / 1e9:.2f} (int8 kernels), sum Omega {ort.cost:.3e} vs uniform W4A4 "
          f"{uniform(ort_options, 4, 4).cost:.3e}")
    print(f"\nfrontier points: size {len(front_size)}, BOPs {len(front_bops)}")
    print(f"seconds: setup (data, checkpoint) {t_setup:.1f}; sensitivity {t_sens:.1f} (Hessian "
          f"{sens.seconds['hessian']:.1f}, errors {sens.seconds['errors']:.1f}); MACs + ties + options {t_hw:.1f}; "
          f"frontiers {t_front:.1f}; allocations {t_alloc:.2f}; together {total:.1f}")

    a.out_dir.mkdir(parents=True, exist_ok=True)
    # <name>[_<gpu slug>]_<date>_<cpu slug>[_<k>].json
    gpu = f"_{slug(_device_name(device))}" if device.type == "cuda" else ""
    path = record_path(a.name + gpu, out_dir=a.out_dir)
    stem = path.stem
    png = plot_frontier(
        a.out_dir / f"{stem}.png", {"size_bits": front_size, "bops": front_bops}, references=refs,
        chosen={"ILP at W3A3 size": alloc["w3a3_size"], "ILP at W3A3 size + BOPs": alloc["w3a3_size_bops"]},
        scales={"size_bits": (8192, "weights (KiB, packed at their bits)"), "bops": (1e9, "GBOPs per sequence")},
        title=f"{cfg.name}: Hessian-weighted quantization error vs size / BOPs ({a.frames}-frame sequence)")
    cfg_paths = {}
    for key, suffix, what in () if a.untrained else (("w3a3_size", "w3size", "uniform W3A3's weight size"),
                                                     ("w3a3_size_bops", "w3a3", "uniform W3A3's weight size and BOPs")):
        al = alloc[key]
        cfg_paths[key] = write_quant_config(
            a.out_dir / f"{stem}_{suffix}.yaml", bit_map_of(al), base=a.config, name=f"mixed_{suffix}_{cfg.name}",
            comment=f"Mixed precision at {what} (benchmarks/mixed_precision.py, {date.today()}): sum Omega "
                    f"{al.cost:.4g} vs uniform W3A3 {w3a3.cost:.4g}.\nTies: {[t.layers for t in ties]}")
        check = load_config(cfg_paths[key]).quant.config.bit_map  # the file loads and carries the map
        assert {n: v.model_dump(exclude_none=True) for n, v in check.items()} == bit_map_of(al), cfg_paths[key]
    out = {
        "benchmark": "mixed_precision", "date": date.today().isoformat(), "cpu": cpu, "torch": torch.__version__,
        "threads": a.threads, "device": _device_name(device), "loadavg_before": load_before,
        "loadavg_after": load_after,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "command": "python benchmarks/mixed_precision.py "
        + " ".join(sys.argv[1:]),
        "config": a.config, "fp_checkpoint": "untrained (random weights: timing only)" if a.untrained else str(a.fp),
        "store": str(a.store), "model_args": cfg.model.args, "input_size": list(size),
        "settings": {"p": a.p, "k": a.k, "batches": a.batches, "frames": cfg.data.train_frames, "probes": a.probes,
                     "blocks": a.blocks, "weight_bits": a.weight_bits, "act_bits": a.act_bits,
                     "mac_frames": a.frames, "points": a.points, "loss": "triplet + CE (BNNeck), eval mode"},
        "seconds": {"setup": t_setup, "sensitivity": t_sens, "hessian": sens.seconds["hessian"],
                    "errors": sens.seconds["errors"], "hardware": t_hw, "frontier": t_front,
                    "allocation": t_alloc, "total": total},
        "layers": [{"name": t.name, "kind": t.kind, "n_params": t.n_params, "macs": macs[t.name],
                    "exact_input": t.exact_input, **sens.layers[t.name].to_dict()} for t in layers],
        "ties": [list(t.layers) for t in ties],
        "uniform": {k: v.to_dict() for k, v in refs.items()},
        "frontiers": {"size_bits": frontier_json(front_size, "size_bits"), "bops": frontier_json(front_bops, "bops")},
        "allocations": {k: {**v.to_dict(), "bit_map": bit_map_of(v)} for k, v in alloc.items()},
        "quant_configs": {k: str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for k, p in cfg_paths.items()},
        "png": str(png.relative_to(REPO) if png.is_relative_to(REPO) else png),
    }
    path.write_text(_dump(out))
    print(f"wrote {path}, {png}, " + ", ".join(str(p) for p in cfg_paths.values()))


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
