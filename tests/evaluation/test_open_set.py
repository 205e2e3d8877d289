"""Open-set identification (FPIR, FNIR, DIR at rank 1) and the seeded enrolled / left-out subject split."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgait.evaluation import (
    OpenSetScores,
    dir_at_fpir,
    fpir_fnir,
    open_set_curve,
    open_set_scores,
    sampled_open_set_curve,
    split_subjects,
)

GALLERY = ["A", "B", "A"]
PROBES = ["A", "B", "A", "C", "D"]  # C and D are not enrolled: non-mated
DIST = np.array(
    [
        [0.2, 0.5, 0.4],  # A: nearest g0 (A) at 0.2, correct
        [0.3, 0.6, 0.9],  # B: nearest g0 (A) at 0.3, wrong subject: never identified
        [0.7, 0.8, 0.5],  # A: nearest g2 (A) at 0.5, correct
        [0.4, 0.45, 0.9],  # C: best 0.4
        [0.9, 0.25, 0.6],  # D: best 0.25
    ]
)
# N_m = 3, N_nm = 2; identified mated probes at 0.2 and 0.5; non-mated best distances 0.25 and 0.4:
#   t      0.1   0.2   0.3   0.45  0.5
#   FPIR   0     0     1/2   1     1
#   FNIR   1     2/3   2/3   2/3   1/3


def test_hand_case_scores_and_rates():
    s = open_set_scores(DIST, PROBES, GALLERY)
    np.testing.assert_allclose(s.mated_hits, [0.2, 0.5])
    np.testing.assert_allclose(s.non_mated, [0.25, 0.4])
    assert s.num_mated == 3
    fpir, fnir = fpir_fnir(s, [0.1, 0.2, 0.3, 0.45, 0.5])
    np.testing.assert_allclose(fpir, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(fnir, [1, 2 / 3, 2 / 3, 2 / 3, 1 / 3])


def test_hand_case_curve_and_dir():
    c = open_set_curve(open_set_scores(torch.tensor(DIST), PROBES, GALLERY))
    np.testing.assert_array_equal(c["threshold"], [-np.inf, 0.2, 0.25, 0.4, 0.5])
    np.testing.assert_allclose(c["fpir"], [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(c["fnir"], [1, 2 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert c["fnir"].min() > 0  # DIR tops out at the closed-set rank-1 rate (2 / 3), not 1
    rows = dir_at_fpir(open_set_scores(DIST, PROBES, GALLERY), targets=(0.5, 0.1))
    # FPIR <= 1/2: one non-mated probe may be returned; the second is at 0.4 -> t = 0.25
    assert rows[0] == pytest.approx(
        {"fpir_target": 0.5, "dir": 1 / 3, "fpir": 0.5, "threshold": 0.25, "resolved": True, "num_non_mated": 2}
    )
    # FPIR 0.1 needs >= 10 non-mated probes
    assert rows[1]["resolved"] is False and math.isnan(rows[1]["dir"]) and math.isnan(rows[1]["threshold"])


def test_rank1_tie_goes_to_the_lower_gallery_index():
    # the wrong subject (g0) and the right one (g1) are equally near: the probe counts as misidentified
    s = open_set_scores(np.array([[0.3, 0.3], [0.1, 0.2]]), ["B", "X"], ["A", "B"])
    assert s.num_mated == 1 and s.mated_hits.size == 0
    assert dir_at_fpir(s, (1.0,))[0]["dir"] == 0.0
    s = open_set_scores(np.array([[0.3, 0.3], [0.1, 0.2]]), ["A", "X"], ["A", "B"])
    np.testing.assert_allclose(s.mated_hits, [0.3])


def test_ties_between_mated_and_non_mated():
    # a non-mated probe tied with the identified mated one at 0.5: FPIR <= 1/2 allows that one match
    s = OpenSetScores(np.array([0.5]), 1, np.array([0.5, 0.9]))
    row = dir_at_fpir(s, (0.5,))[0]
    assert row["dir"] == pytest.approx(1.0) and row["fpir"] == pytest.approx(0.5) and row["threshold"] == 0.5
    # both non-mated probes tied at 0.5: accepting 0.5 gives FPIR 1, so nothing can be returned
    s = OpenSetScores(np.array([0.5]), 1, np.array([0.5, 0.5]))
    row = dir_at_fpir(s, (0.5,))[0]
    assert row["dir"] == 0.0 and row["fpir"] == 0.0 and row["threshold"] == -np.inf


@pytest.mark.parametrize(
    "dist, probes, gallery, match",
    [
        (DIST, PROBES[:4], GALLERY, "probe_labels has 4 entries"),
        (DIST, PROBES, GALLERY[:2], "gallery_labels has 2 entries"),
        (DIST, ["A", "B", "A", "A", "B"], GALLERY, "no non-mated probe"),
        (DIST, ["X"] * 5, GALLERY, "no mated probe"),
        (np.where(DIST > 0.85, np.nan, DIST), PROBES, GALLERY, "NaN or infinite"),
    ],
)
def test_bad_input(dist, probes, gallery, match):
    with pytest.raises(ValueError, match=match):
        open_set_scores(dist, probes, gallery)


def test_bad_scores_object():
    with pytest.raises(TypeError, match="OpenSetScores"):
        dir_at_fpir((np.array([0.1]), 1, np.array([0.2])))
    with pytest.raises(ValueError, match="num_mated"):
        fpir_fnir(OpenSetScores(np.array([0.1, 0.2]), 1, np.array([0.3])), 0.5)
    with pytest.raises(ValueError, match="non_mated is empty"):
        open_set_curve(OpenSetScores(np.array([0.1]), 1, np.array([])))
    with pytest.raises(ValueError, match="targets"):
        dir_at_fpir(OpenSetScores(np.array([0.1]), 1, np.array([0.3])), (0.0,))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 8).map(lambda v: v / 2), max_size=12),
    st.integers(0, 5),
    st.lists(st.integers(0, 8).map(lambda v: v / 2), min_size=1, max_size=12),
    st.integers(1, 12),
)
def test_curve_and_dir_agree_with_brute_force(hits, misses, non_mated, j):
    s = OpenSetScores(np.sort(hits), len(hits) + misses or 1, np.sort(non_mated))
    ts = [-math.inf] + sorted(set(hits) | set(non_mated))
    fpir = [Fraction(sum(x <= t for x in non_mated), len(non_mated)) for t in ts]
    fnir = [1 - Fraction(sum(x <= t for x in hits), s.num_mated) for t in ts]
    ref = list(zip(ts, fpir, fnir))
    c = open_set_curve(s)
    np.testing.assert_array_equal(c["threshold"], [r[0] for r in ref])
    np.testing.assert_allclose(c["fpir"], [float(r[1]) for r in ref], atol=1e-12)
    np.testing.assert_allclose(c["fnir"], [float(r[2]) for r in ref], atol=1e-12)
    n = len(non_mated)
    target = min(j, n) / n
    row = dir_at_fpir(s, (target,))[0]
    t, f, m = max((r for r in ref if r[1] <= Fraction(min(j, n), n)), key=lambda r: (1 - r[2], r[0]))
    assert row["resolved"]
    assert (row["dir"], row["fpir"], row["threshold"]) == pytest.approx((float(1 - m), float(f), t))
    sc = sampled_open_set_curve(s, max_points=4)
    assert len(sc["fpir"]) <= 4 and set(sc["threshold"].tolist()) <= {r[0] for r in ref}


def test_from_a_closed_split():
    # every probe's subject is in the full gallery; leaving subjects out makes their probes non-mated
    rng = np.random.default_rng(0)
    subjects = [f"{i:03d}" for i in range(20)]
    gallery = [s for s in subjects for _ in range(2)]
    probes = [s for s in subjects for _ in range(3)]
    dist = rng.random((len(probes), len(gallery)))
    enrolled, left_out = split_subjects(gallery, left_out=0.25, seed=3)
    keep = np.array([g in enrolled for g in gallery])
    s = open_set_scores(dist[:, keep], probes, [g for g in gallery if g in enrolled])
    assert s.num_mated == 3 * 15 and s.non_mated.size == 3 * 5


# ---------------------------------------------------------------------------------------------------------
# split_subjects


def test_split_is_seeded_and_order_free():
    subjects = [f"s{i:02d}" for i in range(10)]
    enrolled, left = split_subjects(subjects, left_out=0.3, seed=7)
    assert len(left) == 3 and len(enrolled) == 7
    assert sorted(enrolled + left) == subjects and not set(enrolled) & set(left)
    assert enrolled == sorted(enrolled) and left == sorted(left)
    assert split_subjects(list(reversed(subjects)) + subjects, left_out=0.3, seed=7) == (enrolled, left)
    assert split_subjects(subjects, left_out=3, seed=7) == (enrolled, left)
    others = {tuple(split_subjects(subjects, 0.3, seed)[1]) for seed in range(8)}
    assert len(others) > 1  # the seed matters


def test_split_rounding_and_mixed_types():
    assert len(split_subjects(range(5), left_out=0.01)[1]) == 1  # at least one left out
    assert len(split_subjects(range(5), left_out=0.99)[0]) == 1  # at least one enrolled
    enrolled, left = split_subjects([1, "1", 2, "2"], left_out=2, seed=0)  # int and str: sorted by repr
    assert sorted(enrolled + left, key=repr) == sorted([1, "1", 2, "2"], key=repr)


@pytest.mark.parametrize(
    "subjects, left_out, match",
    [
        (["a"], 0.5, "at least 2 distinct subjects"),
        (["a", "a"], 1, "at least 2 distinct subjects"),
        (["a", "b"], 0.0, "fraction in"),
        (["a", "b"], 1.0, "fraction in"),
        (["a", "b"], 2, r"1\.\.1 of the 2"),
        (["a", "b"], 0, r"1\.\.1 of the 2"),
        (["a", "b"], True, "fraction in"),
        ("ab", 1, "not a single str"),
    ],
)
def test_split_bad_input(subjects, left_out, match):
    with pytest.raises(ValueError, match=match):
        split_subjects(subjects, left_out)
