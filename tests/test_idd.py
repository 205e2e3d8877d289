"""IDD (inter-class distance-guided distillation, issue 13): the teacher's neighbour distribution over the
retrieval distance, matched by KL; checked against a hand computation on a tiny case."""

from __future__ import annotations

import math

import pytest
import torch

from qgait.losses.idd import IDDTerm, idd_loss


def _emb(points):
    """``[n, 1, 1]`` embeddings from 1-d points (one part, one channel)."""
    return torch.tensor(points, dtype=torch.float64)[:, None, None]


def test_zero_when_equal_up_to_scale_positive_when_neighbours_change():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    assert idd_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-15)
    assert idd_loss(2.0 * t, t).item() == pytest.approx(0.0, abs=1e-15)  # the quantized 2x scale-up is free
    s = t[torch.tensor([1, 0, 2, 3, 5, 4])]  # swap who is near whom
    assert idd_loss(s, t).item() > 1e-3


def test_hand_computed_case():
    """Three points on a line; one part, so per_part makes no difference."""
    t, s, tau = _emb([0.0, 1.0, 3.0]), _emb([0.0, 2.0, 3.0]), 0.5

    def dists(x):
        d = [[abs(a - b) for b in x] for a in x]
        mu = sum(d[i][j] for i in range(3) for j in range(3) if i != j) / 6
        return [[v / mu for v in row] for row in d]

    def probs(d, i):
        z = [math.exp(-d[i][j] / tau) for j in range(3) if j != i]
        return [v / sum(z) for v in z]

    dt, ds = dists([0.0, 1.0, 3.0]), dists([0.0, 2.0, 3.0])
    kl = [sum(pt * math.log(pt / ps) for pt, ps in zip(probs(dt, i), probs(ds, i))) for i in range(3)]
    expected = tau**2 * sum(kl) / 3
    assert idd_loss(s, t, tau).item() == pytest.approx(expected, rel=1e-12)
    assert idd_loss(s, t, tau, per_part=True).item() == pytest.approx(expected, rel=1e-12)


def test_retrieval_distance_averages_the_parts():
    """Two parts that disagree cancel in the mean-over-parts distance but not per part."""
    t = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0]], dtype=torch.float64)[:, None, :]  # [3, 1, 2]
    s = t.flip(-1)  # parts swapped: each part's neighbours change, the summed distance does not
    assert idd_loss(s, t).item() == pytest.approx(0.0, abs=1e-15)
    assert idd_loss(s, t, per_part=True).item() > 1e-3


def test_gradient_only_to_the_student_and_validation():
    t = torch.randn(5, 3, 2, requires_grad=True)
    s = torch.randn(5, 3, 2, requires_grad=True)
    idd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        idd_loss(s, t[:4])
    with pytest.raises(ValueError):
        idd_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError):
        IDDTerm(temperature=-1.0)
    two = torch.randn(2, 3, 2, requires_grad=True)
    assert idd_loss(two, two.detach()).item() == 0.0
    term = IDDTerm(0.2)
    value, info = term({"embeddings": s, "fp_embeddings": t.detach()}, torch.arange(5))
    assert value.item() == pytest.approx(idd_loss(s, t, 0.2).item()) and info == {}
