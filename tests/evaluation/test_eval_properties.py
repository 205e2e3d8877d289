"""Property tests (hypothesis) of the retrieval metrics and the cross-view protocol."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgait.evaluation import CrossViewProtocol, evaluate_cross_view, evaluate_retrieval, retrieval_metrics

SETTINGS = settings(max_examples=40, deadline=None)


def reference(dist, probes, gallery, ranks):
    """Straightforward per-probe loop (a second, independent formulation)."""
    cmc = {k: [] for k in ranks}
    aps, inps = [], []
    for i, label in enumerate(probes):
        order = sorted(range(len(gallery)), key=lambda j: (dist[i][j], j))
        positions = [pos for pos, j in enumerate(order, start=1) if gallery[j] == label]
        if not positions:
            continue
        for k in ranks:
            cmc[k].append(positions[0] <= k)
        aps.append(sum((i + 1) / r for i, r in enumerate(positions)) / len(positions))
        inps.append(len(positions) / positions[-1])
    n = len(aps)
    out = {f"rank-{k}": 100 * sum(v) / n for k, v in cmc.items()}
    out.update({"mAP": 100 * sum(aps) / n, "mINP": 100 * sum(inps) / n})
    return out


@st.composite
def retrieval_case(draw):
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 8))
    labels = st.integers(0, 3)
    gallery = draw(st.lists(labels, min_size=m, max_size=m))
    probes = draw(st.lists(labels, min_size=n, max_size=n))
    probes[0] = gallery[0]  # at least one probe has a match
    dist = draw(st.lists(st.lists(st.integers(0, 4), min_size=m, max_size=m), min_size=n, max_size=n))  # many ties
    return dist, probes, gallery


@SETTINGS
@given(retrieval_case())
def test_retrieval_bounds_and_reference(case):
    dist, probes, gallery = case
    r = retrieval_metrics(torch.tensor(dist, dtype=torch.float32), probes, gallery)
    assert 0.0 <= r["rank-1"] <= r["rank-5"] <= r["rank-10"] <= 100.0
    assert 0.0 < r["mAP"] <= 100.0 and 0.0 < r["mINP"] <= 100.0
    assert r["num_probes"] + r["num_skipped"] == len(probes)
    assert r["num_skipped"] == sum(p not in gallery for p in probes)
    ref = reference(dist, probes, gallery, (1, 5, 10))
    for key, value in ref.items():
        assert r[key] == pytest.approx(value)
    # all positives ranked first <=> AP = 1 <=> INP = 1
    assert (r["mAP"] == pytest.approx(100.0)) == (r["mINP"] == pytest.approx(100.0))


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 6), st.lists(st.integers(0, 1000), min_size=6, max_size=6))
def test_single_positive_gives_map_equal_minp(n_probes, m, distances):
    # one positive per probe: AP = INP = 1 / position
    gallery = list(range(m))
    probes = [i % m for i in range(n_probes)]
    dist = torch.tensor([[float(distances[(i + j) % 6]) for j in range(m)] for i in range(n_probes)])
    r = retrieval_metrics(dist, probes, gallery)
    assert r["mAP"] == pytest.approx(r["mINP"])


@SETTINGS
@given(
    per_subject=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 3)), min_size=2, max_size=6),
    extra_unknown=st.booleans(),
    parts=st.integers(1, 3),
)
def test_perfect_embeddings_give_100(per_subject, extra_unknown, parts):
    n_subjects = len(per_subject)
    dim = n_subjects + 1
    centre = torch.eye(dim)[:, :, None].expand(dim, dim, parts) * 10.0  # well separated: 10 * sqrt(2) apart
    g_emb, g_lab, p_emb, p_lab = [], [], [], []
    for s, (n_gallery, n_probe) in enumerate(per_subject):
        g_emb += [centre[s]] * n_gallery
        g_lab += [f"s{s}"] * n_gallery
        p_emb += [centre[s]] * n_probe
        p_lab += [f"s{s}"] * n_probe
    if not p_emb:
        p_emb, p_lab = [centre[0]], ["s0"]
    if extra_unknown:
        p_emb.append(centre[-1])
        p_lab.append("unknown")
    r = evaluate_retrieval(torch.stack(p_emb), p_lab, torch.stack(g_emb), g_lab)
    assert r["rank-1"] == 100.0 and r["mAP"] == pytest.approx(100.0) and r["mINP"] == pytest.approx(100.0)
    assert r["num_skipped"] == int(extra_unknown)


@SETTINGS
@given(
    n_subjects=st.integers(2, 5),
    views=st.lists(st.sampled_from(["000", "045", "090", "135"]), min_size=2, max_size=4, unique=True),
    metric=st.sampled_from(["euc", "cos"]),
)
def test_cross_view_perfect_embeddings_give_100(n_subjects, views, metric):
    protocol = CrossViewProtocol("toy", ("nm-01", "nm-02"), {"NM": ("nm-05",), "BG": ("bg-01",)}, tuple(views))
    emb, subj, cond, view = [], [], [], []
    for s in range(n_subjects):
        e = torch.zeros(n_subjects, 2)
        e[s] = 5.0
        for c in ("nm-01", "nm-02", "nm-05", "bg-01"):
            for v in views:
                emb.append(e)
                subj.append(s)
                cond.append(c)
                view.append(v)
    r = evaluate_cross_view(torch.stack(emb), subj, cond, view, protocol=protocol, metric=metric)
    assert r["mean"] == 100.0
    for res in r["sets"].values():
        assert res["rank-1"] == 100.0
        assert all(v == 100.0 for row in res["table"] for v in row)
