"""retrieval_metrics / evaluate_retrieval: numbers derived by hand."""

import numpy as np
import pytest
import torch

from qgait.evaluation import evaluate_retrieval, retrieval_metrics
from qgait.evaluation import retrieval as retrieval_module

GALLERY = ["A", "B", "A", "C", "B"]
# Rows: probes. Sorted gallery order and the 1-based positions of the positives:
DIST = torch.tensor(
    [
        # probe "A": order g0(A) g1(B) g2(A) g3(C) g4(B); positives at 1, 3
        #   rank-1 hit; AP = (1/1 + 2/3) / 2 = 5/6; INP = 2/3
        [0.1, 0.2, 0.3, 0.4, 0.5],
        # probe "B": order g0(A) g2(A) g3(C) g4(B) g1(B); positives at 4, 5
        #   rank-1 miss, rank-5 hit; AP = (1/4 + 2/5) / 2 = 0.325; INP = 2/5
        [0.1, 0.5, 0.2, 0.3, 0.4],
        # probe "C": g3(C) first; single positive at 1: AP = 1, INP = 1
        [0.9, 0.8, 0.7, 0.1, 0.6],
        # probe "D": no "D" in the gallery -> skipped
        [0.5, 0.4, 0.3, 0.2, 0.1],
    ]
)
PROBES = ["A", "B", "C", "D"]


def test_hand_computed_example():
    r = retrieval_metrics(DIST, PROBES, GALLERY)
    assert r["num_probes"] == 3 and r["num_skipped"] == 1
    assert r["rank-1"] == pytest.approx(100 * 2 / 3)  # probes A and C
    assert r["rank-5"] == pytest.approx(100.0)
    assert r["rank-10"] == pytest.approx(100.0)  # above m = 5: same as rank-5
    assert r["mAP"] == pytest.approx(100 * (5 / 6 + 0.325 + 1) / 3)  # 71.944
    assert r["mINP"] == pytest.approx(100 * (2 / 3 + 2 / 5 + 1) / 3)  # 68.889
    assert set(r) == {"rank-1", "rank-5", "rank-10", "mAP", "mINP", "num_probes", "num_skipped"}


def test_custom_ranks_and_numpy_input():
    # probe B's first positive is at position 4: rank-3 misses it, rank-4 has it
    r = retrieval_metrics(DIST.numpy(), np.array(PROBES), tuple(GALLERY), ranks=(1, 3, 4))
    assert [k for k in r if k.startswith("rank-")] == ["rank-1", "rank-3", "rank-4"]
    assert r["rank-3"] == pytest.approx(100 * 2 / 3)
    assert r["rank-4"] == pytest.approx(100.0)


def test_integer_labels_as_tensor():
    r = retrieval_metrics(DIST, torch.tensor([0, 1, 2, 3]), [0, 1, 0, 2, 1])
    assert r["rank-1"] == pytest.approx(100 * 2 / 3)
    assert r["num_skipped"] == 1


def test_minp_can_exceed_map():
    # positives at positions 5 and 6: AP = (1/5 + 2/6) / 2 = 0.2667, INP = 2/6 = 0.3333
    dist = torch.arange(6.0)[None]
    r = retrieval_metrics(dist, ["x"], ["n", "n", "n", "n", "x", "x"])
    assert r["mAP"] == pytest.approx(100 * (1 / 5 + 2 / 6) / 2)
    assert r["mINP"] == pytest.approx(100 * 2 / 6)
    assert r["rank-1"] == 0.0 and r["rank-5"] == 100.0


def test_ties_keep_gallery_order():
    dist = torch.tensor([[0.1, 0.1]])
    r = retrieval_metrics(dist, ["y"], ["x", "y"], ranks=(1,))  # g0 "x" stays first: miss, AP = 1/2
    assert r["rank-1"] == 0.0 and r["mAP"] == pytest.approx(50.0)
    r = retrieval_metrics(dist, ["y"], ["y", "x"], ranks=(1,))
    assert r["rank-1"] == 100.0 and r["mAP"] == pytest.approx(100.0)


