"""Uniform fake quantizers: the :class:`LSQQuantizer` module (LSQ with hard (STE) or soft rounding).

LSQ: Esser et al., "Learned Step Size Quantization", ICLR 2020 (methods.md 1.2); soft quantizer: QGait,
arXiv 2405.13859 (methods.md 1.3). The parts live in their own modules and are re-exported here:

- :mod:`qgait.quant.grid`: the integer grid (``grid_range``), ``ALPHA_MIN``/``ALPHA_MAX``/``STEP_MAX``, mode names;
- :mod:`qgait.quant.rounding`: STE and soft rounding (``round_ste``, ``round_soft_backward``, ``soft_round``,
  ``soft_round_derivative``, ``round_with``); rounding rule and soft-round formulas;
- :mod:`qgait.quant.fake_quant`: the LSQ fake-quant op ``lsq_fake_quantize`` with its closed-form gradients and
  the fused ``torch.compile`` kernels (``set_compiled_kernels``, ``QGAIT_COMPILE_QUANT``, ``COMPILE_MIN_NUMEL``);
  the equations, numerical safety and the fused kernels are described in its module docstring;
- :mod:`qgait.quant.calibration`: post-training step calibration (``calibrate_step``, ``ActObserver``).

``COMPILE_MIN_NUMEL`` here is a copy of :data:`qgait.quant.fake_quant.COMPILE_MIN_NUMEL` (the one that is read).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .calibration import ActObserver, calibrate_step
from .fake_quant import (
    COMPILE_MIN_NUMEL,
    _LSQFakeQuant,
    _op_mode,
    compiled_kernels_enabled,
    lsq_fake_quantize,
    set_compiled_kernels,
)
from .grid import _INITS, _ROUNDINGS, ALPHA_MAX, ALPHA_MIN, STEP_MAX, InitMethod, RoundingMode, grid_range
from .rounding import round_soft_backward, round_ste, round_with, soft_round, soft_round_derivative

__all__ = [
    "ALPHA_MIN",
    "ALPHA_MAX",
    "STEP_MAX",
    "grid_range",
    "soft_round",
    "soft_round_derivative",
    "round_ste",
    "round_soft_backward",
    "round_with",
    "lsq_fake_quantize",
    "calibrate_step",
    "ActObserver",
    "LSQQuantizer",
    "COMPILE_MIN_NUMEL",
    "set_compiled_kernels",
    "compiled_kernels_enabled",
]


class LSQQuantizer(nn.Module):
    """Learned-step uniform fake quantizer with STE or soft rounding (LSQ, Esser et al. ICLR 2020; QGait soft
    quantizer, arXiv 2405.13859 / methods.md 1.2-1.3).

    Args:
        bits: 2..8.
        signed: ``True`` / ``False``, or ``None`` to decide at initialisation (unsigned if the data's min >= 0).
        per_channel: one step per index of ``ch_axis`` (weights: output channels) instead of one step.
        ch_axis: channel axis of the input for ``per_channel``.
        rounding: ``"ste"`` (stage 1) | ``"soft_backward"`` | ``"soft_forward"`` (stage 2, methods.md 1.3).
        num_channels: size of the per-channel step; if ``None`` it is sized at initialisation from the data.
        role: ``"weight"`` or ``"activation"``; sets N in the gradient scale ``g = 1/sqrt(N Q_P)``:
            weights: ``N = numel / (number of steps)`` (the weights sharing one step; LSQ's N_W for per-tensor);
            activations: ``N = numel / (number of steps) / batch`` (features per sample; LSQ's N_F), with batch
            ``= x.shape[0]`` for ``x.dim() > 1``.
        init_method: ``"lsq"`` (``2 mean|x| / sqrt(Q_P)``) | ``"minmax"`` | ``"percentile"`` | ``"mse"``.
        percentile: for ``init_method="percentile"``.
        eps: step lower bound in the forward pass.
        use_fused: use ATen's fused fake-quant kernels for hard-rounding forwards (same grid and tie rule).
            Off by default: on this project's CPU build (torch 2.13) they measured about 5x slower than the
            vectorised torch ops for the forward (see ``tests/quant/bench_fake_quant.py``). Without it, large
            float32 inputs use the fused ``torch.compile`` kernels of the module docstring
            (:func:`set_compiled_kernels`, ``QGAIT_COMPILE_QUANT=0`` to turn them off).
        alpha: initial soft-rounding sharpness (see :meth:`set_alpha`).
        step_grad: for the soft roundings, ``"soft"`` (the soft derivative also drives the step gradient,
            methods.md 1.3) or ``"ste"`` (LSQ's step gradient; the soft derivative only in ``dL/dx``). Not saved
            in the state dict: a training setting, like ``rounding``.
        narrow: a signed grid drops its lowest level, ``[-Q_P, Q_P]`` (:func:`grid_range`); the transform sets it
            for 8-bit weights (``QuantConfig.narrow_8bit_weights``).

    State (all in ``state_dict``): ``step`` (Parameter ``[C]`` or ``[]``), ``initialized`` (bool ``[]``),
    ``signed_state`` (int8 ``[]``: -1 undecided, 0 unsigned, 1 signed), ``alpha`` (float32 ``[]``).

    Forward: ``x [...] -> x_q [...]`` (same shape/dtype). When not yet initialised, the first forward initialises
    from its input (activations: that batch; use :func:`qgait.quant.calibrate_` to initialise from several
    batches). ``soft_forward`` rounds softly only in training mode (hard in eval). ``enabled = False`` bypasses.

    Raises:
        ValueError: bad bits, rounding, role, init_method or percentile.
    """

    def __init__(
        self,
        bits: int,
        signed: bool | None = None,
        per_channel: bool = False,
        ch_axis: int = 0,
        rounding: RoundingMode = "ste",
        *,
        num_channels: int | None = None,
        role: Literal["weight", "activation"] = "weight",
        init_method: InitMethod = "lsq",
        percentile: float = 99.99,
        eps: float = 1e-8,
        use_fused: bool = False,
        alpha: float = 2.0,
        step_grad: Literal["soft", "ste"] = "soft",
        narrow: bool = False,
    ) -> None:
        super().__init__()
        _op_mode(rounding, step_grad)  # validates step_grad
        grid_range(bits, True)  # validates bits
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        if role not in ("weight", "activation"):
            raise ValueError(f"role must be 'weight' or 'activation', got {role!r}")
        if init_method not in _INITS:
            raise ValueError(f"init_method must be one of {_INITS}, got {init_method!r}")
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self._bits = int(bits)
        self.per_channel = bool(per_channel)
        self.ch_axis = int(ch_axis)
        self.rounding: RoundingMode = rounding
        self.step_grad = step_grad
        self.role = role
        self.init_method: InitMethod = init_method
        self.percentile = float(percentile)
        self.eps = float(eps)
        self.use_fused = bool(use_fused)
        self.enabled = True
        self.observer: ActObserver | None = None
        shape = (int(num_channels) if num_channels else 1,) if per_channel else ()
        self.step = nn.Parameter(torch.ones(shape))
        sign = -1 if signed is None else int(bool(signed))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed_state", torch.tensor(sign, dtype=torch.int8))
        # python mirrors of the two buffers: forward reads these (no device sync, no torch.compile graph break);
        # kept in sync by _decide_sign, _set_step and _load_from_state_dict
        self._initialized_py = False
        self._signed_py = sign
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        # narrow signed grid [-(Q_P), Q_P]; a buffer so that a checkpoint restores the grid it was trained on
        # (state dicts from before this option load as the full grid)
        self.register_buffer("narrow_state", torch.tensor(bool(narrow)))
        self._narrow_py = bool(narrow)

    # ------------------------------------------------------------------ properties
    @property
    def bits(self) -> int:
        """Bit width (2..8)."""
        return self._bits

    @property
    def is_signed(self) -> bool | None:
        """``True``/``False``, or ``None`` while ``signed`` is automatic and not yet decided."""
        v = self._signed_py
        return None if v < 0 else bool(v)

    def _grid(self) -> tuple[int, int]:
        signed = self.is_signed
        if signed is None:
            raise RuntimeError("signedness not decided yet: initialise the quantizer (calibrate_ or a forward)")
        return grid_range(self._bits, signed, self._narrow_py)

    @property
    def narrow(self) -> bool:
        """Whether a signed grid is the narrow ``[-Q_P, Q_P]`` (:func:`grid_range`)."""
        return self._narrow_py

    @property
    def q_n(self) -> int:
        """``Q_N`` (0 for unsigned). Raises RuntimeError while the signedness is undecided."""
        return self._grid()[0]

    @property
    def q_p(self) -> int:
        """``Q_P``. Raises RuntimeError while the signedness is undecided."""
        return self._grid()[1]

    @property
    def scale(self) -> Tensor:
        """The effective step ``max(step, eps)``, detached: the ONNX ``QuantizeLinear`` scale. ``[C]`` or ``[]``."""
        return self.step.detach().clamp_min(self.eps)

    @property
    def zero_point(self) -> Tensor:
        """Zero point (always 0: symmetric signed or unsigned-from-zero grids), int32, shape of :attr:`scale`."""
        return torch.zeros(self.step.shape, dtype=torch.int32, device=self.step.device)

    @property
    def is_initialized(self) -> bool:
        """Whether the step has been initialised from data."""
        return self._initialized_py

    # ------------------------------------------------------------------ state changes
    def set_alpha(self, alpha: float) -> None:
        """Set the soft-rounding sharpness (used by ``soft_backward``/``soft_forward``).

        Raises:
            ValueError: ``alpha`` not a positive finite number.
        """
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be positive and finite, got {alpha}")
        self.alpha.fill_(alpha)

    def set_rounding(self, rounding: RoundingMode) -> None:
        """Switch between ``"ste"``, ``"soft_backward"`` and ``"soft_forward"`` (e.g. stage 1 -> stage 2).

        Raises:
            ValueError: unknown rounding.
        """
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        self.rounding = rounding

    def set_step_grad(self, step_grad: Literal["soft", "ste"]) -> None:
        """Choose the step gradient of the soft roundings: ``"soft"`` or ``"ste"`` (see the class docstring).

        Raises:
            ValueError: not ``"soft"`` or ``"ste"``.
        """
        _op_mode(self.rounding, step_grad)
        self.step_grad = step_grad

    def _decide_sign(self, non_negative: bool) -> bool:
        if self.is_signed is None:
            self._signed_py = 0 if non_negative else 1
            self.signed_state.fill_(self._signed_py)
        return bool(self.is_signed)

    def _set_step(self, s: Tensor) -> None:
        s = s.to(device=self.step.device, dtype=self.step.dtype)
        if self.per_channel:
            s = s.reshape(-1)
        else:
            s = s.reshape(())
        if s.shape != self.step.shape:
            self.step.data = s.clone()
        else:
            self.step.data.copy_(s)
        self.initialized.fill_(True)
        self._initialized_py = True

    @torch.no_grad()
    def initialize(self, x: Tensor, method: InitMethod | None = None) -> None:
        """Initialise the step (and an automatic signedness) from the data ``x``.

        Args:
            x: weights (``[C_out, ...]`` with ``ch_axis``) or an activation batch; any shape.
            method: overrides :attr:`init_method` (``"lsq"``, ``"minmax"``, ``"percentile"``, ``"mse"``).

        Raises:
            ValueError: empty ``x``, unknown method, per-channel size mismatch with ``num_channels``.
        """
        method = method or self.init_method
        finite = x.detach()[torch.isfinite(x.detach())] if x.numel() else x.detach()
        non_negative = bool(finite.numel() == 0 or finite.min() >= 0)
        signed = self._decide_sign(non_negative)
        s = calibrate_step(
            x, self._bits, signed, self.per_channel, self.ch_axis, method, self.percentile, eps=self.eps,
            narrow=self._narrow_py,
        )
        self._set_step(s)

    def start_observing(self, max_samples: int = 2**18) -> ActObserver:
        """Attach a fresh :class:`ActObserver`; until :meth:`finish_observing`, forward records and returns ``x``."""
        self.observer = ActObserver(max_samples=max_samples)
        return self.observer

    @torch.no_grad()
    def finish_observing(self, method: InitMethod | None = None) -> bool:
        """Detach the observer and initialise from it. Returns False (step untouched) if it saw no data.

        Raises:
            RuntimeError: not observing. ValueError: unknown method.
        """
        obs = self.observer
        if obs is None:
            raise RuntimeError("finish_observing() without start_observing()")
        self.observer = None
        if obs.is_empty:
            return False
        if self.per_channel:
            raise RuntimeError("observers give per-tensor steps; this quantizer is per-channel")
        signed = self._decide_sign(obs.non_negative())
        method = method or self.init_method
        self._set_step(obs.step(self._bits, signed, method, self.percentile, self.eps, narrow=self._narrow_py))
        return True

    def _grad_scale(self, x: Tensor) -> float:
        n = x.numel() / max(self.step.numel(), 1)
        if self.role == "activation" and x.dim() > 1:
            n /= max(x.shape[0], 1)
        return 1.0 / math.sqrt(max(n, 1.0) * self.q_p)

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x`` (any shape; per channel: ``x.shape[ch_axis] == C``). Returns the same shape/dtype."""
        if not self.enabled:
            return x
        if self.observer is not None:
            self.observer.update(x)
            return x
        if not self._initialized_py:
            self.initialize(x)
        q_n, q_p = self._grid()
        rounding = self.rounding
        if rounding == "soft_forward" and not self.training:
            rounding = "ste"
        ch_axis = self.ch_axis % x.dim() if self.per_channel else None
        return _LSQFakeQuant.apply(
            x, self.step, self.alpha, q_n, q_p, self._grad_scale(x), ch_axis, _op_mode(rounding, self.step_grad),
            self.eps, self.use_fused,
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D102
        key = prefix + "step"
        if key in state_dict and state_dict[key].shape != self.step.shape and self.per_channel:
            self.step.data = torch.empty_like(state_dict[key], device=self.step.device, dtype=self.step.dtype)
        if prefix + "initialized" in state_dict and prefix + "narrow_state" not in state_dict:
            state_dict[prefix + "narrow_state"] = torch.tensor(False)  # saved before the option: the full grid
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized_py = bool(self.initialized)
        self._signed_py = int(self.signed_state)
        self._narrow_py = bool(self.narrow_state)

    def extra_repr(self) -> str:  # noqa: D102
        signed = {None: "auto", True: "signed", False: "unsigned"}[self.is_signed]
        pc = f"per_channel(axis={self.ch_axis}, C={self.step.numel()})" if self.per_channel else "per_tensor"
        return (
            f"bits={self._bits}, {signed}, {pc}, rounding={self.rounding}"
            f"{', step_grad=ste' if self.step_grad == 'ste' else ''}, role={self.role}, "
            f"init={self.init_method}, initialized={self.is_initialized}, enabled={self.enabled}"
            f"{', narrow' if self._narrow_py else ''}"
        )
