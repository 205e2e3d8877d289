"""Timing of fake-quantization variants (not collected by pytest): ``python tests/quant/bench_fake_quant.py``.

Compares forward+backward of: naive autograd composition (grad-scale trick, div, clamp, STE round, mul), the
qgait explicit-gradient Function with torch ops, the same with ATen's fused forward, and ATen's fused learnable
kernels (whose gradients differ from LSQ's in the band Q_P < x/s < Q_P + 0.5, see test_fused_learnable_differs).
"""

from __future__ import annotations

import math
import time

import torch

from qgait.quant.quantizers import lsq_fake_quantize


def naive(x, s, qn, qp, g, ch_axis):
    s_scaled = (s - s * g).detach() + s * g
    if ch_axis is not None:
        shape = [1] * x.dim()
        shape[ch_axis] = -1
        s_scaled = s_scaled.reshape(shape)
    u = (x / s_scaled).clamp(-qn, qp)
    r = (torch.round(u) - u).detach() + u
    return r * s_scaled


def fused_learnable(x, s, qn, qp, g, ch_axis):
    if ch_axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, s.reshape(1), torch.zeros(1), -qn, qp, g)
    return torch._fake_quantize_learnable_per_channel_affine(x, s, torch.zeros_like(s), ch_axis, -qn, qp, g)


def bench(fn, x, s, reps=15):
    ts = []
    for i in range(reps + 3):
        xx = x.detach().requires_grad_()
        ss = s.detach().requires_grad_()
        t = time.perf_counter()
        y = fn(xx, ss)
        y.backward(torch.ones_like(y))
        if i >= 3:
            ts.append(time.perf_counter() - t)
    return min(ts) * 1e3  # min: robust to other processes sharing the CPU


def saved_mb(fn, x, s):
    """Megabytes autograd saves for backward beyond the input itself."""
    total = [0]
    xx, ss = x.detach().requires_grad_(), s.detach().requires_grad_()

    def pack(t):
        if t.data_ptr() != xx.data_ptr():
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(xx, ss)
    return total[0] / 2**20


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cases = {
        "weight 8b per-channel [256,256,3,3]": (torch.randn(256, 256, 3, 3) * 0.05, 8, True, 0),
        "weight 4b per-channel [256,256,3,3]": (torch.randn(256, 256, 3, 3) * 0.05, 4, True, 0),
        "act 8b per-tensor [240,32,32,22]": (torch.relu(torch.randn(240, 32, 32, 22)), 8, False, None),
        "act 4b per-tensor [240,32,32,22]": (torch.relu(torch.randn(240, 32, 32, 22)), 4, False, None),
    }
    for name, (x, bits, pc, ax) in cases.items():
        signed = pc
        qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        s = (2 * x.abs().mean((1, 2, 3)) / math.sqrt(qp)) if pc else (2 * x.abs().mean() / math.sqrt(qp))
        g = 1 / math.sqrt((x.numel() / s.numel()) * qp)
        res = {
            "naive autograd": bench(lambda a, b: naive(a, b, qn, qp, g, ax), x, s),
            "qgait Function, torch ops": bench(
                lambda a, b: lsq_fake_quantize(a, b, qn, qp, g, ax, use_fused=False), x, s),
            "qgait Function, fused fwd": bench(
                lambda a, b: lsq_fake_quantize(a, b, qn, qp, g, ax, use_fused=True), x, s),
            "ATen fused learnable": bench(lambda a, b: fused_learnable(a, b, qn, qp, g, ax), x, s),
        }
        mem = {
            "naive autograd": saved_mb(lambda a, b: naive(a, b, qn, qp, g, ax), x, s),
            "qgait Function, torch ops": saved_mb(
                lambda a, b: lsq_fake_quantize(a, b, qn, qp, g, ax, use_fused=False), x, s),
            "qgait Function, fused fwd": saved_mb(
                lambda a, b: lsq_fake_quantize(a, b, qn, qp, g, ax, use_fused=True), x, s),
            "ATen fused learnable": saved_mb(lambda a, b: fused_learnable(a, b, qn, qp, g, ax), x, s),
        }
        print(name, f"({x.numel() / 1e6:.2f} M elements ({x.numel() * 4 / 2**20:.0f} MB); fwd+bwd best-of-15 ms, "
              "1 thread; extra MB saved for backward)")
        for k, v in res.items():
            print(f"    {k:28s} {v:8.1f} ms {mem[k]:8.1f} MB")


if __name__ == "__main__":
    main()
