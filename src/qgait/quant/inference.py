"""Cheap evaluation of fake-quantized models: :func:`frozen_for_inference`.

Where the time went (GaitBase CPU recipe, 32x22 input, one test sequence ``[1, T, 32, 22]`` per forward;
``benchmarks/eval_cost.py``): an eval-mode forward of the W4A4 model with output quantizers makes 32 quantizer
calls (13 weights, 19 activations) next to about 40 FP ops, and each call paid

- a fixed dispatch cost: ``LSQQuantizer.forward``, the autograd Function and its argument set-up, then the
  ``torch.compile`` kernel's guards, about 0.2-0.3 ms per call where the pass over the tensor itself costs 0.06-0.3
  ms (measured on one thread: a ``relu`` of ``[80, 64, 8, 6]`` 61 us, the quantizer 250 us, its compiled kernel
  called directly 134 us);
- the re-quantization of a fixed weight (13 of the 32 calls);
- one more OpenMP parallel region: on a 2-core machine shared with other jobs, with libgomp's default
  spin-waiting, a parallel region waits for both threads to be scheduled, so a memory-bound pass of a few hundred
  microseconds costs up to a scheduler time slice. This was the largest term at 2 threads there.

Measured with ``benchmarks/eval_cost.py`` (110 sequences, interleaved, on a shared 2-core Xeon), quantized / FP
evaluation time, plain -> fast path: 2 threads 1.31-1.33x -> 0.99-1.00x; 2 threads with
``OMP_WAIT_POLICY=PASSIVE`` 1.38-1.48x -> 1.31-1.33x; 1 thread 1.35-1.42x -> 1.26-1.32x. What remains is mostly
the 19 activation passes themselves (about 10% of the FP forward on one thread), inherent to eager fake
quantization unless it is fused into the neighbouring ops.

Inside ``with frozen_for_inference(model):`` every :class:`~qgait.quant.quantizers.LSQQuantizer` of ``model``, in
eval mode with gradients off:

- weights: returns, for an ``nn.Parameter`` input, the output its own forward computed the first time (the same
  code on the same tensors) while nothing it depends on changed: the same Parameter object, storage and in-place
  version, the same step (object, storage, version), bits, signedness, ``eps``, layout and ``use_fused``, the same
  inference mode, and the cached tensor unmodified. An optimizer step or ``load_state_dict`` inside the context
  bumps a version and the weight is re-quantized on the next forward;
- activations (per-tensor, ``use_fused=False``): computes ``round(clip(x / s, -Q_N, Q_P)) * s`` by calling the
  fake-quant op's own kernels (:mod:`qgait.quant.fake_quant`: the fused ``torch.compile`` kernel, or the eager
  math, chosen by the op's own rule ``_use_kernels``) with the step, grid and alpha tensors prepared once per step
  value; a tensor of at most ``serial_max_numel`` elements (:data:`SERIAL_MAX_NUMEL`, 16 MB of float32) is
  quantized on one thread (``torch.set_num_threads(1)`` around the call, then restored).

Exactness: bit-identical to the normal eval-mode forward: the same kernels on the same inputs (eval mode rounds
hard for every rounding mode), elementwise, so the thread count cannot change a value. The first activation call
of each quantizer per branch (kernel / eager) also runs the normal forward and compares; a difference (the op
changed under this module) warns once and that quantizer then runs its normal forward. ATen's
``torch.fake_quantize_per_tensor_affine`` (the ``use_fused`` path) is not used: it multiplies by ``1/s`` instead
of dividing by ``s``, which rounds differently next to half-integers (804 of 22,400 inputs placed within 3 ulps of
a rounding threshold differed), and in inference mode it measured 8-13x slower than the compiled kernel on one
thread (not vectorised) and about 1.1x slower on two busy threads.

Everything else runs the normal forward: training mode, gradients on (a cached tensor has no autograd graph), a
disabled, uninitialised or observing quantizer, ``use_fused=True``, per-channel activation quantizers, tracing (ONNX
export) and ``torch.compile``. On exit every quantizer gets its own ``forward`` back and the caches are dropped;
parameters, buffers, the state dict, training flags and hooks are never touched, so training continues as before.
Nesting is allowed (the inner context leaves quantizers frozen by the outer one alone). A deep copy made inside
the context stays frozen after it (still exact: its caches are keyed on its own tensors). Do not pickle the whole
module (``torch.save(model)``) inside the context; its ``state_dict`` is fine.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .fake_quant import _grid_tensors, _lsq_forward_math, _run_kernel, _use_kernels
from .quantizers import LSQQuantizer
from .rounding import _alpha_tensor, _compute_dtype

__all__ = ["frozen_for_inference", "is_frozen", "SERIAL_MAX_NUMEL"]

SERIAL_MAX_NUMEL = 1 << 22
"""Activations of at most this many elements are fake-quantized on one thread inside :func:`frozen_for_inference`
(module docstring: on a busy machine a parallel region costs more than it saves for one memory-bound pass over
<= 16 MB; the values do not depend on the thread count)."""

_STATE = "_qgait_frozen"
"""Instance attribute holding a quantizer's :class:`_Frozen` state while it is frozen."""


