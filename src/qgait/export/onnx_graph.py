"""Generic ONNX graph helpers: the exported file's interface (input/output names, ``qgait`` metadata) and small
queries and clean-ups on a ``ModelProto`` (producers, consumers, constants, dead nodes, op counts, an ONNX Runtime
session) shared by the graph rewrites of :mod:`qgait.export`."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "META_KEY",
    "consumers",
    "producers",
    "constant",
    "is_zero",
    "output_quantizer",
    "graph_summary",
    "read_qgait_metadata",
    "remove_unused_initializers",
    "prune_dead_nodes",
    "ort_session",
]

INPUT_NAME = "silhouettes"
OUTPUT_NAME = "embeddings"
META_KEY = "qgait"


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: node for node in graph.node for o in node.output}


def constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def is_zero(graph: onnx.GraphProto, name: str) -> bool:
    if not name:
        return True
    v = constant(graph, name)
    return v is not None and not np.any(v)


def output_quantizer(node: onnx.NodeProto, g: onnx.GraphProto, cons: dict[str, list[onnx.NodeProto]]):
    """The grid that quantizes ``node``'s output when ORT fuses it into ``QLinearConv``: ``(s_y, zp, lo, hi)``
    (levels ``q`` in ``[lo, hi]``, value ``(q - zp) * s_y``) for ``Conv -> [Relu] -> QuantizeLinear [-> Clip]``
    with single consumers, else None."""
    users = cons.get(node.output[0], [])
    if len(users) != 1:
        return None
    u, relu = users[0], False
    if u.op_type == "Relu":
        nxt = cons.get(u.output[0], [])
        if len(nxt) != 1:
            return None
        u, relu = nxt[0], True
    if u.op_type != "QuantizeLinear":
        return None
    sy = constant(g, u.input[1])
    zp = constant(g, u.input[2]) if len(u.input) > 2 and u.input[2] else np.zeros((), np.uint8)
    if sy is None or zp is None or sy.size != 1:
        return None
    info = np.iinfo(zp.dtype)
    lo, hi = int(info.min), int(info.max)
    clip = cons.get(u.output[0], [])
    if len(clip) == 1 and clip[0].op_type == "Clip":
        c_lo, c_hi = constant(g, clip[0].input[1]), constant(g, clip[0].input[2])
        if c_lo is not None and c_hi is not None:
            lo, hi = max(lo, int(c_lo)), min(hi, int(c_hi))
    if relu:
        lo = max(lo, int(zp))
    return float(sy), int(zp), lo, hi


def graph_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Count of each op type in the graph, e.g. ``{"Conv": 13, "QuantizeLinear": 12, ...}``."""
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return dict(sorted(out.items()))


def read_qgait_metadata(model: onnx.ModelProto) -> dict:
    """The ``qgait`` metadata JSON an exporter stored in the file (``{}`` if none)."""
    for p in model.metadata_props:
        if p.key == META_KEY:
            try:
                return json.loads(p.value)
            except json.JSONDecodeError:
                return {}
    return {}


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers no node reads (in place)."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def prune_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is read (by a node or as a graph output), repeatedly; in place."""
    g = model.graph
    while True:
        used = {name for node in g.node for name in node.input} | {o.name for o in g.output}
        keep = [n for n in g.node if any(o in used for o in n.output)]
        if len(keep) == len(g.node):
            return
        del g.node[:]
        g.node.extend(keep)


def ort_session(model: onnx.ModelProto, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
