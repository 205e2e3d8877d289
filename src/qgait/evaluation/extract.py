"""Embedding extraction for evaluation: every test sequence, all its frames (capped), in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn
from tqdm import tqdm

from ..data.loader import iter_test_sequences
from ..data.store import SequenceStore
from ..quant import frozen_for_inference, is_quantized


@torch.inference_mode()
def extract_embeddings(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    store: SequenceStore,
    indices: Sequence[int],
    size: tuple[int, int],
    max_frames: int = 720,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "embed",
    freeze_quant: bool = True,
) -> torch.Tensor:
    """Embed the sequences ``indices`` of ``store`` one sequence at a time (each with its own length).

    Args:
        model: ``silhouettes [1, T, h, w] float in [0, 1] -> embeddings [1, c, p]`` (an ``nn.Module``, set to
            eval mode and moved to ``device`` here, or any callable such as an ONNX Runtime session wrapper).
        size: model input ``(h, w)``.
        max_frames: frames per sequence cap (OpenGait: 720).
        freeze_quant: for an ``nn.Module`` containing qgait quantizers (:func:`qgait.quant.is_quantized`), run
            it inside :func:`qgait.quant.frozen_for_inference` (each weight quantized once, lean activation
            fake-quant): bit-identical embeddings at a lower cost. ``False`` runs the plain forward (benchmarks,
            checks).

    Returns:
        ``[len(indices), c, p]`` float32 on the CPU.

    Raises:
        ValueError: if ``indices`` is empty.
    """
    if len(indices) == 0:
        raise ValueError("no sequences to embed")
    is_module = isinstance(model, nn.Module)
    if is_module:
        model.eval().to(device)  # a checkpoint loads on the CPU; the sequences go to ``device``
    frozen = frozen_for_inference(model) if is_module and freeze_quant and is_quantized(model) else nullcontext()
    out = []
    with frozen:
        for _, x in tqdm(
            iter_test_sequences(store, indices, size=size, max_frames=max_frames),
            total=len(indices), desc=desc, disable=not progress, dynamic_ncols=True,
        ):
            out.append(torch.as_tensor(model(x.to(device))).float().cpu())
    return torch.cat(out, dim=0)
