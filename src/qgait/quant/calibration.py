"""Post-training step calibration (PTQ and LSQ initialisation): :func:`calibrate_step` and :class:`ActObserver`.

Methods: min-max, percentile, MSE over a geometric grid of clipping ratios, and the LSQ initialisation
``2 mean|x| / sqrt(Q_P)`` (Esser et al. ICLR 2020, section 2; methods.md 1.2). :class:`ActObserver` streams
activation statistics over calibration batches (weighted reservoir sampling, Efraimidis & Spirakis 2006).
Model-level calibration (``calibrate_``) is in :mod:`qgait.quant.transform`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .grid import _INITS, STEP_MAX, InitMethod, grid_range

__all__ = ["calibrate_step", "ActObserver"]


def _channels_first(x: Tensor, per_channel: bool, ch_axis: int) -> Tensor:
    """[C, K] for per-channel, [1, K] for per-tensor, in float32 (float64 kept), non-finite values removed."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.detach().to(dt)
    if per_channel:
        ch_axis = ch_axis % x.dim()
        x = x.movedim(ch_axis, 0)
        x = x.reshape(x.shape[0], -1)
    else:
        x = x.reshape(1, -1)
    # +-inf would make every candidate step infinite: clip them to the float32 range; NaN -> 0
    return torch.nan_to_num(x, nan=0.0, posinf=3.0e38, neginf=-3.0e38)


def _minmax_step(xmin: Tensor, xmax: Tensor, q_n: int, q_p: int) -> Tensor:
    """Smallest step whose grid ``[-Q_N s, Q_P s]`` covers ``[xmin, xmax]`` (0 always on the grid)."""
    s = xmax.clamp_min(0) / q_p
    if q_n > 0:
        s = torch.maximum(s, (-xmin).clamp_min(0) / q_n)
    return s


def _quant_mse(xc: Tensor, steps: Tensor, q_n: int, q_p: int, weights: Tensor | None = None) -> Tensor:
    """Per-channel (weighted) squared quantization error. xc [C, K], steps [R, C], weights [K] -> [R, C]."""
    out = torch.empty(steps.shape, dtype=xc.dtype, device=xc.device)
    for i in range(steps.shape[0]):
        s = steps[i].clamp_min(1e-30)[:, None]
        err = (torch.round((xc / s).clamp(-q_n, q_p)) * s - xc) ** 2
        out[i] = (err * weights).sum(1) if weights is not None else err.sum(1)
    return out


def _finalize_step(s: Tensor, eps: float) -> Tensor:
    s = s.to(torch.float32)
    # a channel / tensor with no range (all zeros): any step quantizes it exactly; 1.0 is a neutral choice
    s = torch.where(s > 0, s, torch.ones_like(s))
    s = torch.nan_to_num(s, nan=1.0, posinf=STEP_MAX)
    return s.clamp(eps, STEP_MAX)


def calibrate_step(
    x: Tensor,
    bits: int,
    signed: bool,
    per_channel: bool = False,
    ch_axis: int = 0,
    method: InitMethod = "minmax",
    percentile: float = 99.99,
    *,
    weights: Tensor | None = None,
    mse_ratios: tuple[float, float, int] = (0.01, 1.0, 100),
    max_samples: int = 2**20,
    eps: float = 1e-8,
    generator: torch.Generator | None = None,
    narrow: bool = False,
) -> Tensor:
    """Step size(s) for quantizing ``x`` on the grid of ``bits``/``signed``/``narrow`` (post-training calibration).

    Methods:
        - ``"minmax"``: smallest step covering the range, ``max(max(x)/Q_P, -min(x)/Q_N)``.
        - ``"percentile"``: the same with the ``percentile`` / ``100 - percentile`` percentiles instead of max/min.
        - ``"mse"``: minimise ``sum (Q(x; s) - x)^2`` over ``s = ratio * s_minmax``, ``ratio`` on a geometric grid
          of ``mse_ratios = (lo, hi, count)`` (default 100 values in [0.01, 1]; geometric so that the resolution
          is 5 % at every scale: heavy-tailed data at 2-4 bits has optimal clipping well below 0.2 of max|x|).
          The first minimum (smallest step) wins ties.
        - ``"lsq"``: ``2 mean|x| / sqrt(Q_P)`` (Esser et al. ICLR 2020, section 2; methods.md 1.2).

    Args:
        x: data, any shape; per channel: ``C = x.shape[ch_axis]``.
        bits, signed, narrow: the grid (:func:`grid_range`).
        per_channel, ch_axis: one step per index of ``ch_axis`` or a single step.
        percentile: in (50, 100], for ``"percentile"``.
        weights: per-tensor only: non-negative weight of each element of ``x`` (a weighted sample of a larger
            population, as :class:`ActObserver` gives); same number of elements as ``x``.
        max_samples: per-tensor unweighted ``"percentile"``/``"mse"`` use a random subsample of at most this
            many values.
        eps: lower bound of the returned step; channels with no range (all zero) get step 1.0.
        generator: random generator for the subsample.

    Returns:
        float32 step, shape ``[C]`` (per channel) or ``[]``, finite, in ``[eps, STEP_MAX]``.

    Raises:
        ValueError: unknown method, empty ``x``, percentile outside (50, 100], bad ``mse_ratios``, ``weights``
            with ``per_channel`` or of the wrong size.
    """
    if method not in _INITS:
        raise ValueError(f"method must be one of {_INITS}, got {method!r}")
    if x.numel() == 0:
        raise ValueError("cannot calibrate a step on an empty tensor")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    q_n, q_p = grid_range(bits, signed, narrow)
    xc = _channels_first(x, per_channel, ch_axis)
    w = None
    if weights is not None:
        if per_channel or weights.numel() != x.numel():
            raise ValueError("weights: per-tensor only, one weight per element of x")
        w = weights.detach().reshape(-1).to(xc)
        w = w / w.sum().clamp_min(1e-30)
    if method == "lsq":
        a = xc.abs()
        s = 2.0 * ((a * w).sum(1) if w is not None else a.mean(1)) / math.sqrt(q_p)
    elif method == "minmax":
        s = _minmax_step(xc.amin(1), xc.amax(1), q_n, q_p)
    else:
        if w is None and xc.shape[1] > max_samples:
            idx = torch.randint(xc.shape[1], (max_samples,), generator=generator).to(xc.device)
            xc = xc[:, idx]
        if method == "percentile":
            s = _percentile_step(xc, q_n, q_p, percentile, w)
        else:
            s = _mse_step(xc, q_n, q_p, mse_ratios, w)
    s = _finalize_step(s, eps)
    return s if per_channel else s.reshape(())