class _ActPlan:
    """A per-tensor activation quantizer's constants for the fast path, prepared once per step value."""

    __slots__ = ("key", "s", "s_flat", "a", "lo", "hi", "q_n", "q_p", "checked", "broken")

    def __init__(self, q: LSQQuantizer, x: Tensor, key: tuple) -> None:
        # made as the op makes them, in the current (inference) mode: the compiled kernel's guards then match the
        # normal path's calls (no recompilation); the key holds the mode
        dt = _compute_dtype(x)
        s = q.step.detach().clamp_min(q.eps)
        self.q_n, self.q_p = q.q_n, q.q_p
        self.s = s.to(dt).reshape(())  # the eager branch's step
        self.s_flat = s.reshape(1, 1)  # the kernel's step (the op passes it in the step's dtype)
        self.a = _alpha_tensor(q.alpha, x).to(dt)
        self.lo, self.hi = _grid_tensors(self.q_n, self.q_p, x)
        self.key, self.checked, self.broken = key, set(), False


class _Frozen:
    """Per-quantizer state: the forward to fall back to, the cached weight, the activation plan."""

    __slots__ = ("fallback", "had_forward", "key", "out", "out_version", "plan", "serial_max")

    def __init__(self, q: LSQQuantizer, serial_max: int) -> None:
        self.serial_max = serial_max
        self.had_forward = "forward" in q.__dict__
        # the instance's own forward (a wrapper someone installed) or the class's, bound to q
        self.fallback = q.__dict__["forward"] if self.had_forward else type(q).forward.__get__(q)
        self.key: tuple | None = None
        self.out: Tensor | None = None
        self.out_version: int | None = None
        self.plan: _ActPlan | None = None


def _step_key(q: LSQQuantizer) -> tuple:
    s = q.step
    return (id(s), s.data_ptr(), s._version, s.shape, s.dtype, q.bits, q.is_signed, q.eps, q.per_channel, q.ch_axis,
            q.use_fused)


def _cached_weight(q: LSQQuantizer, st: _Frozen, w: Tensor) -> Tensor:
    key = (id(w), w.data_ptr(), w._version, w.shape, w.dtype, w.device, torch.is_inference_mode_enabled())
    key += _step_key(q)
    out = st.out
    # computed by the normal forward in the current mode (so that the compiled kernels' guards match and nothing
    # recompiles); an inference tensor has no version counter (it cannot be changed in place outside
    # inference_mode), a normal one must be unchanged
    if out is None or st.key != key or (st.out_version is not None and out._version != st.out_version):
        out = st.fallback(w)
        st.out, st.key, st.out_version = out, key, None if out.is_inference() else out._version
    return out


def _quantize_activation(plan: _ActPlan, q: LSQQuantizer, x: Tensor) -> tuple[Tensor, str]:
    """``(round(clip(x / s, -Q_N, Q_P)) * s, branch)`` through the op's kernel or its eager math."""
    if _use_kernels(x, q.step):
        out = _run_kernel("fwd0", x.reshape(1, 1, -1), plan.s_flat, plan.a, plan.lo, plan.hi)
        if out is not None:
            return out.view(x.shape), "kernel"
    return _lsq_forward_math(x.to(plan.s.dtype), plan.s, plan.a, -plan.q_n, plan.q_p, False).to(x.dtype), "eager"


