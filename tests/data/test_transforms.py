"""to_model_input (cut once, range, resize) and GaitAugment (deterministic, per-sequence)."""

from __future__ import annotations

import math

import pytest
import torch

from qgait.data.transforms import GaitAugment, to_model_input


def _frames(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def test_cut_64_to_44_once():
    x = _frames(2, 3, 64, 64)
    y = to_model_input(x)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 64, 44)
    assert torch.allclose(y, x[..., 10:54].float() / 255)
    cut = x[..., 10:54].contiguous()
    assert torch.equal(to_model_input(cut), y)  # already 44 wide: not cut again


def test_range_and_rank():
    x = torch.zeros(5, 64, 64, dtype=torch.uint8)
    x[0] = 255
    y = to_model_input(x)
    assert y.shape == (5, 64, 44) and y.min() == 0 and y.max() == 1


def test_resize_from_the_cut_frame():
    x = torch.zeros(1, 2, 64, 64, dtype=torch.uint8)
    x[..., 10:54] = 255  # exactly the kept 44 columns are white
    y = to_model_input(x, (32, 22))
    assert y.shape == (1, 2, 32, 22)
    assert torch.allclose(y, torch.ones_like(y))  # cut before resizing: no black border leaks in
    assert to_model_input(_frames(4, 64, 44), (16, 11)).shape == (4, 16, 11)


def test_bad_inputs():
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match="64x50"):
        to_model_input(torch.zeros(2, 64, 50, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        to_model_input(torch.zeros(64, 64, dtype=torch.uint8))


def _seq_batch(b=6, t=4):
    """Float [b, t, 64, 44]; every frame of a sequence identical, sequences different."""
    base = to_model_input(_frames(b, 1, 64, 64, seed=1))
    return base.expand(b, t, 64, 44).contiguous()


def test_augment_deterministic_with_the_generator():
    aug = GaitAugment(rotation_prob=0.5, erasing_prob=0.5, flip_prob=0.5)
    x = _seq_batch(16)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x) and torch.equal(x, _seq_batch(16))  # input untouched


@pytest.mark.parametrize("kw", [dict(rotation_prob=1.0, erasing_prob=0.0),
                                dict(rotation_prob=0.0, erasing_prob=1.0),
                                dict(rotation_prob=1.0, erasing_prob=1.0, flip_prob=1.0)])
def test_augment_same_parameters_for_every_frame_of_a_sequence(kw):
    x = _seq_batch(8, 5)
    y = GaitAugment(**kw)(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, y[:, :1].expand_as(y))  # identical frames stay identical
    assert all(not torch.equal(y[i], x[i]) for i in range(8))  # probability 1: every sequence changed


def test_erasing_rectangle_area():
    x = torch.ones(200, 1, 64, 44)
    aug = GaitAugment(rotation_prob=0.0, erasing_prob=1.0)
    y = aug(x, torch.Generator().manual_seed(0))
    frac = (y == 0).float().mean(dim=(1, 2, 3))
    assert frac.min() >= 0.015 and frac.max() <= 0.21
    for i in range(20):  # a solid rectangle
        rows = (y[i, 0] == 0).any(1).nonzero().flatten()
        cols = (y[i, 0] == 0).any(0).nonzero().flatten()
        assert (y[i, 0, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] == 0).all()


def test_probability_zero_is_identity_and_flip_flips():
    x = _seq_batch(4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(GaitAugment(rotation_prob=0, erasing_prob=0)(x, g), x)
    assert torch.equal(GaitAugment(rotation_prob=0, erasing_prob=0, flip_prob=1)(x, g), x.flip(-1))


def test_rotation_is_a_pixel_space_rotation():
    x = torch.zeros(1, 1, 64, 44)
    x[0, 0, 31:33, 21:23] = 1.0  # a blob at the centre, stays
    x[0, 0, 11:13, 21:23] = 1.0  # a blob 20 px above the centre
    y = GaitAugment._rotate(x, torch.tensor([math.pi / 2]))[0, 0]
    top = y[:, :].clone()
    top[26:38, 16:28] = 0  # remove the centre blob
    rr, cc = torch.meshgrid(torch.arange(64.0), torch.arange(44.0), indexing="ij")
    m = top.sum()
    r, c = (top * rr).sum() / m, (top * cc).sum() / m
    assert abs(r - 31.5) < 0.6  # moved onto the centre row
    assert abs(abs(c - 21.5) - 20) < 0.6  # 20 px from the centre column, not 20 * 44/64
    assert torch.allclose(GaitAugment._rotate(x, torch.tensor([math.pi])), x.flip(-1).flip(-2), atol=1e-5)
    assert torch.allclose(GaitAugment._rotate(x, torch.tensor([0.0])), x, atol=1e-5)


def test_invalid_parameters():
    with pytest.raises(ValueError):
        GaitAugment(rotation_prob=1.5)
    with pytest.raises(ValueError):
        GaitAugment(erasing_area=(0.3, 0.1))
    with pytest.raises(ValueError):
        GaitAugment()(torch.zeros(2, 64, 44), torch.Generator())