def _percentile_step(xc: Tensor, q_n: int, q_p: int, percentile: float, w: Tensor | None) -> Tensor:
    p = percentile / 100.0
    hi = _quantile_rows(xc, p, w)
    lo = _quantile_rows(xc, 1.0 - p, w)
    return _minmax_step(lo, hi, q_n, q_p)


def _quantile_rows(xc: Tensor, p: float, w: Tensor | None = None) -> Tensor:
    """Row-wise quantile with linear interpolation (torch.quantile is limited to 2^24 elements); weighted: the
    smallest value whose cumulative weight reaches p."""
    srt, order = torch.sort(xc, dim=1)
    k = xc.shape[1]
    if w is not None:
        cw = torch.cumsum(w[order[0]], 0)
        i = int(torch.searchsorted(cw, torch.tensor([p], dtype=cw.dtype, device=cw.device)).clamp(max=k - 1))
        return srt[:, i]
    pos = p * (k - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, k - 1)
    frac = pos - lo
    return srt[:, lo] * (1 - frac) + srt[:, hi] * frac


def _mse_step(
    xc: Tensor, q_n: int, q_p: int, mse_ratios: tuple[float, float, int], w: Tensor | None = None
) -> Tensor:
    lo, hi, count = mse_ratios
    if not (0 < lo <= hi and int(count) >= 1):
        raise ValueError(f"mse_ratios must be (lo, hi, count) with 0 < lo <= hi, count >= 1, got {mse_ratios}")
    base = _minmax_step(xc.amin(1), xc.amax(1), q_n, q_p)  # [C]
    ratios = torch.logspace(math.log10(lo), math.log10(hi), int(count), dtype=xc.dtype, device=xc.device)
    cands = ratios[:, None] * base[None, :]  # [R, C]
    err = _quant_mse(xc, cands, q_n, q_p, w)  # [R, C]
    best = err.argmin(0)  # first minimum: the smallest ratio among ties
    return cands.gather(0, best[None, :])[0]


