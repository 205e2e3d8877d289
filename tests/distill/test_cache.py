"""The teacher output cache (qgait.distill.cache): keyed by the teacher's fingerprint and the input bytes, read back
bit-identical, refreshed when unreadable, shared by a teacher's renamed copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qgait.distill import MultiTeacher, Teacher
from qgait.distill.cache import TeacherOutputCache, batches_digest, teacher_fingerprint
from qgait.models.gaitbase import GaitBase
from qgait.models.heads import GaitWithHead

X_SHAPE = (4, 2, 16, 4)  # [n, T, H, W]


def _net(seed=0) -> GaitWithHead:
    torch.manual_seed(seed)
    return GaitWithHead(GaitBase(width=1 / 16, bins=(4,), embed_dim=16), 3)


def _fp(net, **kw):
    args = {"amp": None, "int8": False, "device": "cpu", "channels_last": False} | kw
    return teacher_fingerprint(net, **args)


def test_fingerprint_follows_weights_buffers_precision_and_threads():
    net = _net()
    base = _fp(net)
    assert base == _fp(_net())  # same weights: same fingerprint
    assert base != _fp(_net(seed=1))
    assert base != _fp(net, amp=torch.bfloat16) != _fp(net, int8=True)
    assert base != _fp(net, channels_last=True) and base != _fp(net, extra="calibration")
    with torch.no_grad():
        next(b for n, b in net.named_buffers() if n.endswith("running_mean")).add_(1e-7)  # one buffer moved
    assert _fp(net) != base
    torch.set_num_threads(2)
    try:
        assert _fp(_net()) != base
    finally:
        torch.set_num_threads(1)
    a, b = torch.zeros(2, 3), torch.zeros(3, 2)
    assert batches_digest([a]) != batches_digest([b]) and batches_digest([a]) == batches_digest([a.clone()])


def test_cache_reads_back_bit_identical_and_misses_on_any_other_input(tmp_path):
    calls = []

    def compute(x):
        calls.append(x)
        return {"embeddings": x.sum(1, keepdim=True).float() * 0.1, "logits": torch.randn(x.shape[0], 3, 2)}

    cache = TeacherOutputCache(tmp_path, "ab" * 32, {"checkpoint": "t.pt"})
    x = torch.rand(*X_SHAPE).round()
    first = cache.get(x, compute)
    again = cache.get(x.clone(), compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    for k in first:
        assert torch.equal(first[k], again[k]) and again[k].dtype == torch.float32
    y = x.clone()
    y[0, 0, 0, 0] = 1 - y[0, 0, 0, 0]  # one pixel
    cache.get(y, compute)
    cache.get(x.double(), compute)  # same values, another dtype
    assert len(calls) == 3 and cache.misses == 3
    other = TeacherOutputCache(tmp_path, "cd" * 32)  # another teacher: its own entries
    other.get(x, compute)
    assert len(calls) == 4
    assert (tmp_path / ("ab" * 8) / "teacher.json").is_file()
    assert cache.stats() == {"dir": str(tmp_path / ("ab" * 8)), "hits": 1, "misses": 3}


def test_unreadable_entry_is_computed_again(tmp_path):
    cache = TeacherOutputCache(tmp_path, "ef" * 32)
    x = torch.ones(2, 3)
    file = cache.path(cache.key(x))
    file.parent.mkdir(parents=True)
    np.savez(file, embeddings=np.array([object()], dtype=object))  # needs pickle: never loaded
    with pytest.warns(UserWarning, match="unreadable teacher-cache entry"):
        out = cache.get(x, lambda t: {"embeddings": t * 2})
    assert torch.equal(out["embeddings"], x * 2) and cache.misses == 1
    assert torch.equal(cache.get(x, lambda t: {"embeddings": t * 0})["embeddings"], x * 2)  # rewritten entry
    file.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match=str(file.name)):
        cache.get(x, lambda t: {"embeddings": t * 2})


def test_teacher_outputs_through_the_cache_equal_its_live_outputs(tmp_path):
    x = torch.rand(*X_SHAPE).round()
    live = Teacher(_net(), amp=torch.bfloat16)(x)
    cached = Teacher(_net(), amp=torch.bfloat16).use_cache(tmp_path)
    first, second = cached(x), cached(x)
    assert cached.cache.misses == 1 and cached.cache.hits == 1
    assert set(first) == {"teacher_embeddings", "teacher_logits"}
    for k in live:
        assert torch.equal(first[k], live[k]) and torch.equal(second[k], live[k])
    # a renamed copy (as in MultiTeacher) shares the cache and reads the same entry under its own prefix
    multi = MultiTeacher([cached, Teacher(_net(seed=3))])
    out = multi(x)
    assert cached.cache.hits == 2
    assert torch.equal(out["teacher0_embeddings"], live["teacher_embeddings"])
    # a teacher with other precision does not read these entries
    f32 = Teacher(_net()).use_cache(tmp_path)
    f32(x)
    assert f32.cache.misses == 1 and f32.cache.folder != cached.cache.folder
