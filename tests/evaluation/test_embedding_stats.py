"""qgait.evaluation.embedding_stats: per-part norms / class distances and their quantized / FP drift."""

import importlib
import json
import math

import numpy as np
import pytest
import torch

from qgait.evaluation import embedding_drift, embedding_stats

# the package attribute ``qgait.evaluation.embedding_stats`` is the function (exported under the module's
# name), so the module itself is taken from importlib
es_module = importlib.import_module("qgait.evaluation.embedding_stats")


def random_embeddings(n_subjects=10, per_subject=20, c=8, p=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_subjects, c, p, generator=g)
    emb = centres.repeat_interleave(per_subject, 0) + 0.5 * torch.randn(n_subjects * per_subject, c, p, generator=g)
    labels = [f"s{i}" for i in range(n_subjects) for _ in range(per_subject)]
    perm = torch.randperm(len(labels), generator=g)  # labels not grouped in the input
    return emb[perm], [labels[i] for i in perm.tolist()]


def brute_force(emb, labels):
    x = emb.double()
    inter, intra = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            d = (x[i] - x[j]).norm(dim=0)
            (inter if labels[i] != labels[j] else intra).append(d)
    return torch.stack(inter).mean(0).tolist(), torch.stack(intra).mean(0).tolist()


def test_tiny_case_by_hand():
    # emb[n, :, k]: sequence n, part k (2 channels, 2 parts)
    emb = torch.tensor([
        [[3.0, 0.0], [4.0, 0.0]],  # part 0 = (3, 4), part 1 = (0, 0)
        [[0.0, 1.0], [0.0, 0.0]],  # part 0 = (0, 0), part 1 = (1, 0)
        [[3.0, 0.0], [0.0, 2.0]],  # part 0 = (3, 0), part 1 = (0, 2)
    ])
    s = embedding_stats(emb, ["a", "a", "b"])
    assert s["n"] == 3 and s["n_parts"] == 2
    assert s["part_norm"] == pytest.approx([(5 + 0 + 3) / 3, (0 + 1 + 2) / 3])
    # same label: (0, 1) only (never i == j): part 0 |(3, 4)| = 5, part 1 |(-1, 0)| = 1
    assert s["intraclass_distance"] == pytest.approx([5.0, 1.0])
    # different labels: (0, 2): |(0, 4)| = 4, |(0, -2)| = 2; (1, 2): |(-3, 0)| = 3, |(1, -2)| = sqrt 5
    assert s["interclass_distance"] == pytest.approx([3.5, (2 + math.sqrt(5)) / 2])
    assert (s["n_interclass_pairs"], s["interclass_pairs_total"]) == (2, 2)
    assert (s["n_intraclass_pairs"], s["intraclass_pairs_total"]) == (1, 1)
    json.dumps(s)


def test_exact_matches_brute_force_and_numpy_input():
    emb, labels = random_embeddings(n_subjects=5, per_subject=6, seed=1)
    inter, intra = brute_force(emb, labels)
    s = embedding_stats(emb.numpy(), np.array([int(x[1:]) for x in labels]))
    assert s["interclass_distance"] == pytest.approx(inter, rel=1e-12)
    assert s["intraclass_distance"] == pytest.approx(intra, rel=1e-12)
    assert s["interclass_pairs_total"] == 30 * 29 // 2 - 5 * 15 and s["intraclass_pairs_total"] == 5 * 15


def test_distances_are_exact_not_through_the_gram_expansion():
    # a large common offset with tiny differences: ||a||^2 + ||b||^2 - 2 a.b would lose the differences
    emb = torch.full((4, 3, 2), 1e4, dtype=torch.float64)
    emb[1, 0, :] += 1e-3
    emb[2, 1, :] += 2e-3
    emb[3, 2, :] += 3e-3
    s = embedding_stats(emb, [0, 0, 1, 1])
    # same label: (0, 1) differ by 1e-3 in channel 0; (2, 3) by 2e-3 / 3e-3 in channels 1 / 2
    assert s["intraclass_distance"] == pytest.approx([(1e-3 + math.sqrt(13) * 1e-3) / 2] * 2, rel=1e-9)
    want_inter = (2e-3 + 3e-3 + math.sqrt(5) * 1e-3 + math.sqrt(10) * 1e-3) / 4
    assert s["interclass_distance"] == pytest.approx([want_inter] * 2, rel=1e-9)


def test_subsample_is_close_to_exact_and_seeded():
    emb, labels = random_embeddings(n_subjects=10, per_subject=20, seed=2)  # 18000 inter, 1900 intra pairs
    exact = embedding_stats(emb, labels)
    assert exact["n_interclass_pairs"] == exact["interclass_pairs_total"] == 18000
    sub = embedding_stats(emb, labels, max_pairs=3000, seed=5)
    assert sub["n_interclass_pairs"] == 3000 and sub["interclass_pairs_total"] == 18000
    assert sub["n_intraclass_pairs"] == 1900  # fewer than max_pairs: all of them
    assert sub["intraclass_distance"] == pytest.approx(exact["intraclass_distance"], rel=1e-12)
    assert sub["interclass_distance"] == pytest.approx(exact["interclass_distance"], rel=0.02)
    assert sub["part_norm"] == exact["part_norm"]
    assert embedding_stats(emb, labels, max_pairs=3000, seed=5) == sub
    assert embedding_stats(emb, labels, max_pairs=3000, seed=6)["interclass_distance"] != sub["interclass_distance"]
    small = embedding_stats(emb, labels, max_pairs=500, seed=0)
    assert small["n_intraclass_pairs"] == 500
    assert small["intraclass_distance"] == pytest.approx(exact["intraclass_distance"], rel=0.05)


