"""Shared definitions of the uniform quantizers: the integer grid, value bounds and mode names.

Grid (LSQ, Esser et al., "Learned Step Size Quantization", ICLR 2020, section 2; methods.md 1.2): signed grids use
``Q_N = 2^(b-1), Q_P = 2^(b-1) - 1``; unsigned grids ``Q_N = 0, Q_P = 2^b - 1``; ``x_q = k * s`` with ``k``
integer in ``[-Q_N, Q_P]``.

Bounds: ``ALPHA_MIN``/``ALPHA_MAX`` clamp the soft-rounding sharpness (:mod:`qgait.quant.rounding`),
``STEP_MAX`` bounds calibrated steps (:mod:`qgait.quant.calibration`).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ALPHA_MIN", "ALPHA_MAX", "STEP_MAX", "RoundingMode", "InitMethod", "grid_range"]

ALPHA_MIN = 1e-4
"""Alpha values below this are treated as this value (the soft functions are at their alpha -> 0 limit)."""
ALPHA_MAX = 1e6
"""Alpha values above this are treated as this value (keeps ``alpha * sech^2`` finite)."""
STEP_MAX = 1e36
"""Largest step size calibration returns (``255 * STEP_MAX`` is still a finite float32)."""

RoundingMode = Literal["ste", "soft_backward", "soft_forward"]
InitMethod = Literal["lsq", "minmax", "percentile", "mse"]
_ROUNDINGS = ("ste", "soft_backward", "soft_forward")
_INITS = ("lsq", "minmax", "percentile", "mse")


def grid_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer grid ``(Q_N, Q_P)`` of a uniform quantizer (methods.md 1.2, LSQ section 2).

    Signed: ``(2^(b-1), 2^(b-1) - 1)``; unsigned: ``(0, 2^b - 1)``. ``narrow`` (signed only) drops the lowest
    level: ``(2^(b-1) - 1, 2^(b-1) - 1)``, the symmetric grid of the TFLite int8 weight specification, whose
    negation stays on the grid (see ``QuantConfig.narrow_8bit_weights``).

    Raises:
        ValueError: ``bits`` not in 2..8.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    if signed:
        return 2 ** (bits - 1) - int(bool(narrow)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1
