"""Frozen teachers (qgait.distill.teacher): no gradient, always eval, never in the student's checkpoint."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from qgait.distill import MultiTeacher, PartConnector, Teacher
from qgait.engine.checkpoint import load_checkpoint
from qgait.engine.distributed import DistContext
from qgait.engine.trainer import Trainer
from qgait.losses import LossSum, PartCrossEntropy, TripletLoss
from qgait.losses.distill import ABTerm, PartKLTerm, part_kl_loss
from qgait.models.gaitbase import GaitBase
from qgait.models.heads import GaitWithHead

CLASSES = 3
X_SHAPE = (6, 2, 16, 4)  # [n, T, H, W]: feature height 4 after strides (1, 2, 2, 1)


def _net(bins=(4,), embed_dim=16, num_classes=CLASSES, seed=0) -> GaitWithHead:
    torch.manual_seed(seed)
    return GaitWithHead(GaitBase(width=1 / 16, bins=bins, embed_dim=embed_dim), num_classes)


def _student(seed=1) -> GaitWithHead:
    return _net(bins=(2,), embed_dim=8, seed=seed)  # 2 parts x 8 channels vs the teacher's 4 x 16


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(X_SHAPE, generator=g), torch.tensor([0, 0, 1, 1, 2, 2])


def _warm_bn(net: nn.Module) -> None:
    """Give the batch norms non-trivial running statistics (as a trained teacher has)."""
    net.train()
    with torch.no_grad():
        net(_batch(9)[0])


def test_teacher_outputs_frozen_and_float32():
    net = _net()
    t = Teacher(net)
    assert all(not p.requires_grad for p in net.parameters())
    assert (t.embed_dim, t.parts, t.num_classes, t.has_logits) == (16, 4, CLASSES, True)
    out = t(_batch()[0])
    assert set(out) == {"teacher_embeddings", "teacher_logits"}
    assert out["teacher_embeddings"].shape == (6, 16, 4) and out["teacher_logits"].shape == (6, CLASSES, 4)
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in out.values())
    # no BNNeck head (or a bare inference model): embeddings only
    assert set(Teacher(_net(num_classes=None))(_batch()[0])) == {"teacher_embeddings"}
    bare = Teacher(_net().model, prefix="t")
    assert set(bare(_batch()[0])) == {"t_embeddings"} and bare.num_classes is None
    with pytest.raises(TypeError):
        Teacher(lambda x: x)


def test_teacher_stays_in_eval_mode_and_keeps_its_bn_statistics():
    net = _net()
    _warm_bn(net)
    t = Teacher(net)
    x = _batch()[0]
    ref = t(x)["teacher_embeddings"]
    stats = copy.deepcopy({k: v for k, v in net.state_dict().items() if "running" in k})

    class Setup(nn.Module):  # a parent that holds the student and (as an attribute) the teacher
        def __init__(self):
            super().__init__()
            self.student = _student()
            self.teacher = t

    setup = Setup()
    setup.train()
    assert setup.student.training
    assert not any(m.training for m in net.modules())
    assert not t.train().training and not any(m.training for m in net.modules())
    # even if someone flips the network itself into train mode, the next call runs it in eval mode
    net.train()
    again = t(x)["teacher_embeddings"]
    assert not net.training
    assert torch.equal(again, ref)
    for k, v in net.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), k


def test_teacher_gets_no_gradient_student_and_connector_do():
    teacher_net, student = _net(), _student()
    t = Teacher(teacher_net)
    conn = PartConnector(parts=2, c_in=8, c_out=16)
    loss_fn = LossSum({
        "ce": (PartCrossEntropy(), 1.0),
        "kl": (PartKLTerm(), 1.0),
        "ab": (ABTerm(connectors=conn), 0.003),
    })
    x, y = _batch()
    student.train()
    loss, info = loss_fn({**student(x), **t(x)}, y)
    loss.backward()
    assert all(p.grad is None for p in teacher_net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert conn.weight.grad is not None and conn.weight.grad.abs().sum() > 0
    assert info["loss/kl"] > 0 and info["loss/ab"] > 0


def test_class_count_mismatch_between_student_and_teacher():
    t = Teacher(_net(num_classes=5))
    student = _student()
    x, y = _batch()
    with pytest.raises(ValueError, match=r"student has 3 classes, teacher 0 has 5"):
        PartKLTerm()({**student(x), **t(x)}, y)


def test_teacher_not_in_student_checkpoint_and_student_reloads_strictly(tmp_path):
    teacher_net = _net()
    _warm_bn(teacher_net)
    teacher = Teacher(teacher_net)
    student = _student()
    student.teacher = teacher  # even attached to the student, the teacher is not registered
    conn = PartConnector(parts=2, c_in=8, c_out=16)
    loss_fn = LossSum({
        "triplet": (TripletLoss(), 1.0),
        "ce": (PartCrossEntropy(), 1.0),
        "kl": (PartKLTerm(), 1.0),
        "ab": (ABTerm(connectors=conn), 0.003),
    })
    params = list(student.parameters()) + list(loss_fn.parameters())
    n_student = sum(1 for _ in student.parameters())
    assert len(params) == n_student + 2  # the connector's weight and bias, no teacher parameter
    opt = torch.optim.SGD(params, lr=0.1)

    class Batches:
        def get(self, iteration):
            return _batch(iteration)

    trainer = Trainer(student, loss_fn, Batches(), opt, lambda i: 0.1, iterations=1, out_dir=tmp_path,
                      ctx=DistContext(0, 1, 0, torch.device("cpu")), extra_outputs=teacher, progress=False)
    before = copy.deepcopy(teacher_net.state_dict())
    conn_before = conn.weight.detach().clone()
    student.train()
    info = trainer.step(0)
    assert info["loss/kl"] > 0
    assert not torch.equal(conn.weight, conn_before)  # the connector trains
    for k, v in teacher_net.state_dict().items():  # the teacher does not (weights nor BN statistics)
        assert torch.equal(v, before[k]), k
    trainer.save()

    ck = load_checkpoint(tmp_path / "last.pt", required=("model",))
    fresh = _student(seed=7)
    assert set(ck["model"]) == set(fresh.state_dict())
    assert not any(k.startswith("teacher") for k in ck["model"])
    fresh.load_state_dict(ck["model"], strict=True)
    for k, v in student.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    # the exported inference model has neither the head nor the connector
    assert set(student.model.state_dict()) == {k[len("model."):] for k in ck["model"] if k.startswith("model.")}


def test_teacher_refuses_pickling_but_deepcopies():
    t = Teacher(_net())
    holder = _student()
    holder.teacher = t
    with pytest.raises(TypeError, match="not saved with the student"):
        torch.save(holder, io.BytesIO())
    torch.save(holder.state_dict(), io.BytesIO())  # the state dict is fine
    t2 = copy.deepcopy(t)
    assert t2.net is not t.net and t2.prefix == "teacher"
    x = _batch()[0]
    assert torch.equal(t2(x)["teacher_logits"], t(x)["teacher_logits"])


def test_multi_teacher_keys_sum_and_ensemble():
    nets = [_net(seed=0), _net(bins=(2,), embed_dim=8, seed=3)]
    multi = MultiTeacher(nets)
    assert multi.prefixes == ("teacher0", "teacher1") and len(multi) == 2
    x, y = _batch()
    out = multi(x)
    assert set(out) == {"teacher0_embeddings", "teacher0_logits", "teacher1_embeddings", "teacher1_logits"}
    assert out["teacher0_logits"].shape == (6, CLASSES, 4) and out["teacher1_logits"].shape == (6, CLASSES, 2)

    student = _student()
    s_out = student(x)
    loss, info = PartKLTerm(multi.prefixes)({**s_out, **out}, y)
    want = part_kl_loss(s_out["logits"], out["teacher0_logits"]) + part_kl_loss(s_out["logits"], out["teacher1_logits"])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert set(info) == {"kd_kl/teacher0", "kd_kl/teacher1"}

    ens = MultiTeacher(nets, ensemble=True)
    e_out = ens(x)
    assert e_out["teacher_logits"].shape == (6, CLASSES, 2)  # pooled to the smaller teacher part count
    p = torch.softmax(e_out["teacher_logits"] * 4, dim=1)
    p0 = torch.softmax(torch.nn.functional.adaptive_avg_pool1d(out["teacher0_logits"], 2) * 4, dim=1)
    p1 = torch.softmax(out["teacher1_logits"] * 4, dim=1)
    assert torch.allclose(p, (p0 + p1) / 2, atol=1e-6)
    single, _ = PartKLTerm()({**s_out, **e_out}, y)  # the default term distils the ensemble
    both, _ = PartKLTerm(ens.prefixes, ensemble=True)({**s_out, **e_out}, y)
    assert single.item() == pytest.approx(both.item(), rel=1e-5)

    with pytest.raises(ValueError, match="one class count"):
        MultiTeacher([_net(), _net(num_classes=5)], ensemble=True)
    with pytest.raises(ValueError, match="BNNeck head"):
        MultiTeacher([_net(), _net(num_classes=None)], ensemble=True)
    with pytest.raises(TypeError):
        torch.save(ens, io.BytesIO())
    ens.train()
    assert not any(m.training for n in nets for m in n.modules())


def test_teacher_bf16_autocast_outputs_float32_close_to_fp32():
    """``amp=torch.bfloat16`` (config ``distill.teacher_amp: bf16``): the forward runs in bf16, the outputs come back
    float32 and close to the float32 teacher's; the setting survives copies and MultiTeacher; bad dtypes refused."""
    net = _net()
    _warm_bn(net)
    x = _batch()[0]
    fp32, bf16 = Teacher(net)(x), Teacher(net, amp=torch.bfloat16)(x)
    assert all(v.dtype == torch.float32 for v in bf16.values())
    e32, e16 = fp32["teacher_embeddings"].flatten(1), bf16["teacher_embeddings"].flatten(1)
    assert not torch.equal(e32, e16)  # it did run in reduced precision
    assert torch.nn.functional.cosine_similarity(e32, e16).min() > 0.99
    # the softened targets the KL reads (T 4, scale 16) differ by little
    p32 = torch.softmax(16 * fp32["teacher_logits"] / 4, dim=1)
    p16 = torch.softmax(16 * bf16["teacher_logits"] / 4, dim=1)
    assert (p32 - p16).abs().max() < 0.05
    t = Teacher(net, amp=torch.bfloat16)
    assert copy.copy(t).amp is torch.bfloat16 and copy.deepcopy(t).amp is torch.bfloat16
    assert all(m.amp is torch.bfloat16 for m in MultiTeacher([t, Teacher(_net(seed=3))]).teachers[:1])
    assert MultiTeacher([t, Teacher(_net(seed=3))]).teachers[1].amp is None
    with pytest.raises(ValueError, match="teacher amp"):
        Teacher(net, amp=torch.int8)


