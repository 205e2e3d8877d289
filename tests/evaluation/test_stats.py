"""qgait.evaluation.stats: rank-1 from per-subject counts, paired subject bootstrap, seed statistics."""

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy import stats as sps

from qgait.evaluation import (
    CrossViewProtocol,
    evaluate_cross_view,
    paired_difference,
    rank1_from_per_subject,
    seed_stats,
    subject_bootstrap,
)
from qgait.evaluation import stats as stats_module

VIEWS = ("000", "045", "090", "135")
RAND = CrossViewProtocol(
    "rand", ("nm-01", "nm-02"), {"NM": ("nm-05", "nm-06"), "BG": ("bg-01",), "CL": ("cl-01", "cl-02")}, VIEWS
)
RAND_DIAG = CrossViewProtocol("rand-diag", RAND.gallery_conditions, RAND.probe_sets, VIEWS, False)
CONDS = ("nm-01", "nm-02", "nm-05", "nm-06", "bg-01", "cl-01", "cl-02")


def random_data(seed, n_subjects=7, drop_gallery_views=(), drop_set_views=(), missing=0.15, noise=1.5):
    """Every subject has a random centre; each sequence is the centre plus noise (so some matches fail).
    A random ``missing`` fraction of (subject, condition, view) sequences is absent; ``drop_gallery_views``
    removes whole gallery views, ``drop_set_views`` ``(condition, view)`` probe cells."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    centres = torch.randn(n_subjects, 6, 3, generator=g)
    rows = []
    for s in range(n_subjects):
        for c in CONDS:
            for v in VIEWS:
                if rng.random() < missing or (c in RAND.gallery_conditions and v in drop_gallery_views):
                    continue
                if (c, v) in drop_set_views:
                    continue
                rows.append((centres[s] + noise * torch.randn(6, 3, generator=g), f"s{s:02d}", c, v))
    emb, subj, cond, view = zip(*rows)
    return torch.stack(emb), list(subj), list(cond), list(view)


def headline(result):
    return {name: res["rank-1"] for name, res in result["sets"].items()} | {"mean": result["mean"]}


def assert_same(got, want, tol=1e-9):
    assert list(got) == list(want)
    for k in want:
        if want[k] is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(want[k], abs=tol, rel=0), k


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("protocol", [RAND, RAND_DIAG])
def test_unit_weights_reproduce_evaluate_cross_view(seed, protocol):
    variants = [
        {},
        {"drop_gallery_views": {"090"}},  # a skipped column
        {"drop_set_views": {("bg-01", v) for v in VIEWS[1:]}},  # BG probes only at 000
        {"drop_gallery_views": set(VIEWS[1:]), "drop_set_views": {("bg-01", v) for v in VIEWS[1:]}},  # BG: diagonal
        {"drop_set_views": {("bg-01", v) for v in VIEWS}},  # no BG probes at all: BG is None
    ]
    for kw in variants:
        r = evaluate_cross_view(*random_data(seed, **kw), protocol=protocol)
        want = headline(r)
        assert_same(rank1_from_per_subject(r), want)
        assert_same(rank1_from_per_subject(r["per_subject"], weights=None), want)
        assert_same(rank1_from_per_subject(json.loads(json.dumps(r["per_subject"]))), want)
        assert 0.0 < r["mean"] < 100.0  # the noise makes some matches fail: a non-trivial check


def test_some_sets_are_none_or_diagonal_only():
    # gallery and BG probes only at view 000: BG has only the diagonal pair
    kw = {"drop_gallery_views": set(VIEWS[1:]), "drop_set_views": {("bg-01", v) for v in VIEWS[1:]}}
    r = evaluate_cross_view(*random_data(0, **kw), protocol=RAND)
    assert r["sets"]["BG"]["rank-1"] is None and r["sets_in_mean"] == ["NM", "CL"]  # the diagonal is excluded
    assert rank1_from_per_subject(r)["BG"] is None
    assert rank1_from_per_subject(r)["mean"] == pytest.approx(r["mean"], abs=1e-9)
    r = evaluate_cross_view(*random_data(0, **kw), protocol=RAND_DIAG)
    assert r["sets"]["BG"]["rank-1"] is not None
    assert rank1_from_per_subject(r)["BG"] == pytest.approx(r["sets"]["BG"]["rank-1"], abs=1e-9)
    r = evaluate_cross_view(*random_data(0, drop_set_views={("bg-01", v) for v in VIEWS}), protocol=RAND)
    assert r["sets"]["BG"]["rank-1"] is None and rank1_from_per_subject(r)["BG"] is None


@pytest.mark.parametrize("seed", range(4))
def test_integer_weights_equal_duplicated_probe_subjects(seed):
    """Weight w_i = the probe sequences of subject i repeated w_i times (0 = removed), gallery unchanged."""
    emb, subj, cond, view = random_data(seed, n_subjects=6)
    base = evaluate_cross_view(emb, subj, cond, view, protocol=RAND)
    subjects = base["per_subject"]["subjects"]
    rng = np.random.default_rng(100 + seed)
    w = rng.multinomial(len(subjects), np.full(len(subjects), 1 / len(subjects)))
    keep = []
    for i in range(len(subj)):
        is_gallery = cond[i] in RAND.gallery_conditions
        keep += [i] * (1 if is_gallery else int(w[subjects.index(subj[i])]))
    resampled = evaluate_cross_view(
        emb[keep], [subj[i] for i in keep], [cond[i] for i in keep], [view[i] for i in keep], protocol=RAND
    )
    assert_same(rank1_from_per_subject(base, weights=w), headline(resampled))


def test_weight_validation():
    r = evaluate_cross_view(*random_data(0), protocol=RAND)
    n = len(r["per_subject"]["subjects"])
    with pytest.raises(ValueError, match="shape"):
        rank1_from_per_subject(r, weights=np.ones(n + 1))
    with pytest.raises(ValueError, match="non-negative"):
        rank1_from_per_subject(r, weights=-np.ones(n))
    with pytest.raises(ValueError, match="per-subject"):
        rank1_from_per_subject({"sets": {}, "mean": 1.0})
    bad = json.loads(json.dumps(r["per_subject"]))
    bad["sets"]["NM"]["hits"][0][0][1] = bad["sets"]["NM"]["probes"][0][0][1] + 1
    with pytest.raises(ValueError, match="more hits"):
        rank1_from_per_subject(bad)


# --- subject bootstrap ------------------------------------------------------------------------------------


def runs(model_seeds, data_seed=0, noise=1.5):
    """Several 'models' on the same test data: the same sequences, each model's embeddings perturbed."""
    emb, subj, cond, view = random_data(data_seed, n_subjects=8, noise=noise)
    out = []
    for s in model_seeds:
        g = torch.Generator().manual_seed(1000 + s)
        noisy = emb + 0.8 * torch.randn(emb.shape, generator=g)
        out.append(evaluate_cross_view(noisy, subj, cond, view, protocol=RAND))
    return out


