"""Batch-norm re-estimation after quantization-aware training.

During QAT the batch norms' running statistics are exponential moving averages over the last few hundred
iterations, during which low-bit weights keep flipping between grid points (weight oscillation): the averages mix
the statistics of weights the final model no longer has. Re-estimating them once, with the final quantized
weights frozen, removes that mismatch (Nagel, Fournarakis, Bondarenko & Blankevoort, "Overcoming Oscillations in
Quantization-Aware Training", ICML 2022, section 4.1 "BN re-estimation"; also Krishnamoorthi 2018, "Quantizing
deep convolutional networks for efficient inference", section 3.2 on batch-norm statistics).

Model-agnostic: any ``nn.Module`` with ``torch.nn.modules.batchnorm._BatchNorm`` layers (BatchNorm1d/2d/3d,
SyncBatchNorm); nothing else in the model changes (quantizer steps, weights, biases and the affine BN
parameters are left as they are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["reestimate_bn_stats"]


@torch.no_grad()
def reestimate_bn_stats(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None = None
                        ) -> int:
    """Replace every batch norm's running mean and variance by their plain average over ``batches``.

    Each batch norm is reset and switched to a cumulative average (``momentum=None``: after ``n`` batches the
    running statistics are the mean of the ``n`` per-batch statistics, each computed in training mode, i.e. with
    the batch's own statistics normalising the forward pass, as during training). Every other module stays in
    evaluation mode, so quantizers neither re-initialise nor observe. Afterwards the model is in evaluation mode
    and the batch norms have their original momentum back.

    Args:
        model: any module; batch norms anywhere inside it are re-estimated.
        batches: inputs, e.g. training clips ``[n, T, h, w]`` for a gait model; at least one.
        forward: ``forward(model, batch)`` (default ``model(batch)``).

    Returns:
        the number of batches used.

    Raises:
        ValueError: the model has no batch norm, or ``batches`` is empty (the statistics are then restored).
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        raise ValueError("the model has no batch norm with running statistics to re-estimate")
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    n = 0
    try:
        for batch in batches:
            (forward or (lambda mod, b: mod(b)))(model, batch)
            n += 1
    except BaseException:
        _restore(bns, saved)
        model.eval()
        raise
    if n == 0:
        _restore(bns, saved)
        model.eval()
        raise ValueError("no batches to re-estimate the batch-norm statistics from")
    for m, (momentum, *_rest) in zip(bns, saved):
        m.momentum = momentum
    model.eval()
    return n


def _restore(bns, saved) -> None:
    for m, (momentum, mean, var, count) in zip(bns, saved):
        m.momentum = momentum
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
