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


# ------------------------------------------------------------------ issue 13: normalisation variants
@pytest.mark.parametrize("pairs", ["inter", "all"])
def test_uniform_scale_up_costs_nothing_normalised_and_something_raw(pairs):
    """The quantized embeddings as the FP ones scaled up 2x (what LSQ W3A3 does, almost uniformly across parts):
    zero loss with per-part or global normalisation, a positive loss on raw distances."""
    g = torch.Generator().manual_seed(3)
    ef = torch.randn(8, 5, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    eq = 2.0 * ef
    assert idc_loss(eq, ef, labels, pairs, "part").item() == pytest.approx(0.0, abs=1e-20)
    assert idc_loss(eq, ef, labels, pairs, "global").item() == pytest.approx(0.0, abs=1e-20)
    raw = idc_loss(eq, ef, labels, pairs, "none").item()
    assert raw > 0.1
    assert raw == pytest.approx(idc_loss(eq, ef, labels, pairs, False).item())


def test_per_part_drift_counts_only_with_global_normalisation():
    """One part scaled 3x, the others 2x: per-part normalisation cannot see it, global normalisation can; the
    value matches a hand computation."""
    g = torch.Generator().manual_seed(4)
    ef = torch.randn(6, 4, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    eq = ef.clone() * 2.0
    eq[:, :, 1] *= 1.5
    assert idc_loss(eq, ef, labels, "inter", "part").item() == pytest.approx(0.0, abs=1e-20)
    got = idc_loss(eq, ef, labels, "inter", "global").item()
    # by hand: D^Q_k = c_k D^F_k with c = (2, 3); mu^Q = mean_k c_k mu^F_k, mu^F = mean_k mu^F_k
    dq0 = _reference_distances(ef, labels)
    mu = [sum(d) / len(d) for d in dq0]
    mu_f = sum(mu) / 2
    mu_q = (2 * mu[0] + 3 * mu[1]) / 2
    c = (2.0, 3.0)
    expected = sum(sum((c[k] * d / mu_q - d / mu_f) ** 2 for d in dq0[k]) / len(dq0[k]) for k in range(2)) / 2
    assert got == pytest.approx(expected, rel=1e-9)
    assert got > 1e-3


def _reference_distances(e, labels):
    """Per part, the inter-class ordered-pair distances as Python floats."""
    n, _, p = e.shape
    return [[float((e[i, :, k] - e[j, :, k]).norm()) for i in range(n) for j in range(n)
             if labels[i] != labels[j]] for k in range(p)]


def test_normalize_option_validation():
    eq, ef = torch.randn(4, 5, 2), torch.randn(4, 5, 2)
    with pytest.raises(ValueError, match="normalize"):
        idc_loss(eq, ef, torch.tensor([0, 0, 1, 1]), normalize="per-sample")
    assert IDCLoss(normalize=True).normalize == "part" and IDCLoss(normalize="global").normalize == "global"