def _lean_activation(q: LSQQuantizer, st: _Frozen, x: Tensor) -> Tensor:
    """The activation fast path (module docstring), serial up to ``st.serial_max`` elements, checked once per
    branch against the normal forward."""
    key = _step_key(q) + (x.dtype, x.device, torch.is_inference_mode_enabled())
    plan = st.plan
    if plan is None or plan.key != key:
        plan = st.plan = _ActPlan(q, x, key)
    if plan.broken:
        return st.fallback(x)
    threads = torch.get_num_threads()
    if threads > 1 and x.numel() <= st.serial_max and x.device.type == "cpu":
        torch.set_num_threads(1)
        try:
            out, branch = _quantize_activation(plan, q, x)
        finally:
            torch.set_num_threads(threads)
    else:
        out, branch = _quantize_activation(plan, q, x)
    if branch not in plan.checked:
        ref = st.fallback(x)
        if not (torch.equal(ref, out) or bool(((ref == out) | (ref.isnan() & out.isnan())).all())):
            plan.broken = True
            warnings.warn("qgait frozen_for_inference: the lean activation path differs from the quantizer's forward;"
                          " using the normal forward for this quantizer", RuntimeWarning, stacklevel=3)
            return ref
        plan.checked.add(branch)
    return out


def _frozen_forward(q: LSQQuantizer, x: Tensor) -> Tensor:
    """Forward of a frozen quantizer (module docstring); ``x [...] -> [...]`` as the normal forward."""
    st: _Frozen | None = q.__dict__.get(_STATE)
    if st is None:  # the state was removed by hand: behave normally
        return type(q).forward(q, x)
    if (q.training or torch.is_grad_enabled() or not q.enabled or q.observer is not None or not q.is_initialized
            or q.step.is_inference() or not isinstance(x, Tensor) or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return st.fallback(x)
    if isinstance(x, nn.Parameter):
        return st.fallback(x) if x.is_inference() else _cached_weight(q, st, x)
    if q.per_channel or q.use_fused or not x.is_floating_point():
        return st.fallback(x)
    return _lean_activation(q, st, x)


def is_frozen(quantizer: nn.Module) -> bool:
    """Whether ``quantizer`` is currently inside a :func:`frozen_for_inference` context."""
    return _STATE in quantizer.__dict__


@contextmanager
def frozen_for_inference(model: nn.Module, serial_max_numel: int = SERIAL_MAX_NUMEL) -> Iterator[nn.Module]:
    """Evaluate ``model`` with each quantized weight fake-quantized once and lean activation fake-quant
    (module docstring); outputs bit-identical to the normal eval-mode forward.

    Usage::

        model.eval()
        with frozen_for_inference(model), torch.inference_mode():
            emb = model(x)          # GaitBase: x [n, T, h, w] -> [n, c, p], the same tensor as without the context

    Model-agnostic: every :class:`~qgait.quant.quantizers.LSQQuantizer` in ``model.modules()`` (weight, input and
    output quantizers alike) is frozen; other modules are untouched, and a model without quantizers runs as is.
    Shapes and outputs: those of ``model``, unchanged. Training mode or gradients inside the context run the
    normal forward (correct, just not cheaper).

    Args:
        model: any ``nn.Module``.
        serial_max_numel: activations with at most this many elements are fake-quantized on one thread (0: keep
            the process's thread count for every activation).

    Yields:
        ``model`` itself.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``serial_max_numel`` is negative.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"frozen_for_inference expects an nn.Module, got {type(model).__name__}")
    if serial_max_numel < 0:
        raise ValueError(f"serial_max_numel must be >= 0, got {serial_max_numel}")
    frozen: list[LSQQuantizer] = []
    try:
        for m in model.modules():
            if isinstance(m, LSQQuantizer) and not is_frozen(m):
                st = _Frozen(m, serial_max_numel)
                m.__dict__[_STATE] = st
                m.__dict__["forward"] = _frozen_forward.__get__(m)
                frozen.append(m)
        yield model
    finally:
        for m in frozen:
            st = m.__dict__.pop(_STATE, None)
            m.__dict__.pop("forward", None)
            if st is not None and st.had_forward:
                m.__dict__["forward"] = st.fallback
