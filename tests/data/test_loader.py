"""TrainBatches / iter_test_sequences on a small synthetic store whose pixels identify their frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qgait.data.loader import TrainBatches, iter_test_sequences
from qgait.data.sources import SequenceKey
from qgait.data.store import SequenceStore, StoreWriter
from qgait.data.transforms import GaitAugment


@pytest.fixture(scope="module")
def tagged_store(tmp_path_factory) -> SequenceStore:
    """6 subjects x 3 sequences; frame f of sequence i has pixel (0, 10) = i and (1, 10) = f, (2, 10) = 255."""
    dest = tmp_path_factory.mktemp("loader") / "st"
    i = 0
    with StoreWriter(dest) as w:
        for s in range(6):
            for c in ("nm-01", "nm-02", "cl-01"):
                t = 3 + 2 * i  # 3 .. 37 frames
                f = np.zeros((t, 64, 64), np.uint8)
                f[:, 0, 10] = i
                f[:, 1, 10] = np.arange(t)
                f[:, 2, 10] = 255
                w.add(SequenceKey(f"{s:03d}", c, "090"), f)
                i += 1
    return SequenceStore.open(dest)


def _decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(sequence ids [B], frame ids [B, T]) from the tagged pixels (column 10 of 64 is column 0 after the cut)."""
    v = (x * 255).round().to(torch.int64).numpy()
    assert (v[:, :, 2, 0] == 255).all()
    return v[:, 0, 0, 0], v[:, :, 1, 0]


def test_batches_hold_the_sampled_sequences_and_frames(tagged_store):
    idx = tagged_store.select(conditions=["nm-01", "nm-02"])
    tb = TrainBatches(tagged_store, idx, p=3, k=2, frames=8, seed=5)
    assert tb.num_classes == 6 and tb.labels.dtype == np.int64
    for it in range(5):
        x, y = tb.get(it)
        assert x.shape == (6, 8, 64, 44) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.shape == (6,)
        seq, frames = _decode(x)
        assert np.array_equal(seq, tb.sequences(it))
        assert set(seq.tolist()) <= set(idx)
        for j, s in enumerate(seq):
            rec = tagged_store.records[s]
            assert tb.subject_names[y[j]] == rec.subject  # label matches the sequence's subject
            assert frames[j].max() < rec.length
            if rec.length >= 8:
                assert len(set(frames[j].tolist())) == 8  # without replacement
        assert len(set(y.tolist())) == 3 and all((y == c).sum() == 2 for c in set(y.tolist()))


def test_deterministic_and_resumable(tagged_store):
    idx = list(range(len(tagged_store)))
    aug = GaitAugment(rotation_prob=0.5, erasing_prob=0.5)
    a = TrainBatches(tagged_store, idx, 2, 2, 4, augment=aug, seed=1)
    b = TrainBatches(tagged_store, idx, 2, 2, 4, augment=aug, seed=1)
    xb, yb = b.get(7)
    xa, ya = a.get(7)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.get(8)[0], xa)
    resumed = [(i, x, y) for i, x, y in a.iterate(start_iteration=3, stop=6)]
    assert [i for i, _, _ in resumed] == [3, 4, 5]
    for i, x, y in resumed:
        xr, yr = a.get(i)
        assert torch.equal(x, xr) and torch.equal(y, yr)
    with TrainBatches(tagged_store, idx, 2, 2, 4, augment=aug, seed=1, prefetch=True) as pre:
        prefetched = list(pre.iterate(3, stop=6))
        assert len(prefetched) == 3
        assert all(torch.equal(p[1], r[1]) and p[0] == r[0] for p, r in zip(prefetched, resumed))
        assert pre._pending is not None and pre._pending[0] == 6  # batch 6 was being built ahead
        assert torch.equal(pre.get(4)[0], a.get(4)[0])  # out-of-order request: prefetched batch discarded
        assert torch.equal(pre.get(5)[0], a.get(5)[0])  # consecutive again: served from the prefetch
    stream = iter(a)
    assert next(stream)[0] == 0


def test_held_out_batches_are_fixed_and_apart_from_training(tagged_store):
    idx = list(range(len(tagged_store)))
    tb = TrainBatches(tagged_store, idx, 2, 2, 4, seed=3)
    calib = tb.held_out(3)
    assert len(calib) == 3 and all(x.shape == (4, 4, 64, 44) for x, _ in calib)
    for i, (x, y) in enumerate(calib):  # the same batches as the fixed indices, on any start of a run
        xg, yg = tb.get(10**6 + i)
        assert torch.equal(x, xg) and torch.equal(y, yg)
    assert torch.equal(TrainBatches(tagged_store, idx, 2, 2, 4, seed=3).held_out(1)[0][0], calib[0][0])
    bn = tb.held_out(2, tb.BN_STREAM)
    assert torch.equal(bn[1][0], tb.get(2 * 10**6 + 1)[0]) and not torch.equal(bn[0][0], calib[0][0])
    assert tb.held_out(0) == []
    lazy = tb.iter_held_out(2, tb.BN_STREAM)  # built one at a time, the same batches
    assert not isinstance(lazy, list) and all(torch.equal(a[0], b[0]) for a, b in zip(lazy, bn))
    with pytest.raises(ValueError, match="n must be"):
        tb.iter_held_out(-1)  # checked at the call, not at the first batch
    with pytest.raises(ValueError, match="n must be"):
        tb.held_out(-1)
    with pytest.raises(ValueError, match="stream must be"):
        tb.held_out(1, stream=0)


def test_ranks_split_the_global_batch(tagged_store):
    idx = list(range(len(tagged_store)))
    full = TrainBatches(tagged_store, idx, 4, 2, 5, seed=2)
    ranks = [TrainBatches(tagged_store, idx, 4, 2, 5, seed=2, rank=r, world_size=2) for r in range(2)]
    for it in (0, 1, 9):
        parts = [r.get(it) for r in ranks]
        assert np.array_equal(np.concatenate([_decode(x)[0] for x, _ in parts]), full.sequences(it))
        assert torch.equal(torch.cat([y for _, y in parts]), full.get(it)[1])
    with pytest.raises(ValueError, match="evenly"):
        TrainBatches(tagged_store, idx, 3, 1, 5, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        TrainBatches(tagged_store, idx, 2, 2, 5, rank=2, world_size=2)


def test_resized_input(tagged_store):
    tb = TrainBatches(tagged_store, list(range(len(tagged_store))), 2, 2, 3, size=(32, 22), seed=0)
    x, _ = tb.get(0)
    assert x.shape == (4, 3, 32, 22) and 0 <= x.min() and x.max() <= 1


def test_test_sequences_in_order_with_cap(tagged_store):
    idx = [5, 0, 17]
    out = list(iter_test_sequences(tagged_store, idx, max_frames=20))
    assert [i for i, _ in out] == idx
    for i, x in out:
        n = min(tagged_store.records[i].length, 20)
        assert x.shape == (1, n, 64, 44) and x.dtype == torch.float32
        seq, frames = _decode(x[0].unsqueeze(0).transpose(0, 1))
        assert (seq == i).all() and frames[:, 0].tolist() == list(range(n))
