import math

import torch

from qgait.losses import LossSum, PartCrossEntropy, TripletLoss


def test_triplet_batch_all_known_case():
    # 1-D points: label 0 at 0 and 1, label 1 at 0.5 and 3; margin 0.2.
    # Non-zero triplets (anchor, pos, neg): (0,1,0.5)=.7 (1,0,0.5)=.7 (0.5,3,0)=2.2 (0.5,3,1)=2.2 (3,0.5,1)=.7
    emb = torch.tensor([0.0, 1.0, 0.5, 3.0]).view(4, 1, 1)
    labels = torch.tensor([0, 0, 1, 1])
    loss, info = TripletLoss(margin=0.2)({"embeddings": emb}, labels)
    assert math.isclose(loss.item(), 6.5 / 5, rel_tol=1e-5)
    assert info["triplet_nonzero"] == 5


def test_triplet_averages_parts_and_is_zero_when_separated():
    emb = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]]).view(4, 1, 2)
    # part 0: classes 10 apart -> every triplet 0; part 1: all equal -> every term = margin
    loss, _ = TripletLoss(margin=0.2)({"embeddings": emb}, torch.tensor([0, 0, 1, 1]))
    assert math.isclose(loss.item(), (0.0 + 0.2) / 2, rel_tol=1e-5)


def test_triplet_gradient_finite_with_identical_embeddings():
    emb = torch.ones(4, 3, 2, requires_grad=True)
    loss, _ = TripletLoss()({"embeddings": emb}, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_part_cross_entropy_known_case():
    # 2 classes, one part, cosine logits (1, 0), scale 16, smoothing 0.1 -> targets (0.95, 0.05)
    logits = torch.tensor([[[1.0], [0.0]]])
    loss, info = PartCrossEntropy(scale=16, label_smoothing=0.1)({"logits": logits}, torch.tensor([0]))
    lse = math.log(math.exp(16) + 1)
    expected = -(0.95 * (16 - lse) + 0.05 * (0 - lse))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert info["ce_accuracy"] == 1.0


def test_loss_sum_weights():
    emb = torch.tensor([0.0, 1.0, 0.5, 3.0]).view(4, 1, 1)
    labels = torch.tensor([0, 0, 1, 1])
    total, info = LossSum({"a": (TripletLoss(), 2.0), "b": (TripletLoss(), 0.5)})({"embeddings": emb}, labels)
    assert math.isclose(total.item(), 2.5 * 1.3, rel_tol=1e-5)
    assert math.isclose(info["loss/a"], 1.3, rel_tol=1e-5)
