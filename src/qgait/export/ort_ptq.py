"""ONNX Runtime post-training static quantization: the int8 PTQ baseline for a full-precision model.

``onnxruntime.quantization.quantize_static`` in QDQ format with per-channel int8 weights and uint8 activations
(u8s8: 2.4x faster than s8s8 on this CPU, gait-protocols.md), min-max calibration over REAL silhouette sequences.
The graph is first pre-processed with ``quant_pre_process(skip_symbolic_shape=True)`` (the symbolic shape pass
crashes on the exported graph). GaitBase's per-part FC is a grouped 1x1 ``Conv`` (not a batched ``MatMul``), so it
is quantized like every other conv: :func:`quantize_onnx` checks that every ``Conv`` reads int8 weights.

The first conv stays float by default (``first_conv="float"``): its uint8 input is the silhouette itself (levels up
to 255, most pixels 0 or 255) and on a CPU without VNNI (AVX2, e.g. this AMD EPYC) ONNX Runtime's u8s8 kernels sum
pairs of ``u8 * s8`` products in saturating int16 (``vpmaddubsw``): ``255 * w1 + 255 * w2`` overflows as soon as two
neighbouring weights exceed 64. Measured on the trained CPU recipe (`python scripts/ptq_first_conv.py`), cosine to
the FP model over 24 real test sequences: first conv int8 0.907, first conv float 0.9996. The float first conv
costs a few per cent of the latency (its input has one channel).

Unlike :func:`qgait.export.export_qdq` this re-calibrates everything: it is the baseline that QAT is compared with.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .onnx_export import INPUT_NAME, ExportReport, _finish, export_onnx, read_qgait_metadata

__all__ = ["StoreCalibrationReader", "BatchReader", "store_calibration_batches", "quantize_onnx", "ptq_export"]


def store_calibration_batches(
    store, subjects: Sequence[str] | None = None, size: Sequence[int] = (64, 44), sequences: int = 16,
    frames: int = 30, seed: int = 0, conditions: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """``sequences`` real sequences of ``subjects`` (default: the CASIA-B training subjects present in the store,
    else all), each cut to ``frames`` consecutive frames from a random start: a list of ``[1, T, h, w]`` floats.

    Raises:
        ValueError: no sequence matches.
    """
    from ..data.partition import load_partition
    from ..data.transforms import to_model_input

    if subjects is None:
        have = set(store.subjects)
        try:
            train = [s for s in load_partition("casia-b").train if s in have]
        except Exception:  # noqa: BLE001 - a store of another dataset
            train = []
        subjects = train or sorted(have)
    idx = store.select(subjects=subjects, conditions=conditions)
    if not idx:
        raise ValueError(f"{store.path}: no sequences of subjects {list(subjects)[:5]} for calibration")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(idx), size=min(sequences, len(idx)), replace=False)
    out = []
    for j in sorted(chosen):
        view = store.frames(idx[j])
        t = min(frames, len(view))
        start = int(rng.integers(0, len(view) - t + 1))
        x = to_model_input(torch.from_numpy(np.array(view[start: start + t])), tuple(size))
        out.append(x.unsqueeze(0))
    return out


class BatchReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of ``[n, T, h, w]`` batches."""

    def __init__(self, batches: Iterable[Any], input_name: str = INPUT_NAME) -> None:
        self.batches = [b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b) for b in batches]
        if not self.batches:
            raise ValueError("no calibration batches")
        self.input_name = input_name
        self._it = iter(self.batches)

    def get_next(self) -> dict | None:
        b = next(self._it, None)
        return None if b is None else {self.input_name: b.astype(np.float32, copy=False)}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def StoreCalibrationReader(store, subjects=None, size=(64, 44), sequences=16, frames=30, seed=0) -> BatchReader:
    """A calibration data reader over real sequences of a store (see :func:`store_calibration_batches`)."""
    return BatchReader(store_calibration_batches(store, subjects, size, sequences, frames, seed))


def quantize_onnx(
    fp_model: str | Path,
    path: str | Path,
    calib: Iterable[Any],
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "uint8",
    first_conv: str = "float",
) -> ExportReport:
    """Quantize an FP32 ONNX gait model (from :func:`qgait.export.export_onnx`) with ORT static quantization.

    Args:
        fp_model: the FP32 ``.onnx`` file.
        path: the int8 ``.onnx`` file to write.
        calib: calibration batches ``[n, T, h, w]`` (real silhouettes, e.g. :func:`store_calibration_batches`).
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"`` (ORT calibration methods).
        per_channel: per-output-channel weight scales.
        activation_type: ``"uint8"`` (u8s8, default) or ``"int8"`` (s8s8).
        first_conv: ``"float"`` (default: left out of the quantization, see the module docstring: int16
            saturation of the silhouette input on non-VNNI CPUs) or ``"int8"``.

    Returns:
        :class:`~qgait.export.onnx_export.ExportReport` (kind ``"int8-ptq"``).

    Raises:
        ValueError: unknown ``method``, ``activation_type`` or ``first_conv``.
        RuntimeError: a ``Conv`` (e.g. the per-part FC) other than a float first conv was left with float weights.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    if activation_type not in ("uint8", "int8"):
        raise ValueError(f"activation_type must be 'uint8' or 'int8', got {activation_type!r}")
    if first_conv not in ("float", "int8"):
        raise ValueError(f"first_conv must be 'float' or 'int8', got {first_conv!r}")
    src = onnx.load(str(fp_model))
    src_convs = [n for n in src.graph.node if n.op_type == "Conv"]
    exclude = [src_convs[0].name] if first_conv == "float" and src_convs else []
    meta = read_qgait_metadata(src)
    input_size = meta.get("input_size") or [d.dim_value for d in src.graph.input[0].type.tensor_type.shape.dim[2:]]
    reader = calib if hasattr(calib, "get_next") else BatchReader(calib)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp_model), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "q.onnx"
        quantize_static(
            str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[method], nodes_to_exclude=exclude,
        )
        model = onnx.load(str(out))
    prod = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    float_w = [n.name or n.output[0] for n in convs
               if (prod.get(n.input[1]) is None or prod[n.input[1]].op_type != "DequantizeLinear")
               and n.name not in exclude]
    if float_w:
        raise RuntimeError(f"ORT static quantization left these convs with float weights: {float_w}")
    info = {k: v for k, v in meta.items() if k not in ("kind", "input_size")}
    info.update(ptq={"method": method, "per_channel": per_channel, "activations": activation_type,
                     "weights": "int8", "calibration_batches": len(getattr(reader, "batches", [])),
                     "first_conv": first_conv},
                quantized_convs=len(convs) - len(exclude))
    return _finish(model, path, "int8-ptq", input_size, info)


def ptq_export(model: torch.nn.Module, path: str | Path, input_size: Sequence[int], calib: Iterable[Any],
               method: str = "minmax", meta: dict | None = None) -> ExportReport:
    """FP model -> FP32 ONNX (batch norm folded) -> ORT static int8 quantization, written to ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        fp = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp, input_size, meta=meta)
        return quantize_onnx(fp, path, calib, method=method)


