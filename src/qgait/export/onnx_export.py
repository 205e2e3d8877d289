"""ONNX export of gait models: full precision (batch norm folded) and int8 QDQ with the learned steps.

Both exporters produce ``silhouettes [n, T, h, w] float in [0, 1] -> embeddings [n, c, p]`` with dynamic ``n`` and
``T`` (input name ``"silhouettes"``, output name ``"embeddings"``), written by ``torch.onnx.export`` (the
torch.export-based exporter, opset 18; it needs ``onnxscript``) and checked with ``onnx.checker``. The file holds no
``BatchNormalization`` node: batch norms are folded into the convs first (:mod:`qgait.export.fold`).

QDQ export of a ``qgait.quant`` model (:func:`export_qdq`): every quantized conv becomes
``DequantizeLinear(int8 weight, per-channel scale, axis 0) -> Conv`` with the learned weight step times the
batch-norm factor as scale, and its input goes through ``QuantizeLinear -> DequantizeLinear`` with the LEARNED
activation step (uint8, zero point 0, when unsigned; int8 when signed; a ``Clip`` on the integers for grids below
8 bits). Nothing is re-calibrated. Two export-time additions, both optional and recorded in the file's metadata:

- ``first_input="uint8"``: the first conv's input (exact in the QAT model: the silhouette) is quantized with step
  1/255. Stored frames are ``k / 255``, so at 64x44 this is exact; after a resize (e.g. 32x22) it rounds to the
  nearest 1/255 (error <= 1/510). It lets ONNX Runtime run the first conv, whose output is the largest activation
  of the network, on int8 kernels.
- ``requant`` (needs calibration batches): ONNX Runtime runs a conv on int8 kernels (``QLinearConv``) only when
  its output is quantized too. In the QAT model a conv's output is quantized only through the next layer's input
  quantizer, which ORT reaches through the ReLU (``Conv -> Relu -> QuantizeLinear`` fuses) except for the convs
  whose output is added to a residual (a BasicBlock's ``conv2`` and ``downsample``): these get an extra uint8
  requantization of their output with a min-max range from the calibration batches. Without it they run as
  float convs on dequantized weights (exact QAT semantics, slower).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..quant import QuantLayer
from .fold import ActSpec, ConvSpec, FoldError, fold_model, plain_conv
from .qdq import QDQConv

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DEFAULT_OPSET",
    "ExportReport",
    "export_onnx",
    "export_qdq",
    "read_qgait_metadata",
    "graph_summary",
    "is_quantized_model",
]

INPUT_NAME = "silhouettes"
OUTPUT_NAME = "embeddings"
DEFAULT_OPSET = 18
"""The torch.export-based exporter implements opset >= 18 (opset 17 fails its down-conversion on Reduce ops)."""
META_KEY = "qgait"
FIRST_INPUT_SCALE = 1.0 / 255.0


@dataclass
class ExportReport:
    """What an export wrote: the file, its size, its kind and details (layers, requantized convs, ...)."""

    path: str
    bytes: int
    kind: str
    input_size: tuple[int, int]
    ops: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def is_quantized_model(model: nn.Module) -> bool:
    """True when ``model`` holds ``qgait.quant`` quantized layers."""
    return any(isinstance(m, QuantLayer) for m in model.modules())


def _example(input_size: Sequence[int], n: int = 2, frames: int = 3) -> torch.Tensor:
    """A binary example input ``[n, frames, h, w]`` (n, frames > 1: torch.export specializes sizes 0 and 1)."""
    h, w = (int(v) for v in input_size)
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, frames, h, w, generator=g) > 0.5).float()


def _to_onnx(module: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """``torch.onnx.export`` (dynamo) with dynamic ``n`` and ``T``; returns the ModelProto (quietly)."""
    n = torch.export.Dim("n", min=1, max=4096)
    t = torch.export.Dim("T", min=1, max=100_000)
    module = module.eval()
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=True,
            dynamic_shapes=({0: n, 1: t},), opset_version=opset, verbose=False, external_data=False,
        )
    return prog.model_proto


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


def _finish(model: onnx.ModelProto, path: str | Path, kind: str, input_size, meta: dict) -> ExportReport:
    """Metadata, checks (checker, no BatchNormalization, names), save."""
    remove_unused_initializers(model)
    meta = {"kind": kind, "input_size": [int(v) for v in input_size], **meta}
    del model.metadata_props[:]
    helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    model.producer_name = "qgait"
    ops = graph_summary(model)
    if "BatchNormalization" in ops:
        raise FoldError("the exported graph still holds BatchNormalization nodes")
    if [i.name for i in model.graph.input] != [INPUT_NAME] or [o.name for o in model.graph.output] != [OUTPUT_NAME]:
        raise RuntimeError("exported graph has unexpected input/output names")
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return ExportReport(str(path), path.stat().st_size, kind, tuple(int(v) for v in input_size), ops, meta)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = (64, 44),
    opset: int = DEFAULT_OPSET,
    meta: dict | None = None,
) -> ExportReport:
    """Export a full-precision model to ONNX with its batch norms folded into the convs.

    Args:
        model: ``silhouettes [n, T, h, w] -> embeddings [n, c, p]`` (not modified; a deploy copy is exported).
        path: the ``.onnx`` file to write.
        input_size: ``(h, w)`` of the model input.
        opset: ONNX opset (>= 18).
        meta: extra entries for the file's ``qgait`` metadata (e.g. model name and arguments).

    Returns:
        :class:`ExportReport`.

    Raises:
        ValueError: ``model`` is quantized (use :func:`export_qdq` or :func:`qgait.export.ort_ptq.quantize_onnx`).
        FoldError: folding changed the output (a conv's output used beside its batch norm).
    """
    if is_quantized_model(model):
        raise ValueError("model is quantized (qgait.quant layers): export it with export_qdq")
    example = _example(input_size)
    deploy, specs = fold_model(model, example)
    proto = _to_onnx(deploy, example, opset)
    info = {"folded_batch_norms": sorted(s.bn for s in specs.values() if s.bn), **(meta or {})}
    return _finish(proto, path, "fp32", input_size, info)


# --------------------------------------------------------------------------------------------------------------
# QDQ export
# --------------------------------------------------------------------------------------------------------------
def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: node for node in graph.node for o in node.output}


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
    cons, prod = _consumers(g), _producers(g)
    return [
        n.output[0] for n in g.node
        if n.op_type == "Conv" and _quantized_input(n, prod) and not _output_reaches_quantizer(n, cons)
        and _has_conv_downstream(n, cons)
    ]


def _ort_session(model: onnx.ModelProto, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def tensor_ranges(model: onnx.ModelProto, names: Sequence[str], batches: Iterable[Any],
                  threads: int | None = None) -> dict[str, tuple[float, float]]:
    """Min and max of the named intermediate tensors over the calibration batches (run with ONNX Runtime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = _ort_session(m, threads)
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


def _uint8_qparams(lo: float, hi: float) -> tuple[float, int]:
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


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def quantize_conv_biases(model: onnx.ModelProto) -> int:
    """Store the float bias of every conv with a quantized input and quantized weights as int32 with scale
    ``s_x * s_w`` (per output channel) behind a ``DequantizeLinear``: the accumulator grid of an integer conv, the
    form ONNX Runtime's ``QLinearConv`` needs (it would round the bias the same way at load). In place; returns the
    number of biases converted."""
    g = model.graph
    prod = _producers(g)
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[onnx.NodeProto] = []
    done = 0
    for node in g.node:
        if node.op_type == "Conv" and len(node.input) == 3 and node.input[2] in inits:
            px, pw = prod.get(node.input[0]), prod.get(node.input[1])
            if px is not None and pw is not None and px.op_type == pw.op_type == "DequantizeLinear":
                sx, sw = _constant(g, px.input[1]), _constant(g, pw.input[1])
                if sx is not None and sw is not None and sx.size == 1:
                    bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
                    scale = (float(sx) * sw.astype(np.float64).reshape(-1)) * np.ones_like(bias)
                    q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
                    base = f"{node.input[2]}_int32"
                    g.initializer.extend([numpy_helper.from_array(q, base),
                                          numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale")])
                    new_nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}_scale"], [f"{base}_dq"],
                                                      name=f"{base}_DQ", axis=0))
                    node.input[2] = f"{base}_dq"
                    done += 1
    if new_nodes:
        nodes = new_nodes + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    return done


def _qdq_deploy(model: nn.Module, example: torch.Tensor, first_input: str) -> tuple[nn.Module, dict[str, ConvSpec]]:
    first_act = ActSpec(FIRST_INPUT_SCALE, 8, False, 0, 255, learned=False)

    def make(conv: nn.Module, spec: ConvSpec) -> nn.Module:
        if not spec.quantized:
            return plain_conv(conv, spec.weight, spec.bias)
        act = spec.act
        if act is None and first_input == "uint8":
            act = first_act
            spec.meta["input"] = "uint8 1/255 (added at export)"
        return QDQConv(conv, spec, act)

    return fold_model(model, example, make_conv=make)


def export_qdq(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = (64, 44),
    calib: Iterable[Any] | None = None,
    requant: bool = True,
    first_input: str = "uint8",
    opset: int = DEFAULT_OPSET,
    meta: dict | None = None,
    threads: int | None = None,
) -> ExportReport:
    """Export a ``qgait.quant`` model as an ONNX QDQ graph with its learned steps (see the module docstring).

    Args:
        model: a quantized model (``quantize_`` + calibrated or trained; not modified).
        path: ``.onnx`` file to write.
        input_size: ``(h, w)`` of the model input.
        calib: batches ``[n, T, h, w]`` (real silhouettes) for the ranges of the requantized residual convs; with
            None (or ``requant=False``) those convs stay float.
        requant: requantize the residual convs' outputs (uint8, min-max over ``calib``).
        first_input: ``"uint8"`` (quantize the first conv's exact input at 1/255) or ``"float"``.
        opset: ONNX opset (>= 18).
        meta: extra ``qgait`` metadata entries.
        threads: ONNX Runtime threads for the calibration runs.

    Returns:
        :class:`ExportReport` (``details``: per-layer bits and steps, requantized tensors, overflow count).

    Raises:
        ValueError: the model is not quantized; bad ``first_input``.
        FoldError: uninitialised quantizers, unsupported layers.
    """
    if not is_quantized_model(model):
        raise ValueError("model is not quantized: use export_onnx (FP32) or quantize_onnx (ORT PTQ)")
    if first_input not in ("uint8", "float"):
        raise ValueError(f"first_input must be 'uint8' or 'float', got {first_input!r}")
    example = _example(input_size)
    deploy, specs = _qdq_deploy(model, example, first_input)
    proto = _to_onnx(deploy, example, opset)
    requantized: dict[str, dict] = {}
    if requant and calib is not None:
        names = residual_convs(proto)
        if names:
            ranges = tensor_ranges(proto, names, calib, threads)
            qparams = {n: _uint8_qparams(*ranges[n]) for n in names}
            insert_requant(proto, qparams)
            requantized = {n: {"range": list(ranges[n]), "scale": qparams[n][0], "zero_point": qparams[n][1]}
                           for n in names}
    int32_biases = quantize_conv_biases(proto)
    layers = []
    for name, s in specs.items():
        row: dict[str, Any] = {"name": name, "bn": s.bn, "quantized": s.quantized}
        if s.quantized:
            row.update(weight_bits=s.weight_bits, overflow=s.overflow, weight_initializer=f"{name}.w_int")
            if s.act is not None:
                row.update(act_bits=s.act.bits, act_signed=s.act.signed, act_scale=s.act.scale)
            row.update(s.meta)
        layers.append(row)
    info = {
        "layers": layers,
        "first_input": first_input,
        "requantized": requantized,
        "requant_skipped": bool(requant and calib is None),
        "overflow": sum(s.overflow for s in specs.values()),
        "int32_biases": int32_biases,
        **(meta or {}),
    }
    return _finish(proto, path, "int8-qdq", input_size, info)
