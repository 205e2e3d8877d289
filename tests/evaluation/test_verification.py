"""Verification metrics: genuine / impostor sets, exact ROC / DET, EER and TAR@FMR (hand cases, brute force)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgait.evaluation import (
    equal_error_rate,
    error_rates,
    genuine_impostor_scores,
    roc_curve,
    sampled_roc_curve,
    tar_at_fmr,
)
from qgait.evaluation import verification as verification_module

# Worked on paper (match iff distance <= t), Ng = 4, Ni = 5; 0.3 is both a genuine and an impostor score:
#   t     -inf  0.1   0.3   0.5   0.6   0.7   0.9
#   FMR   0     0     1/5   2/5   2/5   3/5   1
#   FNMR  1     3/4   1/4   1/4   0     0     0
# EER: a = 0.3 (FNMR 1/4 >= FMR 1/5), b = 0.5 (1/4 < 2/5); lam = (1/4 - 1/5) / ((1/4 - 1/5) - (1/4 - 2/5)) = 1/4
#   EER = 1/5 + 1/4 * (2/5 - 1/5) = 1/4, threshold = 0.3 + 1/4 * 0.2 = 0.35
GEN = [0.6, 0.1, 0.3, 0.3]  # unsorted on purpose
IMP = [0.9, 0.3, 0.7, 0.5, 0.9]


def test_hand_case_curve():
    c = roc_curve(GEN, IMP)
    np.testing.assert_array_equal(c["threshold"], [-np.inf, 0.1, 0.3, 0.5, 0.6, 0.7, 0.9])
    np.testing.assert_allclose(c["fmr"], [0, 0, 0.2, 0.4, 0.4, 0.6, 1])
    np.testing.assert_allclose(c["fnmr"], [1, 0.75, 0.25, 0.25, 0, 0, 0])
    fmr, fnmr = error_rates(GEN, IMP, [0.3, 0.55, 0.0])
    np.testing.assert_allclose(fmr, [0.2, 0.4, 0.0])
    np.testing.assert_allclose(fnmr, [0.25, 0.25, 1.0])


def test_hand_case_eer_interpolated():
    eer, t = equal_error_rate(GEN, IMP)
    assert eer == pytest.approx(0.25)
    assert t == pytest.approx(0.35)


def test_hand_case_tar_at_fmr():
    rows = tar_at_fmr(GEN, IMP, targets=(0.2, 0.4, 0.1))
    assert [r["fmr_target"] for r in rows] == [0.2, 0.4, 0.1]
    # FMR <= 0.2: one impostor may match; the second smallest impostor is 0.5, so t = 0.3 (largest score < 0.5)
    assert rows[0]["resolved"] and rows[0]["tar"] == pytest.approx(0.75)
    assert rows[0]["fmr"] == pytest.approx(0.2) and rows[0]["threshold"] == pytest.approx(0.3)
    # FMR <= 0.4: two impostors; the third is 0.7 -> t = 0.6, every genuine score matches
    assert rows[1]["tar"] == pytest.approx(1.0) and rows[1]["threshold"] == pytest.approx(0.6)
    # FMR <= 0.1 needs >= 10 impostors: only 5
    assert rows[2]["resolved"] is False and math.isnan(rows[2]["tar"]) and math.isnan(rows[2]["threshold"])
    assert all(r["num_impostor"] == 5 for r in rows)


def test_ties_are_never_split():
    # FMR <= 1/3 allows one impostor match, but the two smallest impostors are tied at 0.3: accepting 0.3
    # would give FMR 2/3, so the best point rejects both (FMR 0) and the genuine 0.3 with them
    rows = tar_at_fmr([0.2, 0.3], [0.3, 0.5, 0.3], targets=(1 / 3,))
    assert rows[0]["fmr"] == 0.0 and rows[0]["tar"] == pytest.approx(0.5) and rows[0]["threshold"] == 0.2
    # a tie of a genuine and an impostor score moves both rates at once
    c = roc_curve([1.0], [1.0])
    np.testing.assert_allclose(c["fmr"], [0, 1])
    np.testing.assert_allclose(c["fnmr"], [1, 0])
    eer, t = equal_error_rate([1.0], [1.0])  # the segment (0, 1) -> (1, 0) crosses the diagonal at 0.5
    assert eer == pytest.approx(0.5) and t == 1.0  # a = the no-match start point: threshold of b


def test_nothing_below_the_first_impostor():
    imp = np.concatenate(([0.0, 0.0], np.arange(1.0, 99.0)))  # 100 impostors, the two smallest tied at 0
    # FMR <= 0.01 allows one match, but the tie at 0 forbids both: nothing can match, threshold -inf, TAR 0
    rows = tar_at_fmr([3.5, 60.0], imp, targets=(0.01, 0.05))
    assert rows[0]["resolved"] and rows[0]["tar"] == 0.0 and rows[0]["fmr"] == 0.0
    assert rows[0]["threshold"] == -np.inf
    # FMR <= 0.05: five matches (0, 0, 1, 2, 3); the sixth impostor is 4 -> t = 3.5, the largest score below it
    assert rows[1]["tar"] == 0.5 and rows[1]["fmr"] == pytest.approx(0.05) and rows[1]["threshold"] == 3.5


def test_perfectly_separated():
    gen = np.linspace(0.0, 1.0, 50)
    imp = 2.0 + np.arange(10_000) * 1e-3
    eer, t = equal_error_rate(gen, imp)
    assert eer == 0.0 and 1.0 <= t < 2.0
    rows = tar_at_fmr(gen, imp)  # 1e-2, 1e-3, 1e-4: all resolvable with 10,000 impostors
    assert [r["tar"] for r in rows] == [1.0, 1.0, 1.0] and all(r["resolved"] for r in rows)


def test_reversed_separation_gives_eer_one():
    eer, t = equal_error_rate([2.0, 3.0], [0.0, 1.0])
    assert eer == pytest.approx(1.0) and t == 1.0
    assert tar_at_fmr([2.0, 3.0], [0.0, 1.0], targets=(0.5,))[0]["tar"] == 0.0


def test_identical_distributions():
    eer, t = equal_error_rate([1, 2, 3, 4], [4, 3, 2, 1])
    assert eer == pytest.approx(0.5) and t == 2.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    eer, _ = equal_error_rate(x, rng.permutation(x))
    assert eer == pytest.approx(0.5, abs=1e-3)


def test_resolvable_flag_counts_impostors():
    gen = [0.0]
    for n_imp, resolved in ((999, [True, False, False]), (1000, [True, True, False]), (10_000, [True] * 3)):
        rows = tar_at_fmr(gen, np.arange(1.0, n_imp + 1))
        assert [r["resolved"] for r in rows] == resolved, n_imp
        assert [math.isnan(r["tar"]) for r in rows] == [not r for r in resolved]
    # at exactly 1 / target impostors one match is allowed (1e-3 * 1000 is not rounded down to 0)
    row = tar_at_fmr([1.5], [1.0] + [2.0] * 999, targets=(1e-3,))[0]
    assert row["fmr"] == pytest.approx(1e-3) and row["tar"] == 1.0 and row["threshold"] == 1.5
    # 0.29 * 100 is 28.999999999999996 in floating point: 29 of 100 impostors still count as FMR <= 0.29
    row = tar_at_fmr([28.5], np.arange(100.0), targets=(0.29,))[0]
    assert row["fmr"] == pytest.approx(0.29) and row["tar"] == 1.0 and row["threshold"] == 28.5


# ---------------------------------------------------------------------------------------------------------
# genuine / impostor sets from a distance matrix


def test_scores_from_matrix():
    dist = torch.tensor([[0.1, 0.9, 0.4], [0.8, 0.2, 0.7]], dtype=torch.float32)
    gen, imp = genuine_impostor_scores(dist, ["a", "b"], ["a", "b", "a"])
    np.testing.assert_allclose(gen, [0.1, 0.2, 0.4])  # sorted
    np.testing.assert_allclose(imp, [0.7, 0.8, 0.9])
    assert gen.dtype == np.float32 and imp.dtype == np.float32  # float32 kept: half the memory
    gen64, _ = genuine_impostor_scores(dist.double().numpy(), np.array(["a", "b"]), ("a", "b", "a"))
    assert gen64.dtype == np.float64
    # a probe of a subject absent from the gallery contributes impostor pairs only
    gen, imp = genuine_impostor_scores(np.ones((3, 2)), [1, 2, 3], [1, 2])
    assert len(gen) == 2 and len(imp) == 4


def test_scores_blockwise_match_direct(monkeypatch):
    monkeypatch.setattr(verification_module, "_CHUNK", 7)  # many blocks, a ragged last one
    rng = np.random.default_rng(1)
    n, m = 50, 23
    dist = rng.integers(0, 20, size=(n, m)).astype(np.float64)  # ties
    probes, gallery = rng.integers(0, 6, n), rng.integers(0, 5, m)
    gen, imp = genuine_impostor_scores(dist, probes, gallery)
    same = probes[:, None] == gallery[None, :]
    np.testing.assert_array_equal(gen, np.sort(dist[same]))
    np.testing.assert_array_equal(imp, np.sort(dist[~same]))


@pytest.mark.parametrize(
    "dist, probes, gallery, match",
    [
        (np.zeros((2, 3)), ["a"], ["a", "b", "c"], "probe_labels has 1 entries but dist has 2 rows"),
        (np.zeros((2, 3)), ["a", "b"], ["a", "b"], "gallery_labels has 2 entries but dist has 3 columns"),
        (np.zeros(3), ["a"], ["a", "b", "c"], r"shape \[n_probes, n_gallery\]"),
        (np.zeros((0, 3)), [], ["a", "b", "c"], "no probes"),
        (np.zeros((2, 2)), ["x", "y"], ["a", "b"], "no genuine pairs"),
        (np.zeros((2, 2)), [1, 1], ["1", "1"], "no genuine pairs"),  # int vs str labels
        (np.zeros((2, 2)), ["a", "a"], ["a", "a"], "no impostor pairs"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), ["a", "b"], ["a", "b"], "NaN or infinite"),
        (np.array([[0.1, np.inf], [0.2, 0.3]]), ["a", "b"], ["a", "b"], "NaN or infinite"),
    ],
)
def test_scores_bad_input(dist, probes, gallery, match):
    with pytest.raises(ValueError, match=match):
        genuine_impostor_scores(dist, probes, gallery)


def test_scores_type_error():
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        genuine_impostor_scores([[0.1, 0.2]], ["a"], ["a", "b"])


@pytest.mark.parametrize(
    "gen, imp, match",
    [
        ([], [1.0], "genuine scores is empty"),
        ([1.0], [], "impostor scores is empty"),
        ([np.nan, 1.0], [1.0], "genuine scores contains NaN"),
        ([1.0], [[1.0, 2.0]], "impostor scores must be 1-D"),
        ([1.0], ["a"], "must be real numbers"),
    ],
)
def test_metrics_bad_scores(gen, imp, match):
    for fn in (equal_error_rate, tar_at_fmr, roc_curve):
        with pytest.raises(ValueError, match=match):
            fn(gen, imp)


@pytest.mark.parametrize("targets", [(0.0,), (1.5,), (1, -0.1), (), (float("nan"),), (1.0, 10)])
def test_bad_targets(targets):
    with pytest.raises(ValueError, match="targets"):
        tar_at_fmr([0.1], [0.2], targets)


def test_sampled_curve_bad_max_points():
    with pytest.raises(ValueError, match="max_points"):
        sampled_roc_curve([0.1], [0.2], max_points=1)


# ---------------------------------------------------------------------------------------------------------
# agreement with brute force (exact fractions, a loop over every threshold)


def brute_curve(gen, imp):
    """[(threshold, FMR, FNMR)] with FMR / FNMR as exact fractions, at -inf and at every distinct score."""
    ts = [-math.inf] + sorted(set(gen) | set(imp))
    return [
        (t, Fraction(sum(x <= t for x in imp), len(imp)), Fraction(sum(x > t for x in gen), len(gen)))
        for t in ts
    ]


def brute_eer(pts):
    a = max(i for i, (_, f, m) in enumerate(pts) if m >= f)
    (ta, fa, ma), (tb, fb, mb) = pts[a], pts[a + 1]
    lam = (ma - fa) / ((ma - fa) - (mb - fb))
    return float(fa + lam * (fb - fa)), (tb if ta == -math.inf else ta + float(lam) * (tb - ta))


def brute_tar(pts, n_imp, target):
    ok = [(t, f, m) for t, f, m in pts if f * n_imp <= target * n_imp * (1 + 1e-9)]  # FMR <= target
    t, f, m = max(ok, key=lambda p: (1 - p[2], p[0]))  # highest TAR, then the largest threshold
    return float(1 - m), float(f), t


score_lists = st.lists(st.integers(0, 12).map(lambda v: v / 4), min_size=1, max_size=25)  # many ties


@settings(max_examples=60, deadline=None)
@given(score_lists, score_lists, st.integers(0, 30), st.floats(0.0, 0.9))
def test_agrees_with_brute_force(gen, imp, j, frac):
    pts = brute_curve(gen, imp)
    c = roc_curve(gen, imp)
    np.testing.assert_array_equal(c["threshold"], [p[0] for p in pts])
    np.testing.assert_allclose(c["fmr"], [float(p[1]) for p in pts], atol=1e-12)
    np.testing.assert_allclose(c["fnmr"], [float(p[2]) for p in pts], atol=1e-12)

    eer, t = equal_error_rate(gen, imp)
    eer_ref, t_ref = brute_eer(pts)
    assert eer == pytest.approx(eer_ref, abs=1e-12) and t == pytest.approx(t_ref, abs=1e-12)

    n = len(imp)
    target = min((min(j, n) + frac) / n, 1.0)
    if target * n >= 1:  # resolvable
        row = tar_at_fmr(gen, imp, (target,))[0]
        assert row["resolved"]
        assert (row["tar"], row["fmr"], row["threshold"]) == pytest.approx(brute_tar(pts, n, target))
        assert row["fmr"] <= target

    # every sampled point is an exact operating point, and the sampled curve keeps both ends' best points
    s = sampled_roc_curve(gen, imp, max_points=5)
    exact = {t: (float(f), float(m)) for t, f, m in pts}
    for t, f, m in zip(s["threshold"].tolist(), s["fmr"].tolist(), s["fnmr"].tolist()):
        assert (f, m) == pytest.approx(exact[t], abs=1e-12)
    assert len(s["fmr"]) <= 5 and max(s["fmr"]) == 1.0


def test_large_random_sets_agree_with_exact_curve():
    rng = np.random.default_rng(2)
    gen = rng.normal(0.0, 1.0, 3000).astype(np.float32)
    imp = rng.normal(2.5, 1.0, 200_000).astype(np.float32)
    c = roc_curve(gen, imp)
    diff = c["fnmr"] - c["fmr"]
    a = int(np.flatnonzero(diff >= 0)[-1])
    eer, _ = equal_error_rate(gen, imp)
    assert c["fmr"][a] <= eer <= c["fmr"][a + 1] and c["fnmr"][a + 1] <= eer <= c["fnmr"][a]
    assert eer == pytest.approx(0.1056, abs=0.005)  # two unit normals 2.5 apart: Phi(-1.25) = 0.1056
    for row in tar_at_fmr(gen, imp):
        ok = c["fmr"] <= row["fmr_target"]
        assert row["tar"] == pytest.approx(1 - c["fnmr"][ok].min())
        assert row["threshold"] == c["threshold"][ok][-1]
    s = sampled_roc_curve(gen, imp)
    assert len(s["fmr"]) <= 200 and np.all(np.diff(s["fmr"]) >= 0) and np.all(np.diff(s["fnmr"]) <= 0)
    assert s["fmr"][s["fmr"] > 0].min() == pytest.approx(1 / len(imp))  # reaches the smallest resolvable FMR
