"""IDC loss (qgait.losses.idc, methods.md 1.5)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgait.losses.idc import IDCLoss, idc_loss

FAST = settings(max_examples=25, deadline=None)


def _reference(eq, ef, labels, pairs="inter", normalize=True, loss="mse", delta=1.0):
    """Loop-by-loop transcription of methods.md 1.5 (float64)."""
    n, _, p = eq.shape
    total = 0.0
    for k in range(p):
        dq = [[float((eq[i, :, k] - eq[j, :, k]).norm()) for j in range(n)] for i in range(n)]
        df = [[float((ef[i, :, k] - ef[j, :, k]).norm()) for j in range(n)] for i in range(n)]
        mask = [[(i != j) and (pairs == "all" or labels[i] != labels[j]) for j in range(n)] for i in range(n)]
        cnt = sum(map(sum, mask))
        mq = sum(dq[i][j] for i in range(n) for j in range(n) if mask[i][j]) / cnt if normalize else 1.0
        mf = sum(df[i][j] for i in range(n) for j in range(n) if mask[i][j]) / cnt if normalize else 1.0
        s = 0.0
        for i in range(n):
            for j in range(n):
                if mask[i][j]:
                    a, b = dq[i][j] / mq, df[i][j] / mf
                    e = abs(a - b)
                    s += e * e if loss == "mse" else (0.5 * e * e if e < delta else delta * (e - 0.5 * delta))
        total += s / cnt
    return total / p


@pytest.mark.parametrize("pairs", ["inter", "all"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_matches_reference(pairs, normalize, loss):
    torch.manual_seed(0)
    eq, ef = torch.randn(7, 5, 3, dtype=torch.float64), torch.randn(7, 5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    got = idc_loss(eq, ef, labels, pairs, normalize, loss, huber_delta=0.3)
    assert got.item() == pytest.approx(_reference(eq, ef, labels.tolist(), pairs, normalize, loss, 0.3), rel=1e-9)


def test_zero_when_equal():
    torch.manual_seed(0)
    e = torch.randn(8, 16, 4)
    labels = torch.arange(8) // 2
    for pairs in ("inter", "all"):
        for normalize in (True, False):
            assert idc_loss(e.clone().requires_grad_(), e, labels, pairs, normalize).item() == 0.0


@FAST
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_scale_invariance_when_normalized(scale, seed):
    g = torch.Generator().manual_seed(seed)
    eq, ef = torch.randn(6, 4, 2, generator=g), torch.randn(6, 4, 2, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    base = idc_loss(eq, ef, labels)
    assert idc_loss(eq * scale, ef, labels).item() == pytest.approx(base.item(), rel=1e-4, abs=1e-6)
    raw = idc_loss(eq, ef, labels, normalize=False)
    if abs(scale - 1) > 0.1:
        assert idc_loss(eq * scale, ef, labels, normalize=False).item() != pytest.approx(raw.item(), rel=1e-3)


def test_ignores_same_label_pairs():
    """Class 1 on the axis e1 at +-1, class 0 on the circle of radius r in the (e2, e3) plane: every inter-class
    distance is sqrt(1 + r^2) whatever the angles, while the intra-class distance of class 0 changes."""

    def emb(theta):
        rows = [[0.0, 1.0, 0.0], [0.0, math.cos(theta), math.sin(theta)], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]
        return torch.tensor(rows, dtype=torch.float64)[:, :, None]  # [4, 3, 1]

    labels = torch.tensor([0, 0, 1, 1])
    torch.manual_seed(0)
    ef = torch.randn(4, 3, 1, dtype=torch.float64)
    l1 = idc_loss(emb(0.3), ef, labels)
    l2 = idc_loss(emb(2.5), ef, labels)
    assert l1.item() == pytest.approx(l2.item(), rel=1e-12)
    a1 = idc_loss(emb(0.3), ef, labels, pairs="all")
    a2 = idc_loss(emb(2.5), ef, labels, pairs="all")
    assert a1.item() != pytest.approx(a2.item(), rel=1e-3)


@pytest.mark.parametrize("normalize", [True, False])
def test_finite_gradients_with_duplicates_and_zeros(normalize):
    labels = torch.tensor([0, 1, 2, 3])
    dup = torch.randn(1, 5, 3).repeat(4, 1, 1)
    for eq in (dup.clone(), torch.zeros(4, 5, 3), torch.cat([dup[:2], torch.randn(2, 5, 3)])):
        eq.requires_grad_()
        for loss in ("mse", "huber"):
            val = idc_loss(eq, torch.randn(4, 5, 3), labels, normalize=normalize, loss=loss)
            val.backward()
            assert torch.isfinite(val) and torch.isfinite(eq.grad).all()
            eq.grad = None


def test_no_inter_class_pairs_returns_zero_with_grad():
    eq = torch.randn(4, 5, 2, requires_grad=True)
    val = idc_loss(eq, torch.randn(4, 5, 2), torch.zeros(4, dtype=torch.long))
    assert val.item() == 0.0 and val.requires_grad
    val.backward()
    assert torch.equal(eq.grad, torch.zeros_like(eq))
    one = torch.randn(1, 5, 2, requires_grad=True)
    assert idc_loss(one, one.detach(), torch.tensor([3]), pairs="all").item() == 0.0


def test_no_gradient_to_fp_side():
    eq = torch.randn(4, 5, 2, requires_grad=True)
    ef = torch.randn(4, 5, 2, requires_grad=True)
    idc_loss(eq, ef, torch.tensor([0, 0, 1, 1])).backward()
    assert ef.grad is None and eq.grad is not None and eq.grad.abs().sum() > 0


def test_module_and_validation():
    eq, ef = torch.randn(4, 5, 2), torch.randn(4, 5, 2)
    labels = torch.tensor([0, 0, 1, 1])
    m = IDCLoss(pairs="all", normalize=False, loss="huber", huber_delta=0.5, weight=2.5)
    assert m(eq, ef, labels).item() == pytest.approx(2.5 * idc_loss(eq, ef, labels, "all", False, "huber", 0.5).item())
    assert "weight=2.5" in repr(m)
    with pytest.raises(ValueError):
        idc_loss(eq, ef[:3], labels)
    with pytest.raises(ValueError):
        idc_loss(eq, ef, labels[:3])
    with pytest.raises(ValueError):
        idc_loss(eq, ef, labels, pairs="intra")
    with pytest.raises(ValueError):
        IDCLoss(loss="l1")
    with pytest.raises(ValueError):
        IDCLoss(weight=-1.0)
