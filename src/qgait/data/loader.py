"""Training batches and test sequences from a :class:`~qgait.data.store.SequenceStore`, as torch tensors.

A training batch is a pure function of ``(seed, iteration, rank)``: the P x K choice of sequences from
``(seed, iteration)`` (identical on every rank, then sharded), the frames from
``default_rng([seed, iteration, 1, rank])``, the augmentation from a ``torch.Generator`` seeded from
``(seed, iteration, 2, rank)``. No RNG state is carried between batches, so resuming at iteration ``i`` gives
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .sampling import TripletSampler, ordered_frames, sample_frames_batch, shard
from .store import SequenceStore
from .transforms import GaitAugment, to_model_input

__all__ = ["TrainBatches", "iter_test_sequences", "augment_seed"]


def augment_seed(seed: int, iteration: int, rank: int) -> int:
    """The ``torch.Generator`` seed of a batch: a 63-bit hash of ``(seed, iteration, 2, rank)``, stable across
    processes and Python runs (unlike ``hash()``)."""
    state = np.random.SeedSequence([seed, iteration, 2, rank]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)


class TrainBatches:
    """Deterministic P x K training batches of frame-sampled sequences.

    Args:
        store: the sequence store.
        indices: the store indices to train on (e.g. ``store.select(subjects=partition.train)``); non-empty.
        p: subjects per global batch. k: sequences per subject.
        frames: frames sampled per sequence (unordered; with replacement for shorter sequences).
        size: model input ``(h, w)`` in pixels, see :func:`~qgait.data.transforms.to_model_input`.
        augment: augmentation applied per sequence, or None.
        seed: non-negative integer.
        rank, world_size: this process and the number of processes; ``p * k`` must be divisible by
            ``world_size``; each rank gets a contiguous slice of the global batch.
        prefetch: after ``get(i)``, build batch ``i + 1`` in a background thread, so that a caller asking
            for consecutive iterations finds it ready. Results are identical with or without it (a batch
            is a pure function of the iteration; a prefetched batch for another iteration is discarded).

    Attributes:
        labels: int64 ``[len(indices)]``, the class of each index (position of its subject in
            ``subject_names``).
        subject_names: sorted subjects of ``indices``; ``num_classes == len(subject_names)``.
        batch_size: ``p * k // world_size`` sequences per rank.

    Raises:
        ValueError: empty ``indices``, fewer than ``p`` subjects, bad ``frames`` / ``rank`` / ``world_size``.
    """

    def __init__(
        self,
        store: SequenceStore,
        indices: Sequence[int],
        p: int,
        k: int,
        frames: int,
        size: tuple[int, int] = (64, 44),
        augment: GaitAugment | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prefetch: bool = False,
    ) -> None:
        self.store = store
        self.indices = np.asarray(list(indices), dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError("TrainBatches: no sequences to train on (indices is empty)")
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
            raise ValueError(f"TrainBatches: frames must be a positive integer, got {frames!r}")
        self.labels, self.subject_names = store.labels_for(self.indices.tolist())
        self.num_classes = len(self.subject_names)
        self.sampler = TripletSampler(self.labels, p, k, seed)
        shard(np.empty(p * k), rank, world_size)  # validates rank / world_size / divisibility, with a message
        if store.frame_shape not in ((64, 64), (64, 44)):
            raise ValueError(f"TrainBatches: store frames are {store.frame_shape}, expected (64, 64) or (64, 44)")
        self.frames, self.size, self.augment = int(frames), (int(size[0]), int(size[1])), augment
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.batch_size = p * k // world_size
        self.prefetch = bool(prefetch)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[int, Future] | None = None

    def sequences(self, iteration: int) -> np.ndarray:
        """Store indices of this rank's sequences at ``iteration``: int64 ``[batch_size]``."""
        local = shard(self.sampler.batch(iteration), self.rank, self.world_size)
        return self.indices[local]

    CALIBRATION_STREAM = 1
    """``held_out`` stream of the calibration batches (quantizer step sizes, int8 teachers, Hessian traces)."""
    BN_STREAM = 2
    """``held_out`` stream of the batch-norm re-estimation batches after QAT."""

    def held_out(self, n: int, stream: int = CALIBRATION_STREAM) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` batches drawn past any training iteration: ``get(stream * 10**6 + i)`` for ``i < n``.

        They are the same on every start and resume of a run (a batch is a pure function of its index), and a
        schedule would need a million iterations to train on one of them. ``stream`` keeps independent uses apart
        (:attr:`CALIBRATION_STREAM`, :attr:`BN_STREAM`). :meth:`iter_held_out` builds them one at a time.

        Returns:
            ``[(x, y), ...]`` of length ``n``, each as :meth:`get` returns it.

        Raises:
            ValueError: negative ``n`` or a ``stream`` below 1.
        """
        return list(self.iter_held_out(n, stream))

    def iter_held_out(self, n: int, stream: int = CALIBRATION_STREAM) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`held_out`'s batches one at a time, each built when it is asked for (for many batches: batch-norm
        re-estimation reads 50 of the full-size recipe's 40 MB batches). Arguments are checked at the call.

        Raises:
            ValueError: negative ``n`` or a ``stream`` below 1.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"TrainBatches.held_out: n must be a non-negative integer, got {n!r}")
        if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or stream < 1:
            raise ValueError(f"TrainBatches.held_out: stream must be a positive integer, got {stream!r}")
        return (self._build(stream * 10**6 + i) for i in range(int(n)))

    def get(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's batch at ``iteration``.

        Returns:
            ``(x, y)``: ``x`` float32 ``[batch_size, frames, h, w]`` in [0, 1] (augmented if ``augment``),
            ``y`` int64 ``[batch_size]`` class labels in ``0..num_classes-1``. Deterministic in
            ``(seed, iteration, rank)``.

        Raises:
            ValueError: negative ``iteration``.
        """
        if not self.prefetch:
            return self._build(iteration)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == iteration:
            batch = pending[1].result()
        else:
            if pending is not None:
                pending[1].cancel()
            batch = self._build(iteration)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qgait-prefetch")
        self._pending = (iteration + 1, self._pool.submit(self._build, iteration + 1))
        return batch

    def _build(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        local = shard(self.sampler.batch(iteration), self.rank, self.world_size)
        seq = self.indices[local]
        rng = np.random.default_rng([self.seed, iteration, 1, self.rank])
        raw = self.store.gather_batch(seq, sample_frames_batch(self.store.lengths[seq], self.frames, rng))
        x = to_model_input(torch.from_numpy(raw), self.size)
        if self.augment is not None:
            x = self.augment(x, torch.Generator().manual_seed(augment_seed(self.seed, iteration, self.rank)))
        return x, torch.from_numpy(self.labels[local].copy())

    def iterate(self, start_iteration: int = 0, stop: int | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield ``(iteration, x, y)`` for ``iteration = start_iteration, start_iteration + 1, ...`` (the resume
        point is just the first iteration), stopping before ``stop`` (None: endless). Prefetches if enabled."""
        it = start_iteration
        while stop is None or it < stop:
            yield (it, *self.get(it))
            it += 1

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``iterate(0)``: endless ``(iteration, x, y)``."""
        return self.iterate(0)

    def close(self) -> None:
        """Stop the prefetch thread (if any); ``get`` still works afterwards and restarts it when needed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_test_sequences(
    store: SequenceStore, indices: Sequence[int], size: tuple[int, int] = (64, 44), max_frames: int = 720
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield every test sequence whole (frames in order, at most the first ``max_frames``).

    Args:
        store: the sequence store.
        indices: store indices, yielded in this order.
        size: model input ``(h, w)``.
        max_frames: frame cap per sequence (OpenGait: 720).

    Yields:
        ``(index, x)`` with ``x`` float32 ``[1, T, h, w]`` in [0, 1], ``T = min(length, max_frames)``.
    """
    for i in indices:
        i = int(i)
        view = store.frames(i)
        n = len(ordered_frames(len(view), max_frames))
        x = to_model_input(torch.from_numpy(np.array(view[:n])), size)
        yield i, x.unsqueeze(0)