def test_pair_sampling_is_without_replacement_and_of_the_right_kind():
    codes = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0, 1])
    order, class_end = es_module._sorted_classes(codes)
    n = codes.size
    sorted_codes = codes[order]
    for lo, hi, same in ((class_end, np.full(n, n), False), (np.arange(1, n + 1), class_end, True)):
        rows, cols, total = es_module._select_pairs(lo, hi, 10**9, np.random.default_rng(0))
        pairs = set(zip(rows.tolist(), cols.tolist()))
        want = {(i, j) for i in range(n) for j in range(i + 1, n) if (sorted_codes[i] == sorted_codes[j]) == same}
        assert pairs == want and total == len(want) and len(pairs) == rows.size
        rows, cols, _ = es_module._select_pairs(lo, hi, 7, np.random.default_rng(0))
        sub = list(zip(rows.tolist(), cols.tolist()))
        assert len(sub) == 7 and len(set(sub)) == 7 and set(sub) <= want


def test_no_pairs_of_a_kind_and_errors():
    emb = torch.randn(3, 4, 2)
    s = embedding_stats(emb, ["a", "a", "a"])
    assert s["interclass_distance"] is None and s["n_interclass_pairs"] == 0
    s = embedding_stats(emb, ["a", "b", "c"])
    assert s["intraclass_distance"] is None and s["intraclass_pairs_total"] == 0
    with pytest.raises(ValueError, match="labels"):
        embedding_stats(emb, ["a", "b"])
    with pytest.raises(ValueError, match="max_pairs"):
        embedding_stats(emb, ["a", "b", "c"], max_pairs=0)
    with pytest.raises(ValueError):
        embedding_stats(torch.randn(3, 4), ["a", "b", "c"])
    with pytest.raises(TypeError):
        embedding_stats([[[1.0]]], ["a"])


# --- drift ------------------------------------------------------------------------------------------------


def test_uniform_scale_gives_equal_ratios():
    emb, labels = random_embeddings(seed=3)
    fp = embedding_stats(emb, labels)
    q = embedding_stats(2.0 * emb, labels)
    d = embedding_drift(q, fp)
    assert d["n_parts"] == 4
    for key in ("part_norm_ratio", "interclass_ratio"):
        assert d[key] == pytest.approx([2.0] * 4)
        st = d[f"{key}_stats"]
        assert st["mean"] == pytest.approx(2.0) and st["min"] == pytest.approx(2.0) and st["max"] == pytest.approx(2.0)
        assert st["spread"] == pytest.approx(1.0) and st["cv"] == pytest.approx(0.0, abs=1e-12) and st["n"] == 4
    # intra / inter is scale-free: the same for both models
    assert d["intra_inter_ratio"]["quantized"] == pytest.approx(d["intra_inter_ratio"]["fp"])
    assert all(0 < r < 1 for r in d["intra_inter_ratio"]["fp"])  # same-subject pairs are closer
    json.dumps(d)


def test_one_scaled_part_shows_in_the_spread():
    emb, labels = random_embeddings(seed=4)
    fp = embedding_stats(emb, labels)
    scaled = emb.clone()
    scaled[:, :, 2] *= 3.0
    d = embedding_drift(embedding_stats(scaled, labels), fp)
    for key in ("part_norm_ratio", "interclass_ratio"):
        assert d[key] == pytest.approx([1.0, 1.0, 3.0, 1.0])
        st = d[f"{key}_stats"]
        assert st["spread"] == pytest.approx(3.0)
        assert st["min"] == pytest.approx(1.0) and st["max"] == pytest.approx(3.0)
        assert st["mean"] == pytest.approx(1.5) and st["cv"] == pytest.approx(math.sqrt(0.75) / 1.5)


def test_drift_undefined_ratios_and_errors():
    emb, labels = random_embeddings(p=2, seed=5)
    fp = embedding_stats(emb, labels)
    dead = emb.clone()
    dead[:, :, 1] = 0.0
    d = embedding_drift(fp, embedding_stats(dead, labels))  # "FP" part 1 all zero: ratio undefined
    assert d["part_norm_ratio"][0] == pytest.approx(1.0) and d["part_norm_ratio"][1] is None
    assert d["part_norm_ratio_stats"]["n"] == 1 and d["part_norm_ratio_stats"]["spread"] == pytest.approx(1.0)
    assert embedding_drift(embedding_stats(dead, labels), fp)["part_norm_ratio_stats"]["spread"] is None  # min 0
    with pytest.raises(ValueError, match="part counts"):
        embedding_drift(embedding_stats(torch.randn(4, 3, 3), labels[:4]), fp)
    with pytest.raises(ValueError, match="embedding_stats"):
        embedding_drift({"n": 3}, fp)
