"""Learning rate as a pure function of the iteration (so resuming needs no scheduler state)."""

from __future__ import annotations

from collections.abc import Sequence


def lr_at(iteration: int, base_lr: float, milestones: Sequence[int], gamma: float, warmup: int = 0) -> float:
    """Multi-step schedule with optional linear warm-up.

    ``lr = base_lr * gamma ** (number of milestones <= iteration)``, times ``(iteration + 1) / warmup`` during
    the first ``warmup`` iterations. ``iteration`` counts from 0.
    """
    lr = base_lr * gamma ** sum(1 for m in milestones if iteration >= m)
    if warmup and iteration < warmup:
        lr *= (iteration + 1) / warmup
    return lr
