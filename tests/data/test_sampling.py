"""P x K sampler and frame sampling: composition, determinism, sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qgait.data.sampling import TripletSampler, ordered_frames, sample_frames, shard


def _labels(counts: dict[int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    lab = np.concatenate([np.full(n, l) for l, n in counts.items()])
    return rng.permutation(lab)


def test_p_distinct_labels_each_exactly_k_times():
    labels = _labels({l: 10 + l for l in range(20)})
    s = TripletSampler(labels, p=8, k=4, seed=1)
    for it in range(50):
        b = s.batch(it)
        assert b.dtype == np.int64 and b.shape == (32,)
        got = labels[b]
        counts = Counter(got.tolist())
        assert len(counts) == 8 and set(counts.values()) == {4}
        for j in range(8):  # label-major blocks
            assert len(set(got[j * 4:(j + 1) * 4].tolist())) == 1
        for j in range(8):  # enough sequences per label: no repeats
            assert len(set(b[j * 4:(j + 1) * 4].tolist())) == 4


def test_deterministic_per_seed_and_iteration():
    labels = _labels({l: 6 for l in range(12)})
    a, b = TripletSampler(labels, 4, 3, seed=7), TripletSampler(labels, 4, 3, seed=7)
    assert all(np.array_equal(a.batch(i), b.batch(i)) for i in (0, 1, 99, 12345))
    assert np.array_equal(a.batch(5), a.batch(5))  # no hidden state: order of calls irrelevant
    assert not np.array_equal(a.batch(0), a.batch(1))
    assert not np.array_equal(a.batch(0), TripletSampler(labels, 4, 3, seed=8).batch(0))


def test_all_labels_get_drawn_over_time():
    labels = _labels({l: 3 for l in range(10)})
    s = TripletSampler(labels, 2, 2, seed=0)
    n = 2000
    chosen = Counter(l for i in range(n) for l in labels[s.batch(i)[::2]].tolist())  # one entry per block
    assert set(chosen) == set(range(10))
    # each label is picked with probability p / C = 0.2 per batch: mean 400, sd ~17.9; allow 5 sd
    assert all(abs(c - n * 0.2) < 5 * (n * 0.2 * 0.8) ** 0.5 for c in chosen.values()), chosen


def test_small_labels_use_replacement_and_gaps_are_ignored():
    labels = np.array([5, 5, 9, 9, 9, 9, 2])  # labels 0,1,3,... never occur; label 2 has one sequence
    s = TripletSampler(labels, p=3, k=4, seed=0)
    b = s.batch(0)
    assert set(labels[b].tolist()) == {2, 5, 9}
    assert b[labels[b] == 2].tolist() == [6, 6, 6, 6]
    with pytest.raises(ValueError, match="at least p=4 distinct labels"):
        TripletSampler(labels, p=4, k=1)
    with pytest.raises(ValueError):
        TripletSampler(labels, p=0, k=1)
    with pytest.raises(ValueError):
        s.batch(-1)


def test_shards_partition_the_batch():
    b = np.arange(24)
    parts = [shard(b, r, 4) for r in range(4)]
    assert all(len(p) == 6 for p in parts)
    assert np.array_equal(np.concatenate(parts), b)
    with pytest.raises(ValueError, match="evenly"):
        shard(b, 0, 5)
    with pytest.raises(ValueError, match="rank"):
        shard(b, 4, 4)
    assert TripletSampler.shard is shard


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31), st.integers(0, 10**6),
       st.lists(st.integers(1, 8), min_size=6, max_size=12))
def test_composition_property(p, k, seed, it, sizes):
    labels = _labels({l: n for l, n in enumerate(sizes)})
    b = TripletSampler(labels, p, k, seed).batch(it)
    c = Counter(labels[b].tolist())
    assert len(c) == p and set(c.values()) == {k}
    assert b.min() >= 0 and b.max() < len(labels)


def test_sample_frames():
    rng = np.random.default_rng(0)
    idx = sample_frames(50, 30, rng)
    assert idx.dtype == np.int64 and idx.shape == (30,)
    assert len(set(idx.tolist())) == 30 and idx.min() >= 0 and idx.max() < 50  # without replacement
    assert np.all(np.diff(idx) > 0)
    short = sample_frames(4, 30, rng)
    assert short.shape == (30,) and set(short.tolist()) <= {0, 1, 2, 3}
    assert np.array_equal(sample_frames(80, 30, np.random.default_rng([1, 2])),
                          sample_frames(80, 30, np.random.default_rng([1, 2])))
    with pytest.raises(ValueError):
        sample_frames(0, 3, rng)


def test_ordered_frames():
    assert np.array_equal(ordered_frames(5), np.arange(5))
    assert len(ordered_frames(1000)) == 720 and ordered_frames(1000)[-1] == 719
    assert len(ordered_frames(1000, cap=10)) == 10


def test_sample_frames_batch_rows_are_valid_and_deterministic():
    from qgait.data.sampling import sample_frames_batch

    lengths = np.array([3, 40, 16, 1, 100])
    a = sample_frames_batch(lengths, 16, np.random.default_rng([0, 1]))
    b = sample_frames_batch(lengths, 16, np.random.default_rng([0, 1]))
    assert a.shape == (5, 16) and np.array_equal(a, b)
    for row, n in zip(a, lengths):
        assert row.min() >= 0 and row.max() < n
        assert np.all(np.diff(row) >= 0)  # sorted
        if n >= 16:
            assert len(set(row.tolist())) == 16  # without replacement
    assert set(a[2].tolist()) == set(range(16))  # exactly all frames when length == n
    assert (a[3] == 0).all()


def test_sample_frames_batch_is_uniform_over_positions():
    from qgait.data.sampling import sample_frames_batch

    draws = sample_frames_batch(np.full(4000, 10), 3, np.random.default_rng(0))
    counts = np.bincount(draws.ravel(), minlength=10)
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()
