"""Latency of several ONNX Runtime sessions timed side by side: interleaved rounds, so that machine load hits
every variant alike, and each variant's ratio to a reference taken per round (the same moment of load)."""

from __future__ import annotations

import time

import numpy as np


def time_interleaved(sessions: dict, x: np.ndarray, rounds: int, runs: int, reference: str,
                     warmup: int = 3) -> dict[str, dict]:
    """Time ``sessions`` (name -> ``onnxruntime.InferenceSession`` with one input) on ``x``.

    Each round runs every session ``runs`` times in turn. Returns, per name: ``latency_ms_median``,
    ``latency_ms_iqr`` (all runs), ``ratio_to_<reference>_median_of_rounds`` (the median over rounds of the
    round's median time over the reference's) and ``ratio_to_<reference>_rounds_min_max``.

    Raises:
        KeyError: ``reference`` is not one of ``sessions``.
    """
    if reference not in sessions:
        raise KeyError(f"reference {reference!r} is not one of {list(sessions)}")
    inp = {n: s.get_inputs()[0].name for n, s in sessions.items()}
    for n, s in sessions.items():
        for _ in range(warmup):
            s.run(None, {inp[n]: x})
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(rounds):
        for n, s in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, {inp[n]: x})
                times[n].append(time.perf_counter() - t0)
    ref = [float(np.median(times[reference][r * runs:(r + 1) * runs])) for r in range(rounds)]
    out = {}
    for n, t in times.items():
        per_round = [float(np.median(t[r * runs:(r + 1) * runs])) / ref[r] for r in range(rounds)]
        out[n] = {"latency_ms_median": float(np.median(t)) * 1e3,
                  "latency_ms_iqr": [float(np.percentile(t, 25)) * 1e3, float(np.percentile(t, 75)) * 1e3],
                  f"ratio_to_{reference}_median_of_rounds": float(np.median(per_round)),
                  f"ratio_to_{reference}_rounds_min_max": [min(per_round), max(per_round)]}
    return out