class ActObserver:
    """Collects activation statistics across calibration batches with bounded memory.

    Keeps, over all batches:

    - exact running ``min``, ``max``, ``sum |x|`` and count (float64);
    - the exact ``tail_samples`` largest and smallest values (streaming top-k), so rare extremes, which dominate
      min-max, high percentiles and the squared error of clipping, are never missed;
    - a uniform random subsample of at most ``max_samples`` values (weighted reservoir sampling, Efraimidis &
      Spirakis 2006: each batch contributes up to ``max_samples`` values drawn with replacement, each standing
      for ``numel / drawn`` elements, keys ``U^(1/w)``, the largest keys kept).

    :meth:`sample` combines them into a weighted sample of the population (while everything seen fits in the
    subsample it is the data itself, weights 1): the tails with weight 1, the subsample values strictly between
    the tails with weight ``(count - tails) / kept``. ``minmax`` and ``lsq`` steps use the exact statistics
    (``lsq``: mean ``|x|`` over all batches); ``percentile`` and ``mse`` use the weighted sample.
    Memory: ``O(max_samples + tail_samples)`` whatever the number or size of batches.

    Raises:
        ValueError: ``max_samples < 1``, ``tail_samples < 0``.
    """

    def __init__(self, max_samples: int = 2**18, tail_samples: int = 1024, seed: int = 0) -> None:
        if max_samples < 1 or tail_samples < 0:
            raise ValueError("max_samples must be >= 1 and tail_samples >= 0")
        self.max_samples = int(max_samples)
        self.tail_samples = int(tail_samples)
        self.min = math.inf
        self.max = -math.inf
        self.abs_sum = 0.0
        self.count = 0
        self.batches = 0
        self._exact = True  # the subsample holds every value seen
        self._values: Tensor | None = None
        self._logkeys: Tensor | None = None
        self._top = torch.empty(0)
        self._bottom = torch.empty(0)
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: Tensor) -> None:
        """Add one batch ``x`` (any shape; non-finite values are ignored)."""
        x = x.detach()
        if x.numel() == 0:
            return
        x = x.reshape(-1).float()
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            x = x[finite]
            if x.numel() == 0:
                return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.abs_sum += float(x.abs().sum(dtype=torch.float64))
        self.count += x.numel()
        self.batches += 1
        n = x.numel()
        if self.tail_samples:
            k = min(n, self.tail_samples)
            top = torch.cat([self._top, torch.topk(x, k).values.cpu()])
            bottom = torch.cat([self._bottom, torch.topk(x, k, largest=False).values.cpu()])
            self._top = torch.topk(top, min(top.numel(), self.tail_samples)).values
            self._bottom = torch.topk(bottom, min(bottom.numel(), self.tail_samples), largest=False).values
        m = min(n, self.max_samples)
        if m == n:
            vals = x.cpu()
        else:
            self._exact = False
            idx = torch.randint(n, (m,), generator=self._gen)
            vals = x[idx.to(x.device)].cpu()
        w = n / m
        logkeys = torch.log(torch.rand(m, generator=self._gen, dtype=torch.float64).clamp_min(1e-300)) / w
        if self._values is not None:
            vals = torch.cat([self._values, vals])
            logkeys = torch.cat([self._logkeys, logkeys])
        if vals.numel() > self.max_samples:
            self._exact = False
            keep = torch.topk(logkeys, self.max_samples).indices
            vals, logkeys = vals[keep], logkeys[keep]
        self._values, self._logkeys = vals, logkeys

    @property
    def values(self) -> Tensor:
        """The uniform subsample, float32 ``[<= max_samples]`` on CPU.

        Raises:
            RuntimeError: nothing observed yet.
        """
        if self._values is None:
            raise RuntimeError("ActObserver has seen no data")
        return self._values

    def sample(self) -> tuple[Tensor, Tensor | None]:
        """Weighted sample ``(values [K], weights [K] or None)`` standing for all observed values (see class doc).

        Raises:
            RuntimeError: nothing observed yet.
        """
        vals = self.values
        if self._exact or self.tail_samples == 0:
            return vals, None
        hi_thr, lo_thr = float(self._top.min()), float(self._bottom.max())
        body = vals[(vals < hi_thr) & (vals > lo_thr)]
        n_body = max(self.count - self._top.numel() - self._bottom.numel(), 0)
        out = torch.cat([self._bottom, body, self._top])
        w = torch.cat([
            torch.ones(self._bottom.numel()),
            torch.full((body.numel(),), n_body / max(body.numel(), 1)),
            torch.ones(self._top.numel()),
        ]).to(torch.float64)
        return out, w

    @property
    def is_empty(self) -> bool:
        """True until a batch with finite values was observed."""
        return self.count == 0

    def non_negative(self) -> bool:
        """True when every observed value was ``>= 0`` (the ``act_signed="auto"`` rule)."""
        return self.min >= 0.0

    def step(
        self, bits: int, signed: bool, method: InitMethod = "lsq", percentile: float = 99.99, eps: float = 1e-8,
        narrow: bool = False,
    ) -> Tensor:
        """Per-tensor step ``[]`` from the observed data (methods as :func:`calibrate_step`).

        Raises:
            RuntimeError: nothing observed. ValueError: unknown method.
        """
        if self.is_empty:
            raise RuntimeError("ActObserver has seen no data")
        if method not in _INITS:
            raise ValueError(f"method must be one of {_INITS}, got {method!r}")
        q_n, q_p = grid_range(bits, signed, narrow)
        if method == "lsq":
            s = torch.tensor(2.0 * (self.abs_sum / self.count) / math.sqrt(q_p))
            return _finalize_step(s, eps).reshape(())
        if method == "minmax":
            s = _minmax_step(torch.tensor([self.min]), torch.tensor([self.max]), q_n, q_p)
            return _finalize_step(s, eps).reshape(())
        vals, w = self.sample()
        return calibrate_step(
            vals, bits, signed, per_channel=False, method=method, percentile=percentile, eps=eps, weights=w,
            generator=self._gen, narrow=narrow,
        )
