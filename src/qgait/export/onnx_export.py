"""ONNX export of gait models: full precision (batch norm folded) and int8 QDQ with the learned steps.

Both exporters produce ``silhouettes [n, T, h, w] float in [0, 1] -> embeddings [n, c, p]`` with dynamic ``n`` and
``T`` (input name ``"silhouettes"``, output name ``"embeddings"``), written by ``torch.onnx.export`` (the
torch.export-based exporter, opset 18; it needs ``onnxscript``) and checked with ``onnx.checker``. The file holds no
``BatchNormalization`` node: batch norms are folded into the convs first (:mod:`qgait.export.fold`).

QDQ export of a ``qgait.quant`` model (:func:`export_qdq`): every quantized conv becomes
``DequantizeLinear(int8 weight, per-channel scale, axis 0) -> Conv`` with the learned weight step times the
batch-norm factor as scale, and its input goes through ``QuantizeLinear -> DequantizeLinear`` with the LEARNED
activation step (uint8, zero point 0, when unsigned; int8 when signed; a ``Clip`` on the integers for grids below
8 bits). Nothing is re-calibrated. Export-time choices, all optional and recorded in the file's metadata, each
documented in the module that implements it:

- ``first_input``: quantize the first conv's exact input (the silhouette) as uint8 at 1/255, or keep it float;
  ``"auto"`` decides from the input size, the activation bits and the int16 saturation bound of ONNX Runtime's u8s8
  kernels (:mod:`qgait.export.saturation`).
- ``requant`` (needs calibration batches): a uint8 min-max requantization of the residual convs' outputs so that ONNX
  Runtime runs them as ``QLinearConv`` too (:mod:`qgait.export.requant`).
- ``match_bias`` (default on): int32 biases and per-channel weight multipliers that keep the float bias's decisions
  (:mod:`qgait.export.bias_match`).
- ``float_weights``: float initializers for the convs that ORT runs in float (:mod:`qgait.export.float_weights`).
- ``conv_kernel="integer"``: ``ConvInteger`` + a float scale-and-bias epilogue for every conv with a quantized
  input (:mod:`qgait.export.conv_integer`): exact, nothing calibrated, but slow in ONNX Runtime 1.32.

The generic graph helpers live in :mod:`qgait.export.onnx_graph`. The names these modules hold were defined here
before and are re-exported from here.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import helper
from torch import nn

from ..quant import QuantLayer
from .bias_match import SCALE_TWEAKS, matched_bias, quantize_conv_biases, weight_multipliers
from .conv_integer import to_conv_integer
from .float_weights import float_weights_for_float_convs
from .fold import ActSpec, ConvSpec, FoldError, conv_specs, fold_model, plain_conv
from .onnx_graph import (
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAME,
    graph_summary,
    prune_dead_nodes,  # noqa: F401 (re-export)
    read_qgait_metadata,
    remove_unused_initializers,
)
from .qdq import QDQConv
from .requant import insert_requant, residual_convs, tensor_ranges, uint8_qparams
from .saturation import INT16_PAIR_LIMIT, STORED_FRAME_SIZE, resolve_first_input, saturation_risk  # noqa: F401

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
    "first_input_for",
    "to_conv_integer",
    "weight_multipliers",
    "matched_bias",
    "float_weights_for_float_convs",
    "SCALE_TWEAKS",
    "quantize_conv_biases",
]

DEFAULT_OPSET = 18
"""The torch.export-based exporter implements opset >= 18 (opset 17 fails its down-conversion on Reduce ops)."""
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


class _DropRegistryNoise(logging.Filter):
    """Drops the ONNX exporter's registry messages about optional op libraries ("torchvision is not installed.
    Skipping torchvision::nms" and the like, one per torchvision op at every export): they concern ops a gait
    model never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


def _to_onnx(module: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """``torch.onnx.export`` (dynamo) with dynamic ``n`` and ``T``; returns the ModelProto (quietly)."""
    n = torch.export.Dim("n", min=1, max=4096)
    t = torch.export.Dim("T", min=1, max=100_000)
    module = module.eval()
    buf = io.StringIO()
    quiet_registry = _filtered(_REGISTRY_LOGGER, _DropRegistryNoise())
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf), quiet_registry:
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=True,
            dynamic_shapes=({0: n, 1: t},), opset_version=opset, verbose=False, external_data=False,
        )
    return prog.model_proto


@contextlib.contextmanager
def _filtered(logger_name: str, flt: logging.Filter):
    """``flt`` on the logger ``logger_name`` within the block."""
    logger = logging.getLogger(logger_name)
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


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
def _qdq_deploy(model: nn.Module, example: torch.Tensor, first_input: str,
                specs: dict[str, ConvSpec] | None = None,
                native_ranges: bool = False) -> tuple[nn.Module, dict[str, ConvSpec]]:
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
        return QDQConv(conv, spec, act, out_act=spec.out_act, native_ranges=native_ranges)

    return fold_model(model, example, make_conv=make, specs=specs)


CONV_KERNELS = ("integer", "qlinear")


def _low_bit(specs: dict[str, ConvSpec]) -> bool:
    return any(s.act is not None and s.act.bits < 8 for s in specs.values())


def _first_weight_max(specs: dict[str, ConvSpec]) -> int | None:
    """The largest integer weight of the quantized convs that read the model input (no activation grid)."""
    first_w = [int(s.w_int.abs().max()) for s in specs.values() if s.quantized and s.act is None]
    return max(first_w) if first_w else None


def first_input_for(model: nn.Module, input_size: Sequence[int], first_input: str = "auto") -> str:
    """:func:`resolve_first_input` for a ``qgait.quant`` model: ``"auto"`` decided from its activation bits and
    its first conv's integer weights (the same rule as :func:`export_qdq`; used by the PT2E export too).

    Raises:
        ValueError: bad ``first_input``.
    """
    specs = conv_specs(model, _example(input_size))
    return resolve_first_input(first_input, input_size, _low_bit(specs), _first_weight_max(specs))


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
            that they run as ``QLinearConv`` too. ``"auto"`` (default): whenever ``calib`` is given, at every bit
            width. Below 8 bits the 256-level grid of a pre-residual tensor moves some activations across the next
            4-bit threshold, so the export is no longer bit-faithful (trained W4A4 CPU recipe, 3 seeds, all 5,485
            test sequences: embedding cosine 0.993-0.994 against 0.99999 without), but its decisions are kept:
            CASIA-B rank-1 within 0.13 of the PyTorch model's (docs/deployment.md), and every backbone conv runs on
            int8 kernels (2.8x faster than without on the CPU recipe). ``False``: those convs stay float convs on
            int8 weights (exact QAT semantics, slower); a model trained with output quantizers needs neither.
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
    first_input = resolve_first_input(first_input, input_size, low_bit, _first_weight_max(specs))
    qlinear = conv_kernel == "qlinear"
    if requant == "auto":
        requant = True  # applied only with calibration batches (and only where a residual conv needs it)
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
                qparams = {n: uint8_qparams(*ranges[n]) for n in names}
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
