"""Int32 conv biases for ONNX Runtime's ``QLinearConv`` that keep the float bias's decisions (``match_bias``).

``QLinearConv`` takes an int32 bias on the grid ``s_x * s_w``; plain rounding shifts a whole channel by up to half an
accumulator step, which at 4-bit grids (8-30 accumulator steps per output level) flips about 1 % of the activations
per layer. :func:`quantize_conv_biases` instead stores each channel's weights as ``w_int * k`` (scale ``s_w / k``,
same dequantized weights, a ``k`` times finer bias grid, ``k`` bounded by :func:`weight_multipliers`) and picks ``k``
and the int32 bias so that every decision threshold of the output grid falls between the same accumulator integers as
with the float bias (:func:`matched_bias`). Convs that stay float keep a float bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph import constant, consumers, output_quantizer, producers

__all__ = ["SCALE_TWEAKS", "matched_bias", "quantize_conv_biases", "weight_multipliers"]

SCALE_TWEAKS = tuple(sorted({0.0} | {sgn * m * 10.0**e for e in (-6, -5, -4) for m in (1, 2, 5) for sgn in (1, -1)},
                            key=abs))
"""Relative weight-scale changes :func:`matched_bias` may use for a channel that no ``(k, B)`` matches (<= 5e-4)."""


def matched_bias(beta: np.ndarray, cells: np.ndarray, levels: tuple[int, int], k_max: np.ndarray,
                 tweaks: Sequence[float] = SCALE_TWEAKS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output channel, the weight multiplier ``k``, int32 bias ``B`` (on the grid ``s_x * s_w / k``) and
    relative weight-scale change ``delta`` that make an integer conv's decisions those of the exact float bias.

    With ``a`` the integer accumulator in units ``s_x * s_w``, the exact output level is
    ``round((a + beta) / cells)`` (``beta = bias / (s_x s_w)``, ``cells = s_y / (s_x s_w)`` accumulator units per
    output level), the integer kernel's ``round((a + B / k) (1 + delta) / cells)`` (weights stored ``k`` times
    larger, so the accumulator is ``k a``; scale ``s_w (1 + delta) / k``). Both agree for every ``a`` iff no
    integer lies between the true and the integer kernel's decision threshold for each level step ``n`` of
    ``levels = (lo, hi)`` (levels relative to the zero point; values beyond are clipped anyway). Tried:
    ``k = 1 .. k_max`` with ``B`` the floor and ceiling of ``k beta``, first with ``delta = 0``, then, for a
    channel left with a mismatch, with the ``tweaks`` (tiny against the 4-bit weight grid: it moves thresholds
    that lie within a few thousandths of an accumulator step of an integer). Kept: fewest mismatched thresholds,
    then the smallest ``|delta|``, then the smallest bias error.

    Returns:
        ``(k, B, mismatches, delta)`` per channel (``mismatches``: thresholds left with a different decision).
    """
    c_out = beta.shape[0]
    n = np.arange(levels[0], levels[1], dtype=np.float64) + 0.5  # thresholds between level n and n + 1
    out_k, out_b = np.ones(c_out, np.int64), np.zeros(c_out, np.int64)
    out_m, out_d = np.zeros(c_out, np.int64), np.zeros(c_out, np.float64)
    for o in range(c_out):
        true_side = np.ceil(n * cells[o] - beta[o])
        ks = np.arange(1, int(k_max[o]) + 1, dtype=np.float64)
        cand = np.concatenate([np.floor(ks * beta[o]), np.ceil(ks * beta[o])])
        kk = np.concatenate([ks, ks])
        approx = cand / kk
        err = np.abs(approx - beta[o])
        best = None
        for d in tweaks:
            theta = n * cells[o] / (1.0 + d)
            miss = (np.ceil(theta[None, :] - approx[:, None]) != true_side[None, :]).sum(1)
            i = np.lexsort((err, miss))[0]
            if best is None or miss[i] < best[2]:
                best = (int(kk[i]), int(cand[i]), int(miss[i]), float(d))
            if best[2] == 0:
                break
        out_k[o], out_b[o], out_m[o], out_d[o] = best
    return out_k, out_b, out_m, out_d