def test_bootstrap_of_identical_runs_is_zero():
    a = runs([1, 2])
    res = subject_bootstrap(a, a, n_boot=200)
    assert list(res) == ["mean", "NM", "BG", "CL"]
    for entry in res.values():
        assert entry["diff"] == 0.0 and entry["ci_low"] == 0.0 and entry["ci_high"] == 0.0
        assert entry["n_boot"] == 200 and entry["level"] == 0.95 and entry["n_valid"] == 200


def test_bootstrap_point_estimate_and_draws_match_a_loop():
    a, b = runs([1, 2, 3]), runs([4, 5])
    res = subject_bootstrap(a, b, n_boot=300, seed=7, level=0.9)
    for key in ("mean", "NM", "BG", "CL"):
        get = (lambda r: r["mean"]) if key == "mean" else (lambda r: r["sets"][key]["rank-1"])
        want = np.mean([get(r) for r in b]) - np.mean([get(r) for r in a])
        assert res[key]["diff"] == pytest.approx(want, abs=1e-9)
        assert res[key]["ci_low"] <= res[key]["ci_high"]
    # the vectorised draws = the protocol recomputed draw by draw, with the same weights for every run
    point_a, point_b, boot_a, boot_b, w = stats_module._bootstrap_draws(a, b, 300, 7)
    assert w.shape == (300, 8) and (w.sum(1) == 8).all()
    for k in (0, 1, 17, 299):
        ra = [rank1_from_per_subject(r, w[k]) for r in a]
        rb = [rank1_from_per_subject(r, w[k]) for r in b]
        for key in ("mean", "NM", "BG", "CL"):
            assert boot_a[key][k] == pytest.approx(np.mean([x[key] for x in ra]), abs=1e-9)
            assert boot_b[key][k] == pytest.approx(np.mean([x[key] for x in rb]), abs=1e-9)
    d = boot_b["mean"] - boot_a["mean"]
    assert res["mean"]["ci_low"] == pytest.approx(np.percentile(d, 5.0))
    assert res["mean"]["ci_high"] == pytest.approx(np.percentile(d, 95.0))
    assert res["mean"]["boot_se"] == pytest.approx(d.std(ddof=1))


def test_bootstrap_is_seeded_and_level_widens_the_interval():
    a, b = runs([1, 2]), runs([3, 4])
    r1 = subject_bootstrap(a, b, n_boot=400, seed=3)
    assert subject_bootstrap(a, b, n_boot=400, seed=3) == r1
    assert subject_bootstrap(a, b, n_boot=400, seed=4)["mean"]["ci_low"] != r1["mean"]["ci_low"]
    wide = subject_bootstrap(a, b, n_boot=400, seed=3, level=0.99)["mean"]
    narrow = subject_bootstrap(a, b, n_boot=400, seed=3, level=0.5)["mean"]
    assert wide["ci_low"] <= narrow["ci_low"] <= narrow["ci_high"] <= wide["ci_high"]
    # per_subject entries and JSON round trips are accepted
    ps = [json.loads(json.dumps(r["per_subject"])) for r in a]
    assert subject_bootstrap(ps, b, n_boot=400, seed=3) == r1


