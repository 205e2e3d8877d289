"""Export: gait models as real int8 (or FP32) deployment artefacts (docs/deployment.md).

Public API::

    export_onnx(model, path, input_size)                   # FP32 ONNX, batch norm folded       (onnx_export.py)
    export_qdq(model, path, input_size, calib=...)         # int8 QDQ ONNX with the learned steps (onnx_export.py)
    quantize_onnx / ptq_export / store_calibration_batches # ONNX Runtime static PTQ baseline    (ort_ptq.py)
    pt2e_from_quantized / pt2e_from_fp / compile_inductor  # PT2E + inductor int8 path           (pt2e.py)
    pack_int4 / unpack_int4 / save_packed / load_packed    # packed 4-bit weight storage         (int4.py)
    fold_model / conv_specs                                # batch-norm folding, integer weights (fold.py)

The torch-heavy optional pieces (``ort_ptq``, ``pt2e``) are imported lazily by attribute access.
"""

from .fold import ActSpec, ConvSpec, FoldError, conv_bn_pairs, conv_specs, fold_model
from .int4 import PackedModelError, load_packed, pack_int4, save_packed, unpack_int4
from .onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportReport,
    export_onnx,
    export_qdq,
    graph_summary,
    is_quantized_model,
    read_qgait_metadata,
)

__all__ = [
    "ActSpec", "ConvSpec", "FoldError", "conv_bn_pairs", "conv_specs", "fold_model",
    "PackedModelError", "load_packed", "pack_int4", "save_packed", "unpack_int4",
    "INPUT_NAME", "OUTPUT_NAME", "ExportReport", "export_onnx", "export_qdq", "graph_summary",
    "is_quantized_model", "read_qgait_metadata",
    "quantize_onnx", "ptq_export", "store_calibration_batches",
    "pt2e_from_quantized", "pt2e_from_fp", "compile_inductor", "compile_int8",
]

_LAZY = {
    "quantize_onnx": "ort_ptq", "ptq_export": "ort_ptq", "store_calibration_batches": "ort_ptq",
    "pt2e_from_quantized": "pt2e", "pt2e_from_fp": "pt2e", "compile_inductor": "pt2e", "compile_int8": "pt2e",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
