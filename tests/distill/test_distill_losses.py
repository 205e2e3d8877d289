"""Distillation losses (qgait.losses.distill) and alignment (qgait.distill.align) against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qgait.distill.align import PartConnector, align_pair, align_parts, build_connector
from qgait.losses import LossSum
from qgait.losses.distill import (
    ABTerm,
    FeatureMSETerm,
    GlobalKDTerm,
    PartKLTerm,
    ab_loss,
    calibrate_teacher_probs,
    ensemble_logits,
    feature_mse_loss,
    global_kd_loss,
    part_kl_loss,
    teacher_probs,
)

D = torch.float64
LN3 = math.log(3.0)
# KL([3/4, 1/4] || [1/2, 1/2]) in nats
K = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def _logits_for(probs, scale=16.0, temperature=4.0):
    """Cosine logits whose softmax(scale * z / T) is ``probs`` (along dim 1)."""
    return torch.log(torch.as_tensor(probs, dtype=D)) * temperature / scale


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# ----------------------------------------------------------------------------------------------- part KL
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_part_kl_hand_case_and_t2_scaling(temperature):
    # teacher [ln 3, 0] after scaling -> [3/4, 1/4]; student 0 -> [1/2, 1/2]
    z_t = torch.tensor([[[temperature * LN3 / 16.0], [0.0]]], dtype=D)  # [1, 2, 1]
    z_s = torch.zeros(1, 2, 1, dtype=D)
    loss = part_kl_loss(z_s, z_t, temperature=temperature)
    assert loss.item() == pytest.approx(temperature**2 * K, rel=1e-12)


def test_part_kl_averages_over_samples_and_parts():
    a = 4.0 * LN3 / 16.0
    z_t = torch.zeros(2, 2, 2, dtype=D)
    z_t[0, 0, 0] = a  # only (sample 0, part 0) differs from the student
    z_s = torch.zeros(2, 2, 2, dtype=D)
    assert part_kl_loss(z_s, z_t).item() == pytest.approx(16.0 * K / 4, rel=1e-12)
    # batch of one, two parts: /2
    assert part_kl_loss(z_s[:1], z_t[:1]).item() == pytest.approx(16.0 * K / 2, rel=1e-12)


def test_part_kl_zero_when_equal_and_gradient_only_to_student():
    torch.manual_seed(0)
    z = torch.rand(3, 5, 4) * 2 - 1
    z_s = z.clone().requires_grad_(True)
    z_t = z.clone().requires_grad_(True)
    loss = part_kl_loss(z_s, z_t)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    (part_kl_loss(z_s, z_t.flip(0))).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None


def test_part_kl_matches_reference_formula_random():
    torch.manual_seed(1)
    z_s, z_t = torch.rand(4, 6, 3, dtype=D) * 2 - 1, torch.rand(4, 6, 3, dtype=D) * 2 - 1
    p_t = F.softmax(z_t * 4, dim=1)
    ref = (p_t * (p_t.log() - F.log_softmax(z_s * 4, dim=1))).sum() / (4 * 3) * 16
    assert part_kl_loss(z_s, z_t).item() == pytest.approx(ref.item(), rel=1e-12)


def test_ka_ps_swaps_on_wrong_teacher():
    # sample 0: teacher [0.6, 0.3, 0.1], label 1 (wrong) -> [0.3, 0.6, 0.1]; sample 1: right, unchanged
    probs = torch.tensor([[[0.6], [0.3], [0.1]], [[0.2], [0.7], [0.1]]], dtype=D)
    labels = torch.tensor([1, 1])
    out = calibrate_teacher_probs(probs, labels, "ka_ps")
    assert torch.allclose(out[0, :, 0], torch.tensor([0.3, 0.6, 0.1], dtype=D))
    assert torch.equal(out[1], probs[1])
    assert torch.equal(probs[0, :, 0], torch.tensor([0.6, 0.3, 0.1], dtype=D))  # input untouched

    z_t = _logits_for(probs)
    z_s = torch.zeros(2, 3, 1, dtype=D)
    u = [1 / 3] * 3
    want = 16.0 * (_kl([0.3, 0.6, 0.1], u) + _kl([0.2, 0.7, 0.1], u)) / 2
    got = part_kl_loss(z_s, z_t, labels, calibration="ka_ps")
    assert got.item() == pytest.approx(want, rel=1e-10)
    plain = 16.0 * (_kl([0.6, 0.3, 0.1], u) + _kl([0.2, 0.7, 0.1], u)) / 2
    assert part_kl_loss(z_s, z_t, labels).item() == pytest.approx(plain, rel=1e-10)


def test_ka_lsr_replaces_wrong_rows():
    probs = torch.tensor([[[0.6, 0.2], [0.3, 0.7], [0.1, 0.1]]], dtype=D)  # part 0 wrong, part 1 right (label 1)
    labels = torch.tensor([1])
    out = calibrate_teacher_probs(probs, labels, "ka_lsr", epsilon=0.1)
    assert torch.allclose(out[0, :, 0], torch.tensor([0.05, 0.9, 0.05], dtype=D))
    assert torch.equal(out[0, :, 1], probs[0, :, 1])

    z_s = torch.zeros(1, 3, 2, dtype=D)
    u = [1 / 3] * 3
    want = 16.0 * (_kl([0.05, 0.9, 0.05], u) + _kl([0.2, 0.7, 0.1], u)) / 2
    got = part_kl_loss(z_s, _logits_for(probs), labels, calibration="ka_lsr", epsilon=0.1)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_calibration_needs_labels_and_checks_options():
    z = torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="needs the labels"):
        part_kl_loss(z, z, None, calibration="ka_ps")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        part_kl_loss(z, z, torch.tensor([0, 3]), calibration="ka_lsr")
    with pytest.raises(ValueError, match="calibration"):
        part_kl_loss(z, z, calibration="dkd")
    with pytest.raises(ValueError, match="temperature"):
        part_kl_loss(z, z, temperature=0)


def test_class_count_mismatch_names_both_counts():
    with pytest.raises(ValueError, match=r"student has 5 classes, teacher 0 has 7"):
        part_kl_loss(torch.zeros(2, 5, 4), torch.zeros(2, 7, 4))
    with pytest.raises(ValueError, match=r"5 classes.*7"):
        PartKLTerm()({"logits": torch.zeros(2, 5, 4), "teacher_logits": torch.zeros(2, 7, 4)}, torch.zeros(2).long())
    with pytest.raises(ValueError, match=r"5 classes.*7"):
        global_kd_loss(torch.zeros(2, 5, 4), torch.zeros(2, 7, 2))


def test_part_kl_heterogeneous_parts_pools_teacher():
    torch.manual_seed(2)
    z_s, z_t = torch.rand(3, 4, 2, dtype=D), torch.rand(3, 4, 8, dtype=D)
    pooled = z_t.reshape(3, 4, 2, 4).mean(-1)  # 8 -> 2: groups of 4 consecutive parts
    assert part_kl_loss(z_s, z_t).item() == pytest.approx(part_kl_loss(z_s, pooled).item(), rel=1e-12)
    # student with more parts than the teacher: the student is pooled
    assert part_kl_loss(z_t, z_s).item() == pytest.approx(part_kl_loss(pooled, z_s).item(), rel=1e-12)
    trunc = part_kl_loss(z_s, z_t, part_align="truncate")
    assert trunc.item() == pytest.approx(part_kl_loss(z_s, z_t[..., :2]).item(), rel=1e-12)


def test_global_kd_hand_case():
    a = 4.0 * LN3 / 16.0
    z_t = torch.tensor([[[2 * a, 0.0], [0.0, 0.0]]], dtype=D)  # part mean [a, 0]
    z_s = torch.tensor([[[0.3, -0.3], [0.1, -0.1]]], dtype=D)  # part mean [0, 0]
    assert global_kd_loss(z_s, z_t).item() == pytest.approx(16.0 * K, rel=1e-12)
    # part counts may differ: each side averages its own parts
    assert global_kd_loss(z_s[..., :1] * 0, z_t).item() == pytest.approx(16.0 * K, rel=1e-12)


def test_ensemble_averages_teacher_distributions():
    # two teachers, [0.8, 0.2] and [0.4, 0.6] -> mean [0.6, 0.4]
    z1, z2 = _logits_for([[[0.8], [0.2]]]), _logits_for([[[0.4], [0.6]]])
    z_s = torch.zeros(1, 2, 1, dtype=D)
    want = 16.0 * _kl([0.6, 0.4], [0.5, 0.5])
    assert part_kl_loss(z_s, [z1, z2]).item() == pytest.approx(want, rel=1e-10)
    assert torch.allclose(teacher_probs([z1, z2])[0, :, 0], torch.tensor([0.6, 0.4], dtype=D))
    # pseudo-logits reproduce the averaged distribution at the same scale and temperature
    z_e = ensemble_logits([z1, z2])
    assert part_kl_loss(z_s, z_e).item() == pytest.approx(want, rel=1e-10)
    term = PartKLTerm(("teacher0", "teacher1"), ensemble=True)
    loss, _ = term({"logits": z_s, "teacher0_logits": z1, "teacher1_logits": z2}, torch.zeros(1).long())
    assert loss.item() == pytest.approx(want, rel=1e-10)


def test_several_teachers_summed_with_info():
    torch.manual_seed(3)
    z_s, z1, z2 = torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.rand(2, 3, 2)
    outputs = {"logits": z_s, "teacher0_logits": z1, "teacher1_logits": z2}
    loss, info = PartKLTerm(("teacher0", "teacher1"))(outputs, torch.zeros(2).long())
    l1, l2 = part_kl_loss(z_s, z1), part_kl_loss(z_s, z2)
    assert loss.item() == pytest.approx((l1 + l2).item(), rel=1e-6)
    assert info == {"kd_kl/teacher0": pytest.approx(l1.item()), "kd_kl/teacher1": pytest.approx(l2.item())}
    g, _ = GlobalKDTerm(("teacher0", "teacher1"))(outputs, torch.zeros(2).long())
    assert g.item() == pytest.approx((global_kd_loss(z_s, z1) + global_kd_loss(z_s, z2)).item(), rel=1e-6)


def test_missing_teacher_output_is_a_clear_key_error():
    with pytest.raises(KeyError, match="teacher_logits.*BNNeck"):
        PartKLTerm()({"logits": torch.zeros(1, 2, 1)}, torch.zeros(1).long())


# ----------------------------------------------------------------------------------------------- AB
def test_ab_hand_case_both_regions_and_margin_boundaries():
    # (student, teacher) per (channel, part)
    s = torch.tensor([[[0.5, -3.0], [0.5, 3.0], [2.0, 1.0], [-2.0, -1.0]]], dtype=D)  # [1, 4, 2]
    t = torch.tensor([[[1.0, 1.0], [0.0, -1.0], [1.0, 1.0], [-1.0, -0.5]]], dtype=D)
    # part 0: (0.5, +): (0.5-1)^2=0.25 | (0.5, 0): (0.5+1)^2=2.25 | (2, +): 0 | (-2, -): 0
    # part 1: (-3, +): (-3-1)^2=16   | (3, -): (3+1)^2=16        | (1, +): 0 at s == m | (-1, -): 0 at s == -m
    want = (0.25 + 2.25 + 16 + 16) / (1 * 2)  # summed over channels, averaged over samples and parts
    assert ab_loss(s, t, margin=1.0).item() == pytest.approx(want, rel=1e-12)
    # a batch of two copies: same average
    assert ab_loss(torch.cat([s, s]), torch.cat([t, t])).item() == pytest.approx(want, rel=1e-12)
    # margin 0.5 on a single entry: t > 0, s = 0.2 -> (0.2 - 0.5)^2
    assert ab_loss(s[:, :1, :1] * 0.4, t[:, :1, :1], margin=0.5).item() == pytest.approx(0.09, rel=1e-12)


def test_ab_exactly_zero_beyond_margin_and_no_gradient():
    torch.manual_seed(4)
    t = torch.randn(3, 8, 5, dtype=D)
    t[0, 0, 0] = 0.0  # teacher exactly 0 counts as "not positive"
    mag = 1.0 + torch.rand_like(t)  # |s| >= m
    s = torch.where(t > 0, mag, -mag).requires_grad_(True)
    loss = ab_loss(s, t)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(s.grad) == 0
    # flip the signs: every element is penalised
    assert ab_loss(-s.detach(), t).item() > 0


def test_ab_gradient_direction():
    s = torch.tensor([[[0.5], [0.5]]], requires_grad=True)  # [1, 2, 1]
    t = torch.tensor([[[1.0], [-1.0]]])
    ab_loss(s, t).backward()
    # d/ds (s - 1)^2 = -1 (push up toward +m); d/ds (s + 1)^2 = 3 (push down toward -m); / (n p) = 1
    assert torch.allclose(s.grad, torch.tensor([[[-1.0], [3.0]]]))


def test_ab_and_mse_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="align parts and widths"):
        ab_loss(torch.zeros(2, 4, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="margin"):
        ab_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), margin=-1)
    with pytest.raises(ValueError):
        feature_mse_loss(torch.zeros(2, 4, 3), torch.zeros(2, 4, 2))


def test_feature_mse_hand_case():
    e_s = torch.zeros(1, 2, 2, dtype=D)
    e_t = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]], dtype=D)
    assert feature_mse_loss(e_s, e_t).item() == pytest.approx((1 + 4 + 9 + 0) / 4)


# ----------------------------------------------------------------------------------------------- alignment
def test_align_parts_pool_and_truncate():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    assert torch.equal(align_parts(x, 2), torch.tensor([[[1.5, 3.5]]]))
    assert torch.equal(align_parts(x, 2, "truncate"), torch.tensor([[[1.0, 2.0]]]))
    # 4 -> 3 (not a divisor): windows [0, 2), [1, 3), [2, 4)
    assert torch.allclose(align_parts(x, 3), torch.tensor([[[1.5, 2.5, 3.5]]]))
    assert align_parts(x, 4) is x
    with pytest.raises(ValueError, match="cannot align 4 parts to 5"):
        align_parts(x, 5)
    with pytest.raises(ValueError, match="part_align"):
        align_parts(x, 2, "max")
    a, b = align_pair(torch.zeros(2, 3, 16), torch.zeros(2, 5, 4))
    assert a.shape == (2, 3, 4) and b.shape == (2, 5, 4)


def test_part_connector_is_per_part_linear():
    conn = PartConnector(parts=2, c_in=3, c_out=4)
    with torch.no_grad():
        conn.weight.copy_(torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) / 10)
        conn.bias.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]]))
    x = torch.randn(5, 3, 2)
    y = conn(x)
    assert y.shape == (5, 4, 2)
    for k in range(2):
        assert torch.allclose(y[:, :, k], x[:, :, k] @ conn.weight[k].T + conn.bias[k], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[n, 3, 2\]"):
        conn(torch.zeros(5, 3, 4))
    ident = PartConnector(2, 3, 3, identity_init=True)
    assert torch.allclose(ident(x), x)
    assert build_connector(16, 8, 8) is None
    assert isinstance(build_connector(16, 8, 16), PartConnector)
    # bf16 input (autocast) -> float32 output
    assert conn(x.bfloat16()).dtype == torch.float32


def test_ab_and_mse_terms_heterogeneous_pair_with_connector():
    torch.manual_seed(5)
    # student: 8 channels, 2 parts; teacher: 16 channels, 4 parts
    e_s = torch.randn(3, 8, 2, requires_grad=True)
    e_t = torch.randn(3, 16, 4, requires_grad=True)
    conn = PartConnector(parts=2, c_in=8, c_out=16)
    outputs = {"embeddings": e_s, "teacher_embeddings": e_t}
    term = ABTerm(connectors=conn)
    loss, info = term(outputs, torch.zeros(3).long())
    want = ab_loss(conn(e_s), align_parts(e_t, 2))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert info == {}
    loss.backward()
    assert e_s.grad.abs().sum() > 0 and conn.weight.grad.abs().sum() > 0
    assert e_t.grad is None
    # the connector belongs to the term (the loss), so the optimizer finds it through the LossSum
    total = LossSum({"ab": (term, 0.003), "mse": (FeatureMSETerm(connectors=conn), 1.0)})
    assert {id(p) for p in total.parameters()} == {id(conn.weight), id(conn.bias)}
    value, info = total(outputs, torch.zeros(3).long())
    mse = feature_mse_loss(conn(e_s), align_parts(e_t, 2))
    assert value.item() == pytest.approx(0.003 * want.item() + mse.item(), rel=1e-5)
    assert set(info) == {"loss/ab", "loss/mse", "loss/total"}


def test_embedding_terms_refuse_width_mismatch_and_unknown_connectors():
    outputs = {"embeddings": torch.zeros(2, 8, 4), "teacher_embeddings": torch.zeros(2, 16, 4)}
    with pytest.raises(ValueError, match="student 8, teacher 16"):
        ABTerm()(outputs, torch.zeros(2).long())
    with pytest.raises(ValueError, match="student 8, teacher 16"):
        FeatureMSETerm()(outputs, torch.zeros(2).long())
    with pytest.raises(ValueError, match="unknown teachers"):
        ABTerm("teacher0", connectors={"teacher1": PartConnector(4, 8, 16)})


def test_ab_term_several_teachers_with_own_connectors():
    torch.manual_seed(6)
    e_s = torch.randn(2, 8, 4)
    e0, e1 = torch.randn(2, 8, 4), torch.randn(2, 16, 2)
    c1 = PartConnector(4, 8, 16)
    term = ABTerm(("teacher0", "teacher1"), connectors={"teacher1": c1})
    loss, info = term({"embeddings": e_s, "teacher0_embeddings": e0, "teacher1_embeddings": e1}, None)
    l0, l1 = ab_loss(e_s, e0), ab_loss(align_parts(c1(e_s), 2), e1)
    assert loss.item() == pytest.approx((l0 + l1).item(), rel=1e-6)
    assert set(info) == {"kd_ab/teacher0", "kd_ab/teacher1"}


def test_per_teacher_student_key_template():
    """Connectors inside the training network: the term reads ``embeddings_to_<prefix>``, no connector of its own."""
    torch.manual_seed(7)
    e_to0, e_to1 = torch.randn(2, 8, 4), torch.randn(2, 16, 4)
    e0, e1 = torch.randn(2, 8, 4), torch.randn(2, 16, 2)
    outputs = {"embeddings_to_teacher0": e_to0, "embeddings_to_teacher1": e_to1,
               "teacher0_embeddings": e0, "teacher1_embeddings": e1}
    loss, _ = ABTerm(("teacher0", "teacher1"), key="embeddings_to_{teacher}")(outputs, None)
    want = ab_loss(e_to0, e0) + ab_loss(align_parts(e_to1, 2), e1)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
