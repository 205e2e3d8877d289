"""PyTorch's own int8 path: a PT2E quantize/dequantize graph lowered by ``torch.compile``'s x86 inductor backend.

Two ways to get the PT2E graph (``torch.export`` graph with ``quantized_decomposed`` quantize / dequantize ops and
int8 weights, the form ``torchao.quantization.pt2e.convert_pt2e`` produces):

- :func:`pt2e_from_quantized` (a ``qgait.quant`` model, QAT or PTQ): the LEARNED steps, exactly. Rather than run
  ``prepare_pt2e`` with observers and overwrite their scales, the converted graph is built directly from the folded
  model (:class:`qgait.export.qdq.QDQConv`: ``quantize_per_tensor`` with the learned activation step,
  ``dequantize_per_channel`` of the int8 weights with the learned step times the BN factor) and captured with
  ``torch.export``. Overwriting observers cannot express this model exactly (checked on GaitBase with torchao
  0.18): ``prepare_pt2e`` with ``X86InductorQuantizer`` puts ONE observer on a tensor read by two convs (a block
  input feeding ``conv1`` and ``downsample``), while the QAT model has two different learned steps there; it adds
  observers the QAT model has no quantizer for (``conv2``'s output before the residual ``add``, the identity
  input of ``add``); and it does not annotate ``conv1d`` at all, so the per-part FC would stay FP32. Building the
  graph keeps every learned step, adds nothing, and quantizes the FC.
- :func:`pt2e_from_fp` (a full-precision model): the PT2E post-training path, ``prepare_pt2e`` with
  ``X86InductorQuantizer`` (uint8 activations, int8 per-channel weights), calibration on real batches,
  ``convert_pt2e``. Its per-part FC (``conv1d``) stays FP32 (not annotated by the quantizer).

:func:`compile_inductor` lowers either with inductor (``freezing=True``, needed for the weight prepacking): every
``dequantize -> conv`` becomes a oneDNN ``qconv_pointwise`` (int8 in, int8 or fp32 out, ReLU fused);
:func:`lowered_ops` lists what the generated code calls, to check it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .onnx_export import _example, _qdq_deploy, is_quantized_model

__all__ = [
    "pt2e_from_quantized", "pt2e_from_fp", "compile_inductor", "compile_int8", "lowered_ops", "save_pt2", "load_pt2",
]


@contextlib.contextmanager
def _quiet_import():
    """Importing torchao logs a warning per optional CUDA kernel library it cannot load on a CPU machine
    ("Failed to load .../_C_cutlass_90a.abi3.so") and torch a deprecation notice about its enums; neither says
    anything to a user of the CPU int8 path, so both loggers are held at ERROR while it imports."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamic() -> tuple[dict, ...]:
    return ({0: torch.export.Dim("n", min=1, max=4096), 1: torch.export.Dim("T", min=1, max=100_000)},)


def pt2e_from_quantized(model: nn.Module, input_size: Sequence[int], first_input: str = "uint8") -> nn.Module:
    """The PT2E int8 graph of a ``qgait.quant`` model with its learned steps (see the module docstring).

    Returns:
        a ``torch.fx.GraphModule`` (eval), ``[n, T, h, w] -> [n, c, p]`` with dynamic ``n`` and ``T``.

    Raises:
        ValueError: the model is not quantized.
    """
    if not is_quantized_model(model):
        raise ValueError("model is not quantized: use pt2e_from_fp for a full-precision model")
    example = _example(input_size)
    deploy, _ = _qdq_deploy(model, example, first_input, native_ranges=True)  # grids < 8 bits: inductor's form
    with torch.no_grad():
        ep = torch.export.export(deploy.eval(), (example,), dynamic_shapes=_dynamic())
    return ep.module()


def pt2e_from_fp(model: nn.Module, input_size: Sequence[int], calib: Iterable[Any]) -> nn.Module:
    """PT2E post-training int8 quantization of a full-precision model (``X86InductorQuantizer`` default config:
    uint8 per-tensor activations, int8 per-channel symmetric weights; BN folded by ``prepare_pt2e``), calibrated
    on ``calib`` batches ``[n, T, h, w]``.

    Returns:
        the converted ``GraphModule``.
    """
    with _quiet_import():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

    if is_quantized_model(model):
        raise ValueError("model is already quantized: use pt2e_from_quantized (learned steps)")
    example = _example(input_size)
    with torch.no_grad():
        gm = torch.export.export(model.eval(), (example,), dynamic_shapes=_dynamic()).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(gm, quantizer)
    n = 0
    with torch.no_grad():
        for x in calib:
            prepared(torch.as_tensor(x))
            n += 1
    if n == 0:
        raise ValueError("no calibration batches")
    return convert_pt2e(prepared)


def compile_inductor(gm: nn.Module, dynamic: bool | None = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` with inductor and ``freezing`` (weight prepacking; needed by the int8 lowering); returns a
    no-grad callable. Works for FP32 models and PT2E int8 graphs alike.

    The first call compiles (seconds to a minute) and every new input shape compiles again (``dynamic=False``,
    the default): with dynamic shapes the recompilation of the int8 conv lowering fails in torch 2.13 (a stride
    assertion in the qconv lowering on the second shape). After ``torch._dynamo.config.cache_size_limit`` shapes
    (8) dynamo falls back to running the graph eagerly (correct, slow): fine for fixed-size serving, not for
    sequences of every length.
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(gm, dynamic=dynamic)

    def run(x: torch.Tensor) -> torch.Tensor:
        # freezing through the config, not torch.compile(options=...): with the options dict (torch 2.13) the
        # weights stay graph inputs and the oneDNN weight prepacking fails ("UnsupportedOperatorException:
        # onednn.qconv_prepack")
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(x)

    run.compiled = compiled  # type: ignore[attr-defined]
    return run


compile_int8 = compile_inductor
"""Alias of :func:`compile_inductor` (the PT2E int8 graphs are what it is for)."""


def lowered_ops(gm: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Compile ``gm`` and count the oneDNN / quantized kernels its generated code calls (e.g.
    ``{"onednn.qconv_pointwise": 13}``): the check that the int8 graph really runs int8 kernels."""
    from torch._inductor.utils import run_and_get_code

    import torch._inductor.config as inductor_config

    compiled = torch.compile(gm)
    with torch.no_grad(), inductor_config.patch(freezing=True):
        _, code = run_and_get_code(compiled, example)
    src = "\n".join(code)
    out: dict[str, int] = {}
    for op in re.findall(r"torch\.ops\.(onednn\.\w+|quantized\.\w+|aten\.convolution\w*|mkldnn\.\w+)", src):
        out[op] = out.get(op, 0) + 1
    return dict(sorted(out.items()))


def save_pt2(model: nn.Module, path: str | Path, input_size: Sequence[int]) -> Path:
    """Save a PT2E graph (or any exportable model) as a ``torch.export`` ``.pt2`` program (dynamic n, T).

    Load with :func:`load_pt2` (which registers the ``quantized_decomposed`` ops first).
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = model.eval()
    except NotImplementedError:  # an exported GraphModule is already in inference form
        pass
    with torch.no_grad():
        ep = torch.export.export(model, (_example(input_size),), dynamic_shapes=_dynamic())
    torch.export.save(ep, str(path))
    return path


def load_pt2(path: str | Path) -> nn.Module:
    """Load a ``.pt2`` program saved by :func:`save_pt2`; returns its module (compile it with
    :func:`compile_int8`)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PT2 program not found")
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001 - corrupt archive
        raise ValueError(f"{path}: cannot load PT2 program ({type(exc).__name__}: {exc})") from exc