def quantize_conv_biases(model: onnx.ModelProto, match: bool = True) -> dict:
    """Store the float bias of every conv that ONNX Runtime will run as ``QLinearConv`` (quantized input and
    weights, output quantized through ``[Relu ->] QuantizeLinear``) as int32 with scale ``s_x * s_w`` per output
    channel behind a ``DequantizeLinear``: the accumulator grid of the integer conv, the form ``QLinearConv`` needs.
    Convs whose output is not quantized stay float convs in ORT and keep their exact float bias.

    ``match``: pick per channel a weight multiplier ``k`` (weights stored as ``w_int * k`` with scale ``s_w / k``,
    same dequantized weights, ``|w_int * k| <=`` :func:`weight_multipliers`' bound) and the int32 bias so that the
    integer conv takes the same decisions as the float bias (:func:`matched_bias`); without it the bias is just
    rounded to ``s_x * s_w``, which at 4-bit activations moves whole channels of activations across a threshold.
    In place; returns ``{"converted", "matched_channels", "channels", "mismatched_thresholds"}``."""
    g = model.graph
    prod, cons = producers(g), consumers(g)
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[onnx.NodeProto] = []
    stats: dict[str, Any] = {"converted": 0, "matched_channels": 0, "channels": 0, "mismatched_thresholds": 0,
                             "tweaked_channels": 0, "max_scale_tweak": 0.0}
    for node in g.node:
        if node.op_type != "Conv" or len(node.input) != 3 or node.input[2] not in inits:
            continue
        px, pw = prod.get(node.input[0]), prod.get(node.input[1])
        if px is None or pw is None or not (px.op_type == pw.op_type == "DequantizeLinear"):
            continue
        outq = output_quantizer(node, g, cons)
        if outq is None:
            continue
        sx, sw = constant(g, px.input[1]), constant(g, pw.input[1])
        if sx is None or sw is None or sx.size != 1:
            continue
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        c_out = bias.shape[0]
        acc = float(sx) * sw.astype(np.float64).reshape(-1) * np.ones(c_out)
        k = np.ones(c_out, np.int64)
        q = np.round(bias / acc)
        w_init = inits.get(pw.input[0])
        if match and w_init is not None and w_init.data_type == TensorProto.INT8:
            w = numpy_helper.to_array(w_init).astype(np.int64)
            src = prod.get(px.input[0])  # a Clip on the integers: a grid below 8 bits
            k_max = weight_multipliers(torch.from_numpy(w), 4 if src is not None and src.op_type == "Clip" else 8)
            k_max = k_max.numpy()
            sy, zp, lo, hi = outq
            k, q, miss, delta = matched_bias(bias / acc, sy / acc, (lo - zp, hi - zp), k_max)
            stats["matched_channels"] += int((miss == 0).sum())
            stats["channels"] += c_out
            stats["mismatched_thresholds"] += int(miss.sum())
            stats["tweaked_channels"] += int((delta != 0).sum())
            stats["max_scale_tweak"] = max(stats["max_scale_tweak"], float(np.abs(delta).max()))
            if (k > 1).any() or (delta != 0).any():
                shape = (-1,) + (1,) * (w.ndim - 1)
                w_init.CopyFrom(numpy_helper.from_array((w * k.reshape(shape)).astype(np.int8), w_init.name))
                new_scale = (sw.astype(np.float64).reshape(-1) * np.ones(c_out) * (1 + delta) / k)
                g.initializer.append(numpy_helper.from_array(new_scale.astype(np.float32), f"{w_init.name}_scale_k"))
                pw.input[1] = f"{w_init.name}_scale_k"
                acc = acc * (1 + delta) / k
        q = np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
        base = f"{node.input[2]}_int32"
        g.initializer.extend([numpy_helper.from_array(q, base),
                              numpy_helper.from_array(acc.astype(np.float32), f"{base}_scale")])
        new_nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}_scale"], [f"{base}_dq"],
                                          name=f"{base}_DQ", axis=0))
        node.input[2] = f"{base}_dq"
        stats["converted"] += 1
    if new_nodes:
        nodes = new_nodes + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    return stats


def weight_multipliers(w_int: torch.Tensor, input_bits: int) -> torch.Tensor:
    """Per output channel, the largest integer ``k >= 1`` with which a weight channel can be stored as
    ``w_int * k`` (scale ``s_w / k``, same dequantized weights): ``|w_int * k| <= 127`` (the int8 container), or
    ``<= 63`` when the conv's input is an 8-bit tensor (a pair of ``u8 * s8`` products then stays within int16,
    the ``vpmaddubsw`` bound of ONNX Runtime's non-VNNI x86 kernels, as ORT's ``reduce_range``). ``k = 1`` for
    all-zero channels and channels already past the bound (8-bit weights)."""
    cap = 63 if input_bits >= 8 else 127
    peak = w_int.reshape(w_int.shape[0], -1).abs().amax(1).to(torch.int64)
    return torch.where(peak > 0, cap // peak.clamp_min(1), torch.ones_like(peak)).clamp_min(1)
