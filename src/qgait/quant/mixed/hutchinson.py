"""Per-layer Hessian traces by Hutchinson's estimator, for weights and (optionally) layer inputs.

For a loss ``L`` and the weights ``W_l`` of layer ``l`` (``n_l`` elements), Hutchinson's estimator (Hutchinson
1990; as used by HAWQ-V2, Dong et al., NeurIPS 2020, arXiv 1911.03852, and LCPAQ, arXiv 2402.17706) is

    tr(H_ll) = E_v[ v_l^T H_ll v_l ],      v_l Rademacher (+-1 with probability 1/2 each)

Hessian-vector products come from double backward (``g = dL/dW`` once per batch with ``create_graph=True``, then
``d(g . v)/dW`` per probe). By default (``blocks="layer"``) each block gets its own product ``H_ll v_l`` with ``v``
supported on that block only, HAWQ-V2's per-block trace. ``blocks="joint"`` uses one product for all blocks:
``E[v_l^T H_lk v_k] = 0`` for ``k != l`` (independent, zero-mean probes), so ``v_l^T (H v)_l`` is still unbiased for
``tr(H_ll)``, at ``1 / (number of blocks)`` of the products, but the cross-block terms add variance (measured: 3-30x
the standard error on a 3-layer MLP). The average trace ``tr(H_ll) / n_l`` is HAWQ-V2's sensitivity.

With ``activations=True`` each layer's INPUT tensor ``A_l`` (its first positional argument, as the layer sees it)
gets the same estimator: a forward pre-hook hands the layer a private view of its input, so that a tensor read by
two layers (a block input feeding ``conv1`` and ``downsample``) has one Hessian per reader, the one its
quantizer perturbs. ``L`` is the mean loss of a batch, so ``tr(H_A)`` is summed over the batch's samples.

Over several batches, the estimate is the mean over batches of each batch's mean over probes (equal probe counts).
Two standard errors are reported: ``stderr``, the Monte-Carlo error of the probes for the given batches
(``sqrt(sum_b s_b^2 / P) / B``, ``s_b`` the probe standard deviation on batch ``b``: what the exact Hessian trace of
those batches is compared with), and ``batch_stderr``, the standard error of the mean of the per-batch estimates
(the spread over data, probe noise included; ``None`` for one batch).

Model-agnostic: any ``nn.Module``, any scalar loss closure. Costs per batch: one forward and one backward with graph,
then per probe one double backward per block (``"layer"``) or one in all (``"joint"``). Measured on the CPU recipe
(GaitBase width 0.25, 16 sequences x 16 frames at 32x22, 2 threads on a loaded 2-core machine): forward + backward
0.6 s; per probe, the 13 weight blocks 4 s, the 13 input blocks about 4.5 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["LossFn", "TraceEstimate", "HessianTraces", "hessian_traces"]

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> scalar tensor``: runs the model on one batch and returns the loss to differentiate."""


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of ``tr(H)`` of one block (a layer's weights or its input).

    Attributes:
        trace: the estimate of ``tr(H)`` (loss units per squared weight/activation unit, summed over the block).
        stderr: Monte-Carlo standard error of ``trace`` for the batches used (probe noise only).
        batch_stderr: standard error of the mean of the per-batch estimates (data spread + probe noise); ``None``
            for a single batch.
        numel: number of elements of the block (``n_l``; for an input: per batch, averaged over the batches).
        probes, batches: Rademacher probes per batch, batches.
    """

    trace: float
    stderr: float
    batch_stderr: float | None
    numel: int
    probes: int
    batches: int

    @property
    def average(self) -> float:
        """``tr(H) / n``: HAWQ-V2's average Hessian trace."""
        return self.trace / self.numel

    @property
    def average_stderr(self) -> float:
        """Standard error of :attr:`average` (probe noise)."""
        return self.stderr / self.numel

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``average`` and ``average_stderr``."""
        return dict(trace=self.trace, stderr=self.stderr, batch_stderr=self.batch_stderr, numel=self.numel,
                    average=self.average, average_stderr=self.average_stderr, probes=self.probes,
                    batches=self.batches)


@dataclass(frozen=True)
class HessianTraces:
    """Result of :func:`hessian_traces`: ``weights[name]`` and (if asked) ``activations[name]`` estimates, and the
    wall time in seconds."""

    weights: dict[str, TraceEstimate]
    activations: dict[str, TraceEstimate]
    seconds: float


def _estimate(samples: list[list[float]], numel: int) -> TraceEstimate:
    """``samples[b][p]``: the probe values of batch ``b`` -> mean over batches of the per-batch means and errors."""
    b, p = len(samples), len(samples[0])
    means = [sum(s) / p for s in samples]
    var_within = [sum((x - m) ** 2 for x in s) / (p - 1) for s, m in zip(samples, means)]
    trace = sum(means) / b
    stderr = math.sqrt(sum(var_within) / p) / b
    batch_se = None
    if b >= 2:
        batch_se = math.sqrt(sum((m - trace) ** 2 for m in means) / (b - 1) / b)
    return TraceEstimate(trace, stderr, batch_se, numel, p, b)


def _rademacher(like: Tensor, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, like.shape, generator=gen, device=like.device).to(like.dtype).mul_(2).sub_(1)


def hessian_traces(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    layers: Sequence[str],
    *,
    probes: int = 8,
    activations: bool = False,
    seed: int = 0,
    train_mode: bool = False,
    observe: Callable[[str, Tensor], None] | None = None,
    blocks: Literal["layer", "joint"] = "layer",
) -> HessianTraces:
    """Hutchinson estimates of ``tr(H_ll)`` for each layer's weight (and input) over ``batches`` (module doc).

    Args:
        model: any ``nn.Module``; left as it was (training flag, ``requires_grad`` flags, and in ``train_mode``
            its buffers such as batch-norm running statistics, are restored).
        loss_fn: ``loss_fn(model, batch) -> scalar`` (e.g. the task loss of a training batch).
        batches: the batches (each passed to ``loss_fn`` as it is); at least one.
        layers: module names (as in ``named_modules()``), each with a ``weight`` parameter.
        probes: Rademacher vectors per batch, >= 2 (the standard error needs two).
        activations: also estimate the trace w.r.t. each layer's input (first positional argument).
        seed: seeds the probes (a ``torch.Generator`` per device).
        train_mode: run the model in training mode (batch statistics in batch norm); default eval mode (the
            curvature of the model as it is deployed, batch norm a fixed affine map).
        observe: called as ``observe(name, input.detach())`` for each layer input seen (e.g. to feed an
            :class:`qgait.quant.ActObserver` in the same pass; requires ``activations=True``).
        blocks: ``"layer"`` (default): one Hessian-vector product per block and probe, ``v`` supported on that
            block only (HAWQ-V2's per-block trace; variance ``2 sum_{i != j} (H_ll)_ij^2 / P``); ``"joint"``: one
            product per probe for all blocks at once (module doc; ``1/(2L)`` of the products, but the cross-block
            terms ``v_l^T H_lk v_k`` add their variance: on a 3-layer MLP the standard error was 3-30x larger).

    Returns:
        :class:`HessianTraces`; ``weights`` keyed by ``layers`` (and ``activations`` when asked).

    Raises:
        ValueError: no layer, unknown layer name or no ``weight``, ``probes < 2``, unknown ``blocks``, no batches,
            ``observe`` without ``activations``, a loss that is not a scalar tensor with a graph, a layer that ran
            in only some of the batches.
    """
    if not layers:
        raise ValueError("hessian_traces: no layers")
    if probes < 2:
        raise ValueError(f"hessian_traces: probes must be >= 2 (for a standard error), got {probes}")
    if blocks not in ("layer", "joint"):
        raise ValueError(f"hessian_traces: blocks must be 'layer' or 'joint', got {blocks!r}")
    if observe is not None and not activations:
        raise ValueError("hessian_traces: observe needs activations=True")
    mods = dict(model.named_modules())
    weights: list[Tensor] = []
    for name in layers:
        w = getattr(mods.get(name), "weight", None) if name in mods else None
        if not isinstance(w, Tensor):
            raise ValueError(f"hessian_traces: {name!r} is not a module with a weight tensor")
        weights.append(w)
    t0 = time.perf_counter()
    w_samples: dict[str, list[list[float]]] = {n: [] for n in layers}
    a_samples: dict[str, list[list[float]]] = {n: [] for n in layers}
    a_numel: dict[str, list[int]] = {n: [] for n in layers}
    gens: dict[torch.device, torch.Generator] = {}
    captured: dict[str, list[Tensor]] = {}

    def gen_for(t: Tensor) -> torch.Generator:
        if t.device not in gens:
            gens[t.device] = torch.Generator(device=t.device).manual_seed(seed + 7919 * len(gens))
        return gens[t.device]

    def pre_hook(name: str):
        def fn(_mod, args):
            if not args or not isinstance(args[0], Tensor):
                return None
            x = args[0]
            a = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            captured.setdefault(name, []).append(a)
            if observe is not None:
                observe(name, x.detach())
            return (a, *args[1:])

        return fn

    was_training = model.training
    grad_flags = [w.requires_grad for w in weights]
    saved_buffers = {k: v.detach().clone() for k, v in model.state_dict().items()} if train_mode else None
    handles = [mods[n].register_forward_pre_hook(pre_hook(n)) for n in layers] if activations else []
    n_batches = 0
    try:
        model.train(train_mode)
        for w in weights:
            w.requires_grad_(True)
        for batch in batches:
            captured.clear()
            loss = loss_fn(model, batch)
            if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
                raise ValueError("hessian_traces: loss_fn must return a scalar tensor that depends on the weights")
            a_names = [n for n in layers for _ in captured.get(n, [])]
            a_tensors = [t for n in layers for t in captured.get(n, [])]
            inputs = weights + a_tensors
            grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            per_input = [[0.0] * probes for _ in inputs]
            for p in range(probes):
                vs = [_rademacher(inputs[i], gen_for(inputs[i])) for i in live]
                if blocks == "joint":  # one product H v for every block
                    hv = torch.autograd.grad([grads[i] for i in live], [inputs[i] for i in live], grad_outputs=vs,
                                             retain_graph=True, allow_unused=True)
                else:  # one product per block: H_ll v_l
                    hv = [torch.autograd.grad(grads[i], inputs[i], grad_outputs=v, retain_graph=True,
                                              allow_unused=True)[0] for i, v in zip(live, vs)]
                for i, v, h in zip(live, vs, hv):
                    if h is not None:
                        per_input[i][p] = float((v * h).sum(dtype=torch.float64))
            for j, name in enumerate(layers):
                w_samples[name].append(per_input[j])
            if activations:
                for name in layers:
                    rows = [per_input[len(weights) + k] for k, n in enumerate(a_names) if n == name]
                    if rows:
                        a_samples[name].append([sum(col) for col in zip(*rows)])
                        a_numel[name].append(sum(t.numel() for t in captured[name]))
            del loss, grads, inputs, a_tensors
            captured.clear()
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        for w, flag in zip(weights, grad_flags):
            w.requires_grad_(flag)
        if saved_buffers is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(saved_buffers[k])
        model.train(was_training)
        captured.clear()
    if n_batches == 0:
        raise ValueError("hessian_traces: no batches")
    w_est = {n: _estimate(w_samples[n], int(w.numel())) for n, w in zip(layers, weights)}
    a_est = {}
    for n in layers:
        if a_samples[n]:
            if len(a_samples[n]) != n_batches:
                raise ValueError(f"hessian_traces: layer {n!r} ran in only some of the batches")
            a_est[n] = _estimate(a_samples[n], round(sum(a_numel[n]) / len(a_numel[n])))
    return HessianTraces(w_est, a_est, time.perf_counter() - t0)
