"""ONNX export of gait models: full precision (batch norm folded) and int8 QDQ with the learned steps.

Both exporters produce ``silhouettes [n, T, h, w] float in [0, 1] -> embeddings [n, c, p]`` with dynamic ``n`` and
``T`` (input name ``"silhouettes"``, output name ``"embeddings"``), written by ``torch.onnx.export`` (the
torch.export-based exporter, opset 18; it needs ``onnxscript``) and checked with ``onnx.checker``. The file holds no
``BatchNormalization`` node: batch norms are folded into the convs first (:mod:`qgait.export.fold`).

QDQ export of a ``qgait.quant`` model (:func:`export_qdq`): every quantized conv becomes
``DequantizeLinear(int8 weight, per-channel scale, axis 0) -> Conv`` with the learned weight step times the
batch-norm factor as scale, and its input goes through ``QuantizeLinear -> DequantizeLinear`` with the LEARNED
activation step (uint8, zero point 0, when unsigned; int8 when signed; a ``Clip`` on the integers for grids below
8 bits). Nothing is re-calibrated. Export-time choices, all optional and recorded in the file's metadata:

- ``first_input``: ``"uint8"`` quantizes the first conv's input (exact in the QAT model: the silhouette) with step
  1/255. Stored frames are ``k / 255``, so at 64x44 this is exact; after a resize (e.g. 32x22) it rounds to the
  nearest 1/255 (error <= 1/510). It lets ONNX Runtime run the first conv, whose output is the largest activation
  of the network, on int8 kernels. ``"auto"`` (default): uint8 at 64x44 or with 8-bit activation grids, float
  otherwise (at 4-bit grids the 1/510 error moves activations across thresholds: W4A4 cosine 0.9895), and float
  whenever the first conv has integer weights above 64 (8-bit weights): silhouette levels up to 255 then overflow
  the int16 pair sums of ONNX Runtime's u8s8 kernels on CPUs without VNNI (W8A8 cosine 0.908), see
  :func:`resolve_first_input`; the report lists the other convs at risk (``saturation_risk``).
- ``requant`` (needs calibration batches): ONNX Runtime runs a conv on int8 kernels (``QLinearConv``) only when
  its output is quantized too. In the QAT model a conv's output is quantized only through the next layer's input
  quantizer, which ORT reaches through the ReLU (``Conv -> Relu -> QuantizeLinear`` fuses) except for the convs
  whose output is added to a residual (a BasicBlock's ``conv2`` and ``downsample``): these get an extra uint8
  requantization of their output with a min-max range from the calibration batches. Without it they run as
  float convs on dequantized weights (exact QAT semantics, slower). ``"auto"`` (default): only with 8-bit
  activation grids. A model trained with output quantizers on those tensors (``QuantConfig.output_quant``,
  :mod:`qgait.quant.outputs`) needs none of this: their learned grid is the conv's output grid (uint8, zero point
  128 for a signed grid), so every conv runs as ``QLinearConv`` with the QAT model's own decisions.
- ``match_bias`` (default on): ``QLinearConv`` takes an int32 bias on the grid ``s_x * s_w``; plain rounding
  shifts a whole channel by up to half an accumulator step, which at 4-bit grids (8-30 accumulator steps per
  output level) flips about 1 % of the activations per layer. :func:`quantize_conv_biases` instead stores each
  channel's weights as ``w_int * k`` (scale ``s_w / k``, same dequantized weights, a ``k`` times finer bias grid)
  and picks ``k`` and the int32 bias so that every decision threshold of the output grid falls between the same
  accumulator integers as with the float bias (:func:`matched_bias`). Convs that stay float keep a float bias.
- ``conv_kernel="integer"``: ``ConvInteger`` + a float scale-and-bias epilogue for every conv with a quantized
  input (:func:`to_conv_integer`): exact, nothing calibrated, but slow in ONNX Runtime 1.32.
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
from .fold import ActSpec, ConvSpec, FoldError, conv_specs, fold_model, plain_conv
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
    "CONV_KERNELS",
    "resolve_first_input",
    "to_conv_integer",
    "weight_multipliers",
    "matched_bias",
    "float_weights_for_float_convs",
    "SCALE_TWEAKS",
    "quantize_conv_biases",
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


def _output_quantizer(node: onnx.NodeProto, g: onnx.GraphProto, cons: dict[str, list[onnx.NodeProto]]):
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
    sy = _constant(g, u.input[1])
    zp = _constant(g, u.input[2]) if len(u.input) > 2 and u.input[2] else np.zeros((), np.uint8)
    if sy is None or zp is None or sy.size != 1:
        return None
    info = np.iinfo(zp.dtype)
    lo, hi = int(info.min), int(info.max)
    clip = cons.get(u.output[0], [])
    if len(clip) == 1 and clip[0].op_type == "Clip":
        c_lo, c_hi = _constant(g, clip[0].input[1]), _constant(g, clip[0].input[2])
        if c_lo is not None and c_hi is not None:
            lo, hi = max(lo, int(c_lo)), min(hi, int(c_hi))
    if relu:
        lo = max(lo, int(zp))
    return float(sy), int(zp), lo, hi


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
    prod, cons = _producers(g), _consumers(g)
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
        outq = _output_quantizer(node, g, cons)
        if outq is None:
            continue
        sx, sw = _constant(g, px.input[1]), _constant(g, pw.input[1])
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


def float_weights_for_float_convs(model: onnx.ModelProto) -> list[str]:
    """Replace ``DequantizeLinear(W_int8)`` by the float weights it computes (``w_int * s_w``, the same values) for
    every conv that ONNX Runtime runs in float (its input is not quantized, or its output does not reach a
    quantizer: residual convs without requantization, the per-part FC), in place. ORT then runs them with its
    blocked (NCHWc) float kernels, which it does not use behind a ``DequantizeLinear`` weight: 1.7x faster on the
    W4A4 CPU model, at 4 bytes per such weight. Returns the weight initializer names replaced."""
    g = model.graph
    prod, cons = _producers(g), _consumers(g)
    inits = {i.name: i for i in g.initializer}
    done = []
    for node in g.node:
        if node.op_type != "Conv":
            continue
        pw, px = prod.get(node.input[1]), prod.get(node.input[0])
        if pw is None or pw.op_type != "DequantizeLinear" or pw.input[0] not in inits:
            continue
        fused = px is not None and px.op_type == "DequantizeLinear" and _output_quantizer(node, g, cons) is not None
        if fused:
            continue
        w = numpy_helper.to_array(inits[pw.input[0]]).astype(np.float32)
        sw = _constant(g, pw.input[1])
        if sw is None:
            continue
        sw = sw.astype(np.float32)
        wf = w * (sw.reshape(-1, *[1] * (w.ndim - 1)) if sw.size > 1 else sw)
        g.initializer.append(numpy_helper.from_array(wf.astype(np.float32), f"{pw.input[0]}_f32"))
        node.input[1] = f"{pw.input[0]}_f32"
        done.append(pw.input[0])
    prune_dead_nodes(model)
    return done


def weight_multipliers(w_int: torch.Tensor, input_bits: int) -> torch.Tensor:
    """Per output channel, the largest integer ``k >= 1`` with which a weight channel can be stored as
    ``w_int * k`` (scale ``s_w / k``, same dequantized weights): ``|w_int * k| <= 127`` (the int8 container), or
    ``<= 63`` when the conv's input is an 8-bit tensor (a pair of ``u8 * s8`` products then stays within int16,
    the ``vpmaddubsw`` bound of ONNX Runtime's non-VNNI x86 kernels, as ORT's ``reduce_range``). ``k = 1`` for
    all-zero channels and channels already past the bound (8-bit weights)."""
    cap = 63 if input_bits >= 8 else 127
    peak = w_int.reshape(w_int.shape[0], -1).abs().amax(1).to(torch.int64)
    return torch.where(peak > 0, cap // peak.clamp_min(1), torch.ones_like(peak)).clamp_min(1)


def _is_zero(graph: onnx.GraphProto, name: str) -> bool:
    if not name:
        return True
    v = _constant(graph, name)
    return v is not None and not np.any(v)


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
    prod = _producers(g)
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[onnx.NodeProto] = []
    done: list[str] = []
    for node in g.node:
        px = prod.get(node.input[0]) if node.op_type == "Conv" else None
        pw = prod.get(node.input[1]) if px is not None else None
        ok = (px is not None and pw is not None and px.op_type == pw.op_type == "DequantizeLinear"
              and pw.input[0] in inits and inits[pw.input[0]].data_type == TensorProto.INT8)
        if ok:
            sx, sw = _constant(g, px.input[1]), _constant(g, pw.input[1])
            bias = None
            if len(node.input) > 2 and node.input[2]:
                bias = numpy_helper.to_array(inits[node.input[2]]) if node.input[2] in inits else None
                ok = bias is not None
            ok = (ok and sx is not None and sw is not None and sx.size == 1
                  and _is_zero(g, px.input[2] if len(px.input) > 2 else "")
                  and _is_zero(g, pw.input[2] if len(pw.input) > 2 else ""))
        if not ok:
            new_nodes.append(node)
            continue
        out = node.output[0]
        base = f"{out}_cint"
        c_out = int(sw.size) if sw.size > 1 else int(numpy_helper.to_array(inits[pw.input[0]]).shape[0])
        dims = len(inits[pw.input[0]].dims) - 2
        bshape = [1, c_out] + [1] * dims
        scale = (np.float64(sx.reshape(())) * sw.astype(np.float64).reshape(-1) * np.ones(c_out)).astype(np.float32)
        xz = _constant(g, px.input[2]) if len(px.input) > 2 and px.input[2] else np.zeros((), np.uint8)
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


def _qdq_deploy(model: nn.Module, example: torch.Tensor, first_input: str,
                specs: dict[str, ConvSpec] | None = None) -> tuple[nn.Module, dict[str, ConvSpec]]:
    first_act = ActSpec(FIRST_INPUT_SCALE, 8, False, 0, 255, learned=False)

    def make(conv: nn.Module, spec: ConvSpec) -> nn.Module:
        if not spec.quantized:
            if spec.out_act is not None:
                raise FoldError(f"{spec.name}: an output quantizer on a float (not quantized) conv cannot be "
                                "exported; quantize the conv too or drop it from output_quant")
            return plain_conv(conv, spec.weight, spec.bias)
        act = spec.act
        if act is None and first_input == "uint8":
            act = first_act
            spec.meta["input"] = "uint8 1/255 (added at export)"
        return QDQConv(conv, spec, act, out_act=spec.out_act)

    return fold_model(model, example, make_conv=make, specs=specs)


CONV_KERNELS = ("integer", "qlinear")
STORED_FRAME_SIZE = (64, 44)
"""Stored frames are ``k / 255`` at this size: a uint8 first input at 1/255 is exact only here."""


def _low_bit(specs: dict[str, ConvSpec]) -> bool:
    return any(s.act is not None and s.act.bits < 8 for s in specs.values())


def has_low_bit_activations(model: nn.Module, input_size: Sequence[int]) -> bool:
    """Whether any quantized conv of ``model`` reads its input on an activation grid below 8 bits."""
    return _low_bit(conv_specs(model, _example(input_size)))


INT16_PAIR_LIMIT = 32767
"""ONNX Runtime's u8s8 kernels on CPUs without VNNI (AVX2) add pairs of ``u8 * s8`` products in saturating int16
(``vpmaddubsw``): a layer is safe when ``2 * max input level * max |weight level| <= 32767``."""


def saturation_risk(specs: dict[str, ConvSpec], first_input: str) -> list[str]:
    """Names of the quantized convs whose uint8 input levels and int8 weights can overflow the int16 pair sums of
    ONNX Runtime's non-VNNI u8s8 kernels (:data:`INT16_PAIR_LIMIT`); ``first_input`` ``"uint8"``: the exact-input
    conv reads levels up to 255."""
    risky = []
    for name, s in specs.items():
        if not s.quantized:
            continue
        if s.act is not None:
            top = s.act.q_p + (128 if s.act.signed else 0)  # signed grids are stored as uint8 + 128
        elif first_input == "uint8":
            top = 255
        else:
            continue
        if 2 * top * int(s.w_int.abs().max()) > INT16_PAIR_LIMIT:
            risky.append(name)
    return risky


def resolve_first_input(first_input: str, input_size: Sequence[int], low_bit_acts: bool = True,
                        first_weight_max: int | None = None) -> str:
    """``"auto"`` -> ``"uint8"`` when the model takes the stored 64x44 frames (the 1/255 grid is exact) or when
    every activation grid is 8-bit (``low_bit_acts=False``: a 1/510 input error is small against them), and the
    first conv's largest integer weight ``first_weight_max`` is at most 64; else ``"float"``. A resized frame is
    off the 1/255 grid, and at 4-bit activations rounding it costs parity (W4A4 CPU recipe: cosine 0.9895 with a
    uint8 first input, 0.99998 float). Above 64 the silhouette levels (up to 255) overflow the int16 pair sums of
    ONNX Runtime's u8s8 kernels on CPUs without VNNI (:data:`INT16_PAIR_LIMIT`): W8A8 CPU recipe with 8-bit
    first-conv weights, cosine 0.908 with a uint8 first input, 0.99990 float (``python scripts/ptq_first_conv.py``).

    Raises:
        ValueError: ``first_input`` not ``"auto"``, ``"uint8"`` or ``"float"``.
    """
    if first_input == "auto":
        exact = tuple(int(v) for v in input_size) == STORED_FRAME_SIZE
        safe = first_weight_max is None or 2 * 255 * int(first_weight_max) <= INT16_PAIR_LIMIT
        return "uint8" if (exact or not low_bit_acts) and safe else "float"
    if first_input not in ("uint8", "float"):
        raise ValueError(f"first_input must be 'auto', 'uint8' or 'float', got {first_input!r}")
    return first_input


def export_qdq(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = (64, 44),
    calib: Iterable[Any] | None = None,
    requant: bool | str = "auto",
    first_input: str = "auto",
    opset: int = DEFAULT_OPSET,
    meta: dict | None = None,
    threads: int | None = None,
    conv_kernel: str = "qlinear",
    match_bias: bool = True,
    float_weights: bool = False,
) -> ExportReport:
    """Export a ``qgait.quant`` model as an ONNX QDQ graph with its learned steps (see the module docstring).

    Args:
        model: a quantized model (``quantize_`` + calibrated or trained; not modified).
        path: ``.onnx`` file to write.
        input_size: ``(h, w)`` of the model input.
        calib: batches ``[n, T, h, w]`` (real silhouettes) for the ranges of the requantized residual convs
            (``conv_kernel="qlinear"`` only); with None (or ``requant=False``) those convs stay float.
        requant: ``"qlinear"`` only: requantize the residual convs' outputs (uint8, min-max over ``calib``) so
            that they run as ``QLinearConv`` too. ``"auto"`` (default): only when every learned activation grid
            is 8-bit; below 8 bits the 256-level min-max grid of a pre-residual tensor moves many activations
            across the next 4-bit threshold (W4A4: cosine 0.9874 with it, 0.99998 without), so those convs stay
            float convs on int8 weights.
        first_input: ``"uint8"`` (quantize the first conv's exact input at 1/255), ``"float"``, or ``"auto"``
            (default: uint8 for 64x44 inputs, where it is exact, or with 8-bit activation grids; float otherwise,
            see :func:`resolve_first_input`).
        opset: ONNX opset (>= 18).
        meta: extra ``qgait`` metadata entries.
        threads: ONNX Runtime threads for the calibration runs.
        conv_kernel: ``"qlinear"`` (default): QDQ pairs around ``Conv`` that ORT fuses into ``QLinearConv``
            (int32 bias on the ``s_x * s_w`` grid, see ``match_bias``; integer requantization of the output; the
            residual convs requantized when ``requant``). ``"integer"``: every conv with a quantized input is
            ``ConvInteger`` (exact int32 accumulator on ORT's int8 GEMM) followed by a float
            ``Cast -> Mul(s_x * s_w) -> Add(bias)`` epilogue: the QDQ semantics up to float rounding, no int32 bias
            rounding, no requantization, nothing calibrated, but ONNX Runtime 1.32's ``ConvInteger`` is slow
            (W4A4 CPU recipe, batch 1, 1 thread: 110 ms against 30 ms for the default, docs/deployment.md).
        match_bias: ``"qlinear"`` only: choose each integer conv's int32 bias and a per-channel weight multiplier
            so that its output decisions are those of the float bias (:func:`quantize_conv_biases`); False: the
            bias is rounded to ``s_x * s_w`` (the ORT default, off by up to half an accumulator step).
        float_weights: ``"qlinear"`` only: store the weights of the convs that ORT runs in float as float
            initializers (:func:`float_weights_for_float_convs`): faster (ORT's blocked float kernels; W4A4 CPU
            model, batch 1: 30 -> 17 ms) but a larger file (0.60 -> 1.59 MB) whose float layers are not packed
            by ``save_packed``. Default off: the file keeps int8 weights only.

    Returns:
        :class:`ExportReport` (``details``: per-layer bits and steps, requantized tensors, overflow count).

    Raises:
        ValueError: the model is not quantized; bad ``first_input`` or ``conv_kernel``.
        FoldError: uninitialised quantizers, unsupported layers.
    """
    if not is_quantized_model(model):
        raise ValueError("model is not quantized: use export_onnx (FP32) or quantize_onnx (ORT PTQ)")
    if conv_kernel not in CONV_KERNELS:
        raise ValueError(f"conv_kernel must be one of {CONV_KERNELS}, got {conv_kernel!r}")
    example = _example(input_size)
    specs = conv_specs(model, example)
    low_bit = _low_bit(specs)
    first_w = [int(s.w_int.abs().max()) for s in specs.values() if s.quantized and s.act is None]
    first_input = resolve_first_input(first_input, input_size, low_bit, max(first_w) if first_w else None)
    qlinear = conv_kernel == "qlinear"
    if requant == "auto":
        requant = not low_bit
    elif not isinstance(requant, bool):
        raise ValueError(f"requant must be True, False or 'auto', got {requant!r}")
    deploy, specs = _qdq_deploy(model, example, first_input, specs)
    proto = _to_onnx(deploy, example, opset)
    requantized: dict[str, dict] = {}
    integer_convs: list[str] = []
    bias_stats: dict = {}
    float_weight_layers: list[str] = []
    if qlinear:
        if requant and calib is not None:
            names = residual_convs(proto)
            if names:
                ranges = tensor_ranges(proto, names, calib, threads)
                qparams = {n: _uint8_qparams(*ranges[n]) for n in names}
                insert_requant(proto, qparams)
                requantized = {n: {"range": list(ranges[n]), "scale": qparams[n][0], "zero_point": qparams[n][1]}
                               for n in names}
        bias_stats = quantize_conv_biases(proto, match=match_bias)
        if float_weights:
            float_weight_layers = float_weights_for_float_convs(proto)
    else:
        integer_convs = to_conv_integer(proto)
    layers = []
    for name, s in specs.items():
        row: dict[str, Any] = {"name": name, "bn": s.bn, "quantized": s.quantized}
        if s.quantized:
            stored = f"{name}.w_int" not in float_weight_layers
            row.update(weight_bits=s.weight_bits, overflow=s.overflow,
                       weight_initializer=f"{name}.w_int" if stored else f"{name}.w_int_f32",
                       weight_storage="int8" if stored else "float32")
            if s.act is not None:
                row.update(act_bits=s.act.bits, act_signed=s.act.signed, act_scale=s.act.scale)
            row.update(s.meta)
        layers.append(row)
    info = {
        "layers": layers,
        "conv_kernel": conv_kernel,
        "first_input": first_input,
        "requantized": requantized,
        "requant": bool(requant and qlinear),
        "requant_skipped": bool(qlinear and requant and calib is None),
        "overflow": sum(s.overflow for s in specs.values()),
        "output_grids": sorted(n for n, s in specs.items() if s.out_act is not None),
        "saturation_risk": saturation_risk(specs, first_input) if qlinear else [],
        "int32_biases": bias_stats.get("converted", 0),
        "bias_match": bias_stats,
        "integer_convs": len(integer_convs),
        "float_weight_layers": len(float_weight_layers),
        **(meta or {}),
    }
    return _finish(proto, path, "int8-qdq", input_size, info)
