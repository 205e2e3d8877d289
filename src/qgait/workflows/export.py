"""Export of a trained checkpoint for deployment (``qgait export``): FP32 / int8 ONNX, packed int4, PT2E ``.pt2``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.checkpoint import load_inference_model
from .common import log
from .outputs import check_outputs, staged

__all__ = ["export_checkpoint"]


def _default_output(checkpoint: Path, fmt: str, int8: bool, quantized: bool) -> Path:
    stem = checkpoint.with_suffix("")
    tag = ".int8" if (int8 or quantized) else ""
    return Path(f"{stem}{tag}.{'onnx' if fmt == 'onnx' else 'pt2'}")


def _calibration(calib_store: str | Path | None, size, sequences: int, frames: int, subjects=None):
    if calib_store is None:
        return None
    from ..data.store import SequenceStore
    from ..export.ort_ptq import store_calibration_batches

    store = SequenceStore.open(calib_store)
    if subjects:
        store.check_known(subjects=subjects)
    return store_calibration_batches(store, subjects, size, sequences=sequences, frames=frames)


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    fmt: str = "onnx",
    int8: bool = False,
    pack_int4: bool = False,
    calib_store: str | Path | None = None,
    calib_subjects: Sequence[str] | None = None,
    calib_sequences: int = 16,
    calib_frames: int = 30,
    first_input: str = "auto",
    requant: bool | str = "auto",
    ptq_method: str = "minmax",
    conv_kernel: str = "qlinear",
    match_bias: bool = True,
    float_weights: bool = False,
    overwrite: bool = False,
) -> dict:
    """Export a ``model.pt`` (``qgait-model`` or ``qgait-quant-model``) for deployment.

    What gets written, by checkpoint kind and options:

    - FP model, ``fmt="onnx"``: FP32 ONNX, batch norm folded; with ``int8``: ONNX Runtime static PTQ (needs
      ``calib_store``).
    - quantized model, ``fmt="onnx"``: int8 QDQ ONNX with the learned steps (``int8`` is implied); with
      ``requant`` (``"auto"``: at every bit width) the residual convs are requantized when
      ``calib_store`` is given, so that every conv runs on int8 kernels; ``first_input``, ``conv_kernel`` and ``match_bias`` as in
      :func:`qgait.export.export_qdq` (defaults: float first input unless 64x44, ``QLinearConv`` with matched
      int32 biases); with ``pack_int4`` (weights <= 4 bits) also a packed ``.qgpack`` beside it.
    - ``fmt="pt2e"``: a ``torch.export`` ``.pt2`` program: the learned-step PT2E int8 graph of a quantized model,
      the PT2E-calibrated int8 graph of an FP model with ``int8`` (needs ``calib_store``), else the FP graph.

    ``output`` may be a file or an existing folder (the default file name is written into it). The files are
    checked before any work (:func:`qgait.workflows.outputs.check_outputs`: never the checkpoint itself, an
    existing file only with ``overwrite``) and written atomically.

    Returns:
        a report dict: ``output``, ``kind``, ``bytes``, ``checkpoint_bytes``, ``packed`` (if any) and details.

    Raises:
        CheckpointError: missing or corrupt checkpoint. ValueError: bad options, missing calibration store.
        OutputError: an output is the checkpoint, or exists and ``overwrite`` is False.
    """
    if fmt not in ("onnx", "pt2e"):
        raise ValueError(f"format must be 'onnx' or 'pt2e', got {fmt!r}")
    checkpoint = Path(checkpoint)
    model, meta = load_inference_model(checkpoint)
    size = tuple(int(v) for v in meta.get("input_size") or (64, 44))
    quantized = meta.get("kind") == "qgait-quant-model"
    default = _default_output(checkpoint, fmt, int8, quantized)
    out = Path(output) if output is not None else default
    if out.is_dir():
        out = out / default.name
    final = [out] + ([out.with_suffix(".qgpack")] if pack_int4 else [])
    check_outputs(final, [checkpoint], overwrite)
    info = {"model_name": meta.get("model_name"), "model_args": meta.get("model_args"),
            "checkpoint": checkpoint.name, "quant_config": meta.get("quant_config")}
    if pack_int4 and not quantized:
        raise ValueError("--pack-int4 needs a quantized checkpoint (qgait-quant-model) with <= 4-bit weights")
    if int8 and not quantized and calib_store is None:
        raise ValueError("int8 export of a full-precision model is post-training quantization: give a calibration "
                         "store (--calib-store) of real silhouettes")
    calib = _calibration(calib_store, size, calib_sequences, calib_frames, calib_subjects) \
        if (int8 or quantized) else None
    with staged(final) as tmp:
        report = _export(model, tmp, size, quantized, fmt, int8, calib, info, requant, first_input, conv_kernel,
                         match_bias, float_weights, ptq_method, pack_int4)
    report["output"] = str(out)
    if pack_int4:
        report["packed"]["path"] = str(final[1])
    report["checkpoint_bytes"] = checkpoint.stat().st_size
    return report


def _export(model, tmp: list[Path], size, quantized: bool, fmt: str, int8: bool, calib, info: dict, requant,
            first_input: str, conv_kernel: str, match_bias: bool, float_weights: bool, ptq_method: str,
            pack_int4: bool) -> dict:
    """:func:`export_checkpoint`'s writing part, into the staged paths ``tmp`` (the model, then the .qgpack)."""
    from ..export import export_onnx, export_qdq

    out = tmp[0]
    report: dict[str, Any]
    if fmt == "onnx":
        if quantized:
            r = export_qdq(model, out, size, calib=calib, requant=requant, first_input=first_input, meta=info,
                           conv_kernel=conv_kernel, match_bias=match_bias, float_weights=float_weights)
            if r.details.get("requant_skipped"):
                log("no --calib-store: the residual convs (conv2, downsample) stay float in the ONNX graph "
                    "(exact, but ONNX Runtime runs them without int8 kernels)")
        elif int8:
            from ..export.ort_ptq import ptq_export

            r = ptq_export(model, out, size, calib, method=ptq_method, meta=info)
        else:
            r = export_onnx(model, out, size, meta=info)
        report = {"output": r.path, "kind": r.kind, "bytes": r.bytes, "ops": r.ops,
                  "input_size": list(size)}
        details = r.details
        report["overflow"] = details.get("overflow")
        report["requantized"] = len(details.get("requantized") or {})
        if pack_int4:
            from ..export.int4 import save_packed

            report["packed"] = save_packed(out, tmp[1])
    else:
        from ..export.pt2e import pt2e_from_fp, pt2e_from_quantized, save_pt2

        if quantized:
            from ..export.onnx_export import first_input_for

            first = first_input_for(model, size, first_input)
            gm, kind = pt2e_from_quantized(model, size, first), "int8-pt2e-learned"
        elif int8:
            gm, kind = pt2e_from_fp(model, size, calib), "int8-pt2e-ptq"
        else:
            gm, kind = model, "fp32-pt2"
        save_pt2(gm, out, size)
        report = {"output": str(out), "kind": kind, "bytes": out.stat().st_size, "input_size": list(size)}
    return report