def test_bootstrap_detects_a_real_difference():
    good = runs([1, 2], noise=0.3)
    # model b clearly worse: the same test data, its embeddings much noisier
    emb, subj, cond, view = random_data(0, n_subjects=8, noise=0.3)
    bad = [evaluate_cross_view(emb + 3.0 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(s)),
                               subj, cond, view, protocol=RAND) for s in (5, 6)]
    res = subject_bootstrap(good, bad, n_boot=500)
    assert res["mean"]["diff"] < 0 and res["mean"]["ci_high"] < 0


def test_bootstrap_errors():
    a = runs([1])
    other = evaluate_cross_view(*random_data(1, n_subjects=5), protocol=RAND)
    with pytest.raises(ValueError, match="probe-subject list"):
        subject_bootstrap(a, [other])
    with pytest.raises(ValueError, match="empty"):
        subject_bootstrap([], a)
    with pytest.raises(ValueError, match="n_boot"):
        subject_bootstrap(a, a, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        subject_bootstrap(a, a, level=1.0)
    with pytest.raises(ValueError, match="per-subject"):
        subject_bootstrap([{"sets": {}, "mean": 1.0}], a)
    with pytest.raises(ValueError, match="lists"):
        subject_bootstrap(a[0], a)
    diag = evaluate_cross_view(*random_data(0, n_subjects=8), protocol=RAND_DIAG)
    with pytest.raises(ValueError, match="protocol"):
        subject_bootstrap(a, [diag])


def test_bootstrap_speed_casia_b_size():
    """2000 draws x 6 runs at CASIA-B size (50 subjects, 11 views, 3 sets)."""
    rng = np.random.default_rng(0)
    views = [f"{v:03d}" for v in range(0, 181, 18)]

    def fake_run():
        sets = {}
        for name in ("NM", "BG", "CL"):
            probes = np.full((50, 11, 11), 2)
            sets[name] = {"hits": rng.binomial(probes, 0.8).tolist(), "probes": probes.tolist()}
        return {"subjects": [f"{i:03d}" for i in range(75, 125)], "views": views, "exclude_identical_view": True,
                "sets": sets}

    a, b = [fake_run() for _ in range(3)], [fake_run() for _ in range(3)]
    start = time.perf_counter()
    res = subject_bootstrap(a, b, n_boot=2000)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, elapsed  # typically ~0.1 s
    assert res["mean"]["ci_low"] <= res["mean"]["diff"] <= res["mean"]["ci_high"]


# --- seeds ------------------------------------------------------------------------------------------------


def test_seed_stats():
    s = seed_stats([70.0, 72.0, 74.0])
    assert s == {"mean": 72.0, "std": 2.0, "n": 3, "min": 70.0, "max": 74.0}
    assert seed_stats([71.5]) == {"mean": 71.5, "std": None, "n": 1, "min": 71.5, "max": 71.5}
    assert seed_stats(np.array([1, 2]))["std"] == pytest.approx(math.sqrt(0.5))
    for bad in ([], [1.0, float("nan")], "12"):
        with pytest.raises(ValueError):
            seed_stats(bad)


def test_paired_difference_by_hand():
    r = paired_difference([70.0, 71.0, 72.0], [71.0, 73.0, 72.0])  # d = 1, 2, 0
    t = sps.t.ppf(0.975, 2)  # 4.3027
    assert r["n"] == 3 and r["mean"] == pytest.approx(1.0) and r["std"] == pytest.approx(1.0)
    assert r["se"] == pytest.approx(1 / math.sqrt(3))
    assert r["ci_low"] == pytest.approx(1 - t / math.sqrt(3)) and r["ci_high"] == pytest.approx(1 + t / math.sqrt(3))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(sps.t.interval(0.95, 2, loc=1.0, scale=1 / math.sqrt(3)))
    assert r["beyond_2se"] is False  # 1 < 2 * 0.577
    r = paired_difference([70.0, 71.0, 72.0], [71.0, 72.1, 72.9], level=0.9)  # d = 1, 1.1, 0.9
    assert r["beyond_2se"] is True and r["level"] == 0.9
    assert r["ci_high"] - r["mean"] == pytest.approx(sps.t.ppf(0.95, 2) * 0.1 / math.sqrt(3))


def test_paired_difference_edge_cases():
    r = paired_difference([70.0], [72.0])
    assert r["mean"] == 2.0 and r["se"] is None and r["std"] is None and r["ci_low"] is None
    assert r["beyond_2se"] is False and r["n"] == 1
    r = paired_difference([1.0, 2.0], [2.0, 3.0])  # identical differences: se 0
    assert r["se"] == 0.0 and r["ci_low"] == r["ci_high"] == 1.0 and r["beyond_2se"] is True
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="level"):
        paired_difference([1.0], [2.0], level=0)
