"""Indexed search: FAISS candidates + part-distance re-rank agree with ``identify_many``, approximate indexes
recall what exact search finds, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qgait.evaluation.distance import part_distance
from qgait.runtime import Gallery, identify_many
from qgait.runtime.index import GalleryIndex, IndexParams
from qgait.runtime.index_recall import (approximate_recall, candidate_reference, exhaustive_top1,
                                        rerank_recall)

from .conftest import clustered


@pytest.fixture(scope="module")
def data():
    gal, labels, probes, probe_labels = clustered(100, 5, seed=0)
    return Gallery(gal, labels), probes, probe_labels


@pytest.mark.parametrize("metric", ["euc", "cos"])
def test_full_candidates_equal_identify_many(data, metric):
    g, probes, _ = data
    index = GalleryIndex(g, "flat", metric=metric, k_candidates=len(g), threads=1)
    assert index.search(probes, top_k=7) == identify_many(probes, g, top_k=7, metric=metric)
    big = GalleryIndex(g, "hnsw", metric=metric, k_candidates=10 * len(g), threads=1)
    assert big.search(probes[:5], top_k=3) == identify_many(probes[:5], g, top_k=3, metric=metric)


def test_candidate_path_agrees_with_identify_many(data):
    g, probes, probe_labels = data
    index = GalleryIndex(g, "flat", k_candidates=60, threads=1)
    got, want = index.search(probes, top_k=3), identify_many(probes, g, top_k=3)
    assert [r[0][0] for r in got] == [r[0][0] for r in want] == probe_labels
    np.testing.assert_allclose([[d for _, d in r] for r in got], [[d for _, d in r] for r in want], rtol=1e-5)


def test_rerank_fixes_the_l2_proxy():
    # probe at 0; entry "a" is (3, 3) away per part (mean 3, squared L2 18), entry "b" is (0, 5) (mean 2.5, L2 25):
    # flattened L2 prefers "a", the project's part distance prefers "b"
    emb = np.zeros((2, 1, 2), np.float32)
    emb[0, 0] = [3, 3]
    emb[1, 0] = [0, 5]
    g = Gallery(emb, ["a", "b"])
    index = GalleryIndex(g, "flat", threads=1)
    assert index.search(np.zeros((1, 2), np.float32), top_k=1, k_candidates=1) == [[("a", 3.0)]]
    assert index.search(np.zeros((1, 2), np.float32), top_k=1, k_candidates=2) == [[("b", 2.5)]]
    assert rerank_recall(index, np.zeros((1, 1, 2), np.float32), k_candidates=1)["label"] == 0.0


def test_cauchy_schwarz_bound_of_the_docstring():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 16, 4)), rng.standard_normal((60, 16, 4))
    d = part_distance(torch.from_numpy(x), torch.from_numpy(y)).double().numpy()
    l2 = ((x[:, None] - y[None]) ** 2).sum((2, 3))
    assert (d <= np.sqrt(l2 / 4) + 1e-5).all() and (d < np.sqrt(l2 / 4) - 1e-3).any()


@pytest.mark.parametrize("params", [IndexParams("hnsw", hnsw_m=8, ef_construction=40, ef_search=32),
                                    IndexParams("ivf", nlist=50, nprobe=4)])
def test_approximate_index_recall_is_high(data, params):
    g, probes, probe_labels = data
    approx = GalleryIndex(g, params, k_candidates=20, threads=1)
    exact = GalleryIndex(g, "flat", k_candidates=20, threads=1)
    r = approximate_recall(approx, exact, probes)
    assert r["probes"] == 100 and r["k_candidates"] == 20
    assert r["candidate_1_recall_at_1"] >= 0.9 and r["final_label"] >= 0.9
    assert r["candidate_k_recall_at_k"] >= 0.5  # the 5 entries of the probe's own subject, and some of the rest
    ref = candidate_reference(exact, probes)
    assert approximate_recall(approx, ref, probes) == r
    assert np.mean([t[0][0] == s for t, s in zip(approx.search(probes, 1), probe_labels)]) >= 0.9


def test_recall_detects_a_broken_index(data, monkeypatch):
    g, probes, _ = data
    approx = GalleryIndex(g, IndexParams("ivf", nlist=50, nprobe=4), k_candidates=20, threads=1)
    exact = GalleryIndex(g, "flat", k_candidates=20, threads=1)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(approx, "candidates", lambda p, k=None: (
        rng.integers(0, len(g), (len(p), k)), np.ones((len(p), k), np.float32)))
    r = approximate_recall(approx, exact, probes)
    assert r["final_label"] < 0.5 and r["candidate_1_recall_at_1"] < 0.5


def test_rerank_recall_and_exhaustive_top1(data):
    g, probes, _ = data
    index = GalleryIndex(g, "flat", k_candidates=20, threads=1)
    ids, d = exhaustive_top1(index, probes, block_bytes=4 * len(g) * 7)  # blocks of 7 probes
    full = part_distance(torch.from_numpy(probes), torch.from_numpy(g.embeddings)).numpy()
    np.testing.assert_array_equal(ids, full.argmin(1))
    assert rerank_recall(index, probes) == {"probes": 100, "k_candidates": 20, "entry": 1.0, "label": 1.0}
    assert rerank_recall(index, probes, k_candidates=len(g))["entry"] == 1.0
    assert rerank_recall(index, probes, exhaustive=(ids, d))["label"] == 1.0
    with pytest.raises(ValueError, match="exhaustive holds 3 probes"):
        rerank_recall(index, probes, exhaustive=(ids[:3], d[:3]))


def test_set_search_and_threads_restored(data):
    import faiss

    g, probes, _ = data
    before = faiss.omp_get_max_threads()
    h = GalleryIndex(g, IndexParams("hnsw", hnsw_m=8), threads=1)
    assert faiss.omp_get_max_threads() == before
    h.set_search(ef_search=200)
    assert h.index.hnsw.efSearch == 200 and h.params.ef_search == 200
    with pytest.raises(ValueError, match="ivf"):
        h.set_search(nprobe=3)
    v = GalleryIndex(g, IndexParams("ivf", nlist=10), threads=1)
    v.set_search(nprobe=50)
    assert v.index.nprobe == 10  # capped at nlist
    with pytest.raises(ValueError, match="hnsw"):
        v.set_search(ef_search=3)


def test_bad_input_is_refused(data):
    g, probes, _ = data
    index = GalleryIndex(g, "flat", threads=1)
    with pytest.raises(ValueError, match="Gallery"):
        GalleryIndex(g.embeddings)
    with pytest.raises(ValueError, match="empty gallery"):
        Gallery(np.zeros((0, 16, 4), np.float32), [])
    with pytest.raises(ValueError, match="k_candidates"):
        GalleryIndex(g, "flat", k_candidates=0)
    with pytest.raises(ValueError, match="k_candidates"):
        index.search(probes, k_candidates=0)
    with pytest.raises(ValueError, match="top_k"):
        index.search(probes, top_k=0)
    with pytest.raises(ValueError, match=r"\[c, p\] = \[8, 4\] does not match the gallery's \[16, 4\]"):
        index.search(np.zeros((2, 8, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[c, p\] or \[n, c, p\]"):
        index.search(np.zeros((2, 2, 16, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((16, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexParams("lsh")
    with pytest.raises(ValueError, match="nprobe"):
        IndexParams("ivf", nprobe=0)
    with pytest.raises(ValueError, match="metric"):
        GalleryIndex(g, metric="manhattan")
    with pytest.raises(ValueError, match="threads"):
        GalleryIndex(g, threads=0)
    with pytest.raises(ValueError, match="exceeds the gallery size"):
        GalleryIndex(Gallery(g.embeddings[:5], g.labels[:5]), IndexParams("ivf", nlist=10))
    with pytest.raises(ValueError, match="flat"):
        candidate_reference(GalleryIndex(g, IndexParams("ivf", nlist=10)), probes)