def test_infinite_distance_sorts_last():
    r = retrieval_metrics(torch.tensor([[float("inf"), 1.0]]), ["a"], ["a", "b"], ranks=(1,))
    assert r["rank-1"] == 0.0 and r["mAP"] == pytest.approx(50.0)


@pytest.mark.parametrize("chunk", [1, 2, 1024])
def test_evaluate_retrieval_from_embeddings(monkeypatch, chunk):
    monkeypatch.setattr(retrieval_module, "_CHUNK", chunk)
    # 1-channel, 2-part embeddings with both parts equal: the part distance is |a - b|
    gallery = torch.tensor([0.0, 10.0, 20.0])[:, None, None].expand(3, 1, 2)
    probe = torch.tensor([1.0, 12.0, 30.0, 5.0])[:, None, None].expand(4, 1, 2)
    # probe 0 (a, at 1): nearest 0 (a): hit, AP 1, INP 1
    # probe 1 (c, at 12): distances 12, 2, 8 -> order b, c, a: positive at 2: miss, AP 1/2, INP 1/2
    # probe 2 (c, at 30): distances 30, 20, 10 -> c first: hit, AP 1, INP 1
    # probe 3 (z): skipped
    r = evaluate_retrieval(probe, ["a", "c", "c", "z"], gallery, ["a", "b", "c"], ranks=(1, 2))
    assert r["metric"] == "euc"
    assert r["num_probes"] == 3 and r["num_skipped"] == 1
    assert r["rank-1"] == pytest.approx(100 * 2 / 3)
    assert r["rank-2"] == pytest.approx(100.0)
    assert r["mAP"] == pytest.approx(100 * 2.5 / 3)
    assert r["mINP"] == pytest.approx(100 * 2.5 / 3)


@pytest.mark.parametrize(
    "dist, probes, gallery, kwargs, match",
    [
        (torch.zeros(2, 0), ["a", "b"], [], {}, "gallery is empty"),
        (torch.zeros(0, 2), [], ["a", "b"], {}, "no probes"),
        (torch.zeros(2, 2), ["a"], ["a", "b"], {}, "probe_labels has 1"),
        (torch.zeros(2, 2), ["a", "b"], ["a"], {}, "gallery_labels has 1"),
        (torch.zeros(4), ["a"], ["a"], {}, r"\[n_probes, n_gallery\]"),
        (torch.tensor([[float("nan"), 0.0]]), ["a"], ["a", "b"], {}, "NaN"),
        (torch.zeros(1, 2), ["a"], ["a", "b"], {"ranks": ()}, "ranks"),
        (torch.zeros(1, 2), ["a"], ["a", "b"], {"ranks": (0, 1)}, "ranks"),
        (torch.zeros(1, 2), ["q"], ["a", "b"], {}, "no probe label occurs in the gallery"),
        (torch.zeros(1, 2), [1], ["1", "2"], {}, "same label type"),
        (torch.zeros(1, 2), "a", ["a", "b"], {}, "sequence of labels"),
    ],
)
def test_bad_input_raises_value_error(dist, probes, gallery, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(dist, probes, gallery, **kwargs)


def test_evaluate_retrieval_bad_input():
    emb = torch.zeros(2, 4, 2)
    with pytest.raises(ValueError, match="probe_labels has 1"):
        evaluate_retrieval(emb, ["a"], emb, ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_retrieval(torch.full((2, 4, 2), float("nan")), ["a", "b"], emb, ["a", "b"])
    with pytest.raises(ValueError, match=r"\[n, c, p\]"):
        evaluate_retrieval(torch.zeros(2, 8), ["a", "b"], emb, ["a", "b"])
    with pytest.raises(ValueError, match="gallery_emb is empty"):
        evaluate_retrieval(emb, ["a", "b"], torch.zeros(0, 4, 2), [])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_retrieval(emb, ["a", "b"], emb, ["a", "b"], metric="manhattan")
