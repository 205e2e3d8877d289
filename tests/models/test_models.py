import pytest
import torch

from qgait.models import GaitWithHead, available_models, build_model
from qgait.models.blocks import HorizontalPyramidPooling, SeparateFCs


def test_registry_lists_both_models_and_rejects_unknown():
    assert {"gaitbase", "gaitset"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gaitnope")
    with pytest.raises(ValueError, match="no argument"):
        build_model("gaitbase", widht=0.5)


def test_full_gaitbase_shapes_and_size():
    m = build_model("gaitbase").eval()
    n_params = sum(p.numel() for p in m.parameters())
    assert 6.8e6 < n_params < 7.2e6  # "about 7.0M inference parameters"
    with torch.no_grad():
        feat = m.backbone(torch.rand(1, 3, 1, 64, 44))
        assert feat.shape == (1, 3, 512, 16, 11)  # [512, 16, 11] per frame
        out = m(torch.rand(2, 5, 64, 44))
    assert out.shape == (2, 256, 16)


@pytest.mark.parametrize("t1,t2", [(3, 7)])
def test_embedding_independent_of_frame_order_and_count_dynamic(t1, t2):
    m = build_model("gaitbase", width=0.125, strides=(1, 2, 2, 1), bins=(8,), embed_dim=16).eval()
    x = torch.rand(1, t2, 32, 22)
    with torch.no_grad():
        a = m(x)
        b = m(x[:, torch.randperm(t2)])  # set pooling: order does not matter
        c = m(x[:, :t1])
    assert torch.allclose(a, b, atol=1e-5)
    assert c.shape == a.shape == (1, 16, 8)


def test_gaitset_shapes():
    m = build_model("gaitset", width=0.25, embed_dim=32).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 4, 64, 44))
    assert out.shape == (2, 32, 62)


def test_hpp_strips_are_rows_and_mean_plus_max():
    x = torch.zeros(1, 1, 4, 3)
    x[0, 0, 0] = torch.tensor([1.0, 2.0, 3.0])  # first row
    out = HorizontalPyramidPooling((2, 1))(x)
    assert out.shape == (1, 1, 3)
    # strip 0 = rows 0-1: mean 6/6 = 1, max 3 -> 4; strip 1 = rows 2-3: 0; global: mean 6/12 + max 3 = 3.5
    assert torch.allclose(out[0, 0], torch.tensor([4.0, 0.0, 3.5]))
    with pytest.raises(ValueError, match="divisible"):
        HorizontalPyramidPooling((3,))(x)


def test_separate_fcs_is_an_independent_linear_per_part():
    fc = SeparateFCs(parts=3, c_in=4, c_out=2)
    x = torch.randn(5, 4, 3)
    y = fc(x)
    w = fc.fc.weight.view(3, 2, 4)  # [p, out, in]
    for k in range(3):
        assert torch.allclose(y[:, :, k], x[:, :, k] @ w[k].T, atol=1e-6)


def test_head_outputs_cosine_logits():
    m = build_model("gaitbase", width=0.125, bins=(8,), strides=(1, 2, 2, 1), embed_dim=16)
    net = GaitWithHead(m, num_classes=5)
    out = net(torch.rand(4, 3, 32, 22))
    assert out["embeddings"].shape == (4, 16, 8)
    assert out["logits"].shape == (4, 5, 8)
    assert out["logits"].abs().max() <= 1 + 1e-5


@pytest.mark.parametrize("mode", ["3d", "p3d"])
def test_deepgaitv2_shapes_and_temporal_mixing(mode):
    m = build_model("deepgaitv2", width=0.125, bins=[8], embed_dim=16, mode=mode).eval()
    x = torch.rand(2, 6, 32, 22)
    with torch.no_grad():
        out = m(x)
        shuffled = m(x[:, torch.randperm(6, generator=torch.Generator().manual_seed(1))])
    assert out.shape == (2, 16, 8)
    # 3D blocks see frame order (unlike GaitBase's set pooling): a shuffled sequence gives another embedding
    assert not torch.allclose(out, shuffled, atol=1e-4)


def test_deepgaitv2_full_size_parameters_and_quantizable():
    from qgait.quant import QuantConfig, quantize_

    full = build_model("deepgaitv2", mode="p3d")
    assert 8.5e6 < sum(p.numel() for p in full.parameters()) < 9.5e6  # the docstring's 9.1M (P3D, 1-1-1-1)
    with pytest.raises(ValueError, match="mode"):
        build_model("deepgaitv2", mode="2.5d")
    small = build_model("deepgaitv2", width=0.125, bins=[8], embed_dim=16)
    quantize_(small, QuantConfig(weight_bits=4, act_bits=4))
    kinds = {type(mod).__name__ for mod in small.modules()}
    assert "QuantConv3d" in kinds and "QuantConv2d" in kinds
