"""Index sampling for training and test: P x K sequence batches and frame choices, as pure functions of seeds.

Every draw is a function of ``(seed, iteration[, rank])`` through ``np.random.default_rng([...])``: no RNG state
is carried between batches, so every process computes the same global batch and a resumed run continues
exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TripletSampler", "shard", "sample_frames", "ordered_frames"]


def _check_nonneg_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The contiguous slice of ``batch`` that process ``rank`` of ``world_size`` trains on.

    Args:
        batch: the global batch ``[B]`` (any dtype).
        rank: this process, ``0 <= rank < world_size``.
        world_size: number of processes; must divide ``B``.

    Returns:
        ``batch[rank * B // world_size : (rank + 1) * B // world_size]`` (a view). The shards of all ranks, in
        rank order, concatenate to ``batch``.

    Raises:
        ValueError: ``world_size < 1``, ``rank`` out of range, or ``B`` not divisible by ``world_size``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank!r} out of range for world_size {world_size}")
    n = len(batch)
    if n % world_size:
        raise ValueError(f"batch of {n} sequences cannot be split evenly over {world_size} processes")
    step = n // world_size
    return batch[rank * step : (rank + 1) * step]


class TripletSampler:
    """P x K batches for triplet training: ``p`` distinct labels, ``k`` sequences of each.

    Args:
        labels: the label of every candidate sequence (``labels[j]`` for position ``j``); any integers. Labels
            that never occur are never drawn.
        p: labels per batch (>= 1).
        k: sequences per label (>= 1); drawn without replacement when the label has at least ``k`` sequences,
            with replacement otherwise.
        seed: non-negative integer.

    Raises:
        ValueError: ``p`` or ``k`` < 1, negative seed, or fewer than ``p`` distinct labels.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
            raise ValueError(f"labels must be a 1-D sequence of integers, got {lab.dtype} {lab.shape}")
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
            raise ValueError(f"p must be a positive integer, got {p!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.seed = _check_nonneg_int("seed", seed)
        self.p, self.k = int(p), int(k)
        self.classes, inverse = np.unique(lab, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(self.classes)))[:-1]
        self.pools: list[np.ndarray] = [g.astype(np.int64) for g in np.split(order, bounds)] if lab.size else []
        if len(self.pools) < self.p:
            raise ValueError(f"need at least p={self.p} distinct labels with sequences, found {len(self.pools)}")

    @property
    def batch_size(self) -> int:
        """``p * k``."""
        return self.p * self.k

    def batch(self, iteration: int) -> np.ndarray:
        """The global batch of ``iteration``: int64 positions into ``labels``, shape ``[p * k]``.

        Label-major: entries ``[j * k, (j + 1) * k)`` share one label; the ``p`` labels are distinct and drawn
        uniformly. A pure function of ``(seed, iteration)``, identical in every process.

        Raises:
            ValueError: negative ``iteration``.
        """
        it = _check_nonneg_int("iteration", iteration)
        rng = np.random.default_rng([self.seed, it])
        chosen = rng.choice(len(self.pools), size=self.p, replace=False)
        out = np.empty(self.p * self.k, dtype=np.int64)
        for j, c in enumerate(chosen):
            pool = self.pools[c]
            out[j * self.k : (j + 1) * self.k] = rng.choice(pool, size=self.k, replace=len(pool) < self.k)
        return out

    shard = staticmethod(shard)


def sample_frames(length: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Choose ``n`` frame positions of a ``length``-frame sequence (unordered sampling).

    Without replacement when ``length >= n``, else with replacement (every position is a uniform draw).

    Args:
        length: frames in the sequence (>= 1).
        n: frames wanted (>= 1).
        rng: the generator to draw from.

    Returns:
        int64 ``[n]`` positions in ``[0, length)``, sorted ascending (order carries no information for set /
        max-pooling models; ascending order reads the store sequentially).

    Raises:
        ValueError: ``length`` or ``n`` < 1.
    """
    if length < 1 or n < 1:
        raise ValueError(f"sample_frames: length ({length}) and n ({n}) must be >= 1")
    idx = rng.choice(length, size=n, replace=length < n)
    return np.sort(idx).astype(np.int64, copy=False)


def sample_frames_batch(lengths: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Vectorised :func:`sample_frames` for a batch of sequences: int64 ``[len(lengths), n]``.

    Row ``j`` holds ``n`` positions in ``[0, lengths[j])``, sorted ascending: without replacement when
    ``lengths[j] >= n`` (the ``n`` smallest of random keys), else uniform draws with replacement. One call per
    batch instead of one per sequence keeps the sampler off the training step's critical path.

    Raises:
        ValueError: ``n`` < 1 or a length < 1.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if n < 1 or lengths.size == 0 or lengths.min() < 1:
        raise ValueError(f"sample_frames_batch: n ({n}) and every length must be >= 1")
    longest = int(lengths.max())
    keys = rng.random((lengths.size, max(longest, n)))
    keys[np.arange(keys.shape[1])[None, :] >= lengths[:, None]] = np.inf  # positions past the end never win
    out = np.argsort(keys, axis=1)[:, :n]
    short = lengths < n
    if short.any():
        out[short] = (rng.random((int(short.sum()), n)) * lengths[short, None]).astype(np.int64)
    return np.sort(out, axis=1)


def ordered_frames(length: int, cap: int = 720) -> np.ndarray:
    """All frame positions in order, capped at the first ``cap``: int64 ``[min(length, cap)]``.

    Raises:
        ValueError: ``length`` or ``cap`` < 1.
    """
    if length < 1 or cap < 1:
        raise ValueError(f"ordered_frames: length ({length}) and cap ({cap}) must be >= 1")
    return np.arange(min(length, cap), dtype=np.int64)
