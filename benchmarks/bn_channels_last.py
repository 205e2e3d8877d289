"""How exact PyTorch's CPU batch norm is in training mode on channels-last input, on the CPU recipe's real layers.

Why it matters: a channels-last QAT student (``quant.channels_last``) trains 1.5x faster, but its batch norms (in
training mode: batch statistics) then run a different CPU kernel, and a low-bit activation quantizer after a batch
norm turns any error of its output into rounding flips. Here each batch-norm layer of the CPU recipe's GaitBase
(the zoo's FP model) gets its real input, captured from a float64 forward pass of a real training batch, and runs
in float32 in training mode in NCHW and in channels-last; both are compared with the float64 batch norm on the
same input: forward output and input gradient (for a fixed random output gradient), as the largest absolute error
and the mean absolute error (the outputs are normalised, so these are in units of the batch's standard deviation).

    python benchmarks/bn_channels_last.py [config] [--batches 1]

Writes ``results/bench/bn_channels_last_<date>_<cpu>_t<threads>.json``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from _record import write_record  # benchmarks/_record.py

REPO = Path(__file__).resolve().parents[1]


def bn_errors(bn: torch.nn.BatchNorm2d, x64: torch.Tensor, g64: torch.Tensor) -> dict[str, dict[str, float]]:
    """Errors of ``bn`` (float32, training mode) on ``x64`` in NCHW and channels-last against float64.

    Args:
        bn: a batch-norm layer (its affine weights are used; its running statistics are not touched).
        x64: float64 input ``[n, c, h, w]``. g64: float64 output gradient, same shape.

    Returns:
        ``{"nchw" | "channels_last": {"forward_max", "forward_mean", "grad_max", "grad_mean"}}``, absolute errors.
    """
    ref_bn = copy.deepcopy(bn).double().train()
    x_ref = x64.clone().requires_grad_()
    y_ref = ref_bn(x_ref)
    y_ref.backward(g64)
    out = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        b = copy.deepcopy(bn).float().train()
        x = x64.float().to(memory_format=fmt).requires_grad_()
        y = b(x)
        y.backward(g64.float().to(memory_format=fmt))
        ey, eg = (y.detach().double() - y_ref.detach()).abs(), (x.grad.double() - x_ref.grad).abs()
        out[name] = {"forward_max": float(ey.max()), "forward_mean": float(ey.mean()),
                     "grad_max": float(eg.max()), "grad_mean": float(eg.mean())}
    return out


def main() -> int:
    from qgait.config import load_config
    from qgait.engine.distributed import DistContext
    from qgait.workflows.common import open_or_build_store, split_subjects
    from qgait.workflows.quantize import load_fp_network
    from qgait.workflows.train import make_train_batches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", type=Path, default=REPO / "configs" / "qgait_w4a4_cpu.yaml")
    ap.add_argument("--fp", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt")
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    store = open_or_build_store(cfg.data, progress=False)
    split = split_subjects(store, cfg.data)
    tb = make_train_batches(cfg, store, split.train_subjects, DistContext(0, 1, 0, torch.device("cpu")))
    net = load_fp_network(a.fp, cfg, tb.num_classes).double().train()
    bns = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    layers: dict[str, list[dict]] = {n: [] for n in bns}
    gen = torch.Generator().manual_seed(0)
    for i in range(a.batches):
        captured: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda mod, inp, _out, n=n: captured.__setitem__(n, inp[0].detach()))
                 for n, m in bns.items()]
        with torch.no_grad():
            net(tb.get(i)[0].double())
        for h in hooks:
            h.remove()
        for n, x64 in captured.items():
            g64 = torch.randn(x64.shape, generator=gen, dtype=torch.float64)
            layers[n].append({"shape": list(x64.shape), **bn_errors(bns[n], x64, g64)})
    worst = {fmt: {k: max(r[fmt][k] for rs in layers.values() for r in rs)
                   for k in ("forward_max", "forward_mean", "grad_max", "grad_mean")}
             for fmt in ("nchw", "channels_last")}
    for n, rs in layers.items():
        r = rs[0]
        print(f"{n:40s} {str(r['shape']):22s} forward max |err| NCHW {r['nchw']['forward_max']:.1e} "
              f"channels-last {r['channels_last']['forward_max']:.1e}; input grad {r['nchw']['grad_max']:.1e} / "
              f"{r['channels_last']['grad_max']:.1e}")
    print("worst over layers:", worst)
    write_record("bn_channels_last", {"config": str(a.config), "fp": str(a.fp), "batches": a.batches,
                                      "worst": worst, "layers": layers}, threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
