"""``ConvInteger`` rewrite of the QDQ convs (``export_qdq(conv_kernel="integer")``).

Every conv with a quantized input becomes ``ConvInteger`` + a float scale-and-bias epilogue (:func:`to_conv_integer`):
exact, nothing calibrated, but slow in ONNX Runtime 1.32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph import constant, is_zero, producers, prune_dead_nodes

__all__ = ["to_conv_integer"]


def to_conv_integer(model: onnx.ModelProto) -> list[str]:
    """Rewrite every ``DequantizeLinear(x_q) -> Conv <- DequantizeLinear(W_int8)`` (zero points 0, per-tensor input
    step ``s_x``, per-channel weight steps ``s_w``) as

    ``ConvInteger(x_q, W_int8) -> Cast(float) -> Mul(s_x * s_w) -> Add(bias)``

    in place: the integer conv computes the exact int32 accumulator (ONNX Runtime runs it on its int8 GEMM), the
    float epilogue applies the scales and the float bias per channel. Unlike ``QLinearConv`` there is no int32
    bias rounding and no integer requantization of the output, so the conv output is the QDQ graph's up to float
    rounding, and a conv whose output is not quantized downstream (a residual branch) needs no extra
    requantization. Returns the output names of the converted convs."""
    g = model.graph
    prod = producers(g)
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[onnx.NodeProto] = []
    done: list[str] = []
    for node in g.node:
        px = prod.get(node.input[0]) if node.op_type == "Conv" else None
        pw = prod.get(node.input[1]) if px is not None else None
        ok = (px is not None and pw is not None and px.op_type == pw.op_type == "DequantizeLinear"
              and pw.input[0] in inits and inits[pw.input[0]].data_type == TensorProto.INT8)
        if ok:
            sx, sw = constant(g, px.input[1]), constant(g, pw.input[1])
            bias = None
            if len(node.input) > 2 and node.input[2]:
                bias = numpy_helper.to_array(inits[node.input[2]]) if node.input[2] in inits else None
                ok = bias is not None
            ok = (ok and sx is not None and sw is not None and sx.size == 1
                  and is_zero(g, px.input[2] if len(px.input) > 2 else "")
                  and is_zero(g, pw.input[2] if len(pw.input) > 2 else ""))
        if not ok:
            new_nodes.append(node)
            continue
        out = node.output[0]
        base = f"{out}_cint"
        c_out = int(sw.size) if sw.size > 1 else int(numpy_helper.to_array(inits[pw.input[0]]).shape[0])
        dims = len(inits[pw.input[0]].dims) - 2
        bshape = [1, c_out] + [1] * dims
        scale = (np.float64(sx.reshape(())) * sw.astype(np.float64).reshape(-1) * np.ones(c_out)).astype(np.float32)
        xz = constant(g, px.input[2]) if len(px.input) > 2 and px.input[2] else np.zeros((), np.uint8)
        g.initializer.extend([
            numpy_helper.from_array(np.zeros((), dtype=xz.dtype), f"{base}_x_zero_point"),
            numpy_helper.from_array(np.zeros((), dtype=np.int8), f"{base}_w_zero_point"),
            numpy_helper.from_array(scale.reshape(bshape), f"{base}_scale"),
        ])
        cint = helper.make_node("ConvInteger", [px.input[0], pw.input[0], f"{base}_x_zero_point",
                                                f"{base}_w_zero_point"], [f"{base}_i32"], name=f"{base}_ConvInteger")
        cint.attribute.extend(node.attribute)
        new_nodes += [
            cint,
            helper.make_node("Cast", [f"{base}_i32"], [f"{base}_f32"], name=f"{base}_Cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{base}_f32", f"{base}_scale"], [f"{base}_scaled" if bias is not None else out],
                             name=f"{base}_Mul"),
        ]
        if bias is not None:
            g.initializer.append(numpy_helper.from_array(bias.astype(np.float32).reshape(bshape), f"{base}_bias"))
            new_nodes.append(helper.make_node("Add", [f"{base}_scaled", f"{base}_bias"], [out], name=f"{base}_Add"))
        done.append(out)
    del g.node[:]
    g.node.extend(new_nodes)
    prune_dead_nodes(model)
    return done
