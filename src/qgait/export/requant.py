"""Requantization of the residual convs' outputs for ONNX Runtime's ``QLinearConv`` (``export_qdq(requant=...)``).

ONNX Runtime runs a conv on int8 kernels (``QLinearConv``) only when its output is quantized too. In the QAT model a
conv's output is quantized only through the next layer's input quantizer, which ORT reaches through the ReLU
(``Conv -> Relu -> QuantizeLinear`` fuses) except for the convs whose output is added to a residual (a BasicBlock's
``conv2`` and ``downsample``, :func:`residual_convs`): these get an extra uint8 requantization of their output
(:func:`insert_requant`) with a min-max range from the calibration batches (:func:`tensor_ranges`). Without it they
run as float convs on dequantized weights (exact QAT semantics, slower). ``"auto"`` (default): only with 8-bit
activation grids. A model trained with output quantizers on those tensors (``QuantConfig.output_quant``,
:mod:`qgait.quant.outputs`) needs none of this: their learned grid is the conv's output grid (uint8, zero point 128
for a signed grid), so every conv runs as ``QLinearConv`` with the QAT model's own decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph import INPUT_NAME, consumers, ort_session, producers

__all__ = ["residual_convs", "tensor_ranges", "uint8_qparams", "insert_requant"]


def _quantized_input(node: onnx.NodeProto, prod: dict[str, onnx.NodeProto]) -> bool:
    p = prod.get(node.input[0])
    return p is not None and p.op_type == "DequantizeLinear"


def _output_reaches_quantizer(node: onnx.NodeProto, cons: dict[str, list[onnx.NodeProto]]) -> bool:
    """``Conv -> QuantizeLinear`` or ``Conv -> Relu -> QuantizeLinear`` with single consumers (ORT fuses these)."""
    users = cons.get(node.output[0], [])
    if len(users) != 1:
        return False
    u = users[0]
    if u.op_type == "QuantizeLinear":
        return True
    if u.op_type == "Relu":
        nxt = cons.get(u.output[0], [])
        return len(nxt) == 1 and nxt[0].op_type == "QuantizeLinear"
    return False


def _has_conv_downstream(node: onnx.NodeProto, cons: dict[str, list[onnx.NodeProto]]) -> bool:
    seen: set[str] = set()
    todo = list(node.output)
    while todo:
        t = todo.pop()
        for u in cons.get(t, []):
            if u.op_type == "Conv":
                return True
            for o in u.output:
                if o not in seen:
                    seen.add(o)
                    todo.append(o)
    return False


def residual_convs(model: onnx.ModelProto) -> list[str]:
    """Output tensor names of the convs with a quantized input whose output is not quantized downstream (and that
    feed another conv): the ones ONNX Runtime cannot run as ``QLinearConv`` without a requantization."""
    g = model.graph
    cons, prod = consumers(g), producers(g)
    return [
        n.output[0] for n in g.node
        if n.op_type == "Conv" and _quantized_input(n, prod) and not _output_reaches_quantizer(n, cons)
        and _has_conv_downstream(n, cons)
    ]


def tensor_ranges(model: onnx.ModelProto, names: Sequence[str], batches: Iterable[Any],
                  threads: int | None = None) -> dict[str, tuple[float, float]]:
    """Min and max of the named intermediate tensors over the calibration batches (run with ONNX Runtime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort_session(m, threads)
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    count = 0
    for x in batches:
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        outs = sess.run(list(names), {INPUT_NAME: x.astype(np.float32, copy=False)})
        for n, v in zip(names, outs):
            lo[n] = min(lo[n], float(v.min()))
            hi[n] = max(hi[n], float(v.max()))
        count += 1
    if count == 0:
        raise ValueError("no calibration batches")
    return {n: (lo[n], hi[n]) for n in names}


def uint8_qparams(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return float(scale), zp


def insert_requant(model: onnx.ModelProto, qparams: dict[str, tuple[float, int]]) -> None:
    """Insert ``QuantizeLinear -> DequantizeLinear`` (uint8, given scale and zero point) after each named tensor,
    rewiring its consumers; in place."""
    g = model.graph
    new_nodes = []
    renamed: dict[str, str] = {}
    for node in g.node:
        new_nodes.append(node)
        for out in node.output:
            if out in qparams:
                s, zp = qparams[out]
                base = f"{out}_requant"
                g.initializer.extend([
                    numpy_helper.from_array(np.array(s, dtype=np.float32), f"{base}_scale"),
                    numpy_helper.from_array(np.array(zp, dtype=np.uint8), f"{base}_zero_point"),
                ])
                new_nodes.append(helper.make_node("QuantizeLinear", [out, f"{base}_scale", f"{base}_zero_point"],
                                                  [f"{base}_q"], name=f"{base}_Q"))
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale",
                                                                       f"{base}_zero_point"], [base],
                                                  name=f"{base}_DQ"))
                renamed[out] = base
    for node in new_nodes:
        if node.op_type == "QuantizeLinear" and node.name.endswith("_requant_Q"):
            continue
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del g.node[:]
    g.node.extend(new_nodes)