def test_prepare_distillation_sets_the_teachers_precision_from_the_config():
    from qgait.config import DistillConfig
    from qgait.workflows.distill import prepare_distillation

    class _Cfg:  # the sections prepare_distillation reads
        def __init__(self, amp, channels_last=False):
            self.distill = DistillConfig(teacher_amp=amp)
            self.data = type("D", (), {"input_size": None})()
            self.loss = type("L", (), {"ce": None})()
            self.train = type("T", (), {"channels_last": channels_last})()

    for amp, want in (("bf16", torch.bfloat16), ("none", None)):
        t = Teacher(_net())
        prepare_distillation(_Cfg(amp), [t], _student(), torch.device("cpu"))
        assert t.amp is want

    # train.channels_last: the teachers' conv weights in channels-last format, the same outputs
    x = _batch(5)[0]
    ref = Teacher(_net())
    for amp in ("bf16", "none"):
        t = Teacher(_net())
        prepare_distillation(_Cfg(amp, channels_last=True), [t], _student(), torch.device("cpu"))
        convs = [m for m in t.net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
        assert not all(m.weight.is_contiguous() for m in convs)
        ref.amp = t.amp
        for k, v in ref(x).items():
            torch.testing.assert_close(t(x)[k], v, rtol=1e-2 if t.amp else 1e-5, atol=1e-2 if t.amp else 1e-5)
    t = Teacher(_net())
    prepare_distillation(_Cfg("none"), [t], _student(), torch.device("cpu"))
    assert all(m.weight.is_contiguous() for m in t.net.modules() if isinstance(m, torch.nn.Conv2d))

    # int8 needs calibration batches and the CPU; refused before any teacher is touched
    for device, calib in ((torch.device("cpu"), None), (torch.device("cuda"), lambda: [_batch()[0]])):
        t = Teacher(_net())
        with pytest.raises(ValueError, match="teacher_amp int8"):
            prepare_distillation(_Cfg("int8"), [t], _student(), device, calib=calib)
        assert not t.int8


def test_int8_teacher_runs_the_backbone_in_int8_and_the_head_in_float():
    """distill.teacher_amp int8 (Teacher.quantize_int8): PT2E int8 backbone (oneDNN kernels through inductor),
    BNNeck head float32 on its embeddings; close to the float teacher; shared by renamed copies and MultiTeacher,
    dropped by deepcopy; refused without calibration batches or off the CPU."""
    torch.manual_seed(0)
    net = GaitWithHead(GaitBase(width=0.25, bins=(4,), embed_dim=16), CLASSES)
    g = torch.Generator().manual_seed(0)
    calib = [(torch.rand(4, 3, 32, 22, generator=g) > 0.5).float() for _ in range(2)]
    x = (torch.rand(4, 3, 32, 22, generator=g) > 0.5).float()
    t, ref = Teacher(net), Teacher(copy.deepcopy(net))
    with pytest.raises(ValueError, match="calibration batch"):
        t.quantize_int8([])
    assert not t.int8 and t.quantize_int8(calib) is t and t.int8
    out, want = t(x), ref(x)
    assert set(out) == set(want) == {"teacher_embeddings", "teacher_logits"}
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in out.values())
    cos = torch.nn.functional.cosine_similarity(out["teacher_embeddings"].flatten(1),
                                                want["teacher_embeddings"].flatten(1))
    assert float(cos.min()) > 0.99 and not torch.equal(out["teacher_embeddings"], want["teacher_embeddings"])
    # the logits are the float head on the int8 embeddings
    torch.testing.assert_close(out["teacher_logits"], net.head(out["teacher_embeddings"])[1])
    # the network's own weights are untouched: its float forward is the reference's
    torch.testing.assert_close(t.net(x)["embeddings"], want["teacher_embeddings"])

    multi = MultiTeacher([t, ref])
    assert [m.int8 for m in multi.teachers] == [True, False] and copy.copy(t).int8
    torch.testing.assert_close(multi(x)["teacher0_embeddings"], out["teacher_embeddings"])
    assert not copy.deepcopy(t).int8

    class _OnMeta(torch.nn.Module):  # a network whose weights are not on the CPU
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))

    with pytest.raises(ValueError, match="runs on the CPU"):
        Teacher(_OnMeta()).quantize_int8(calib)
