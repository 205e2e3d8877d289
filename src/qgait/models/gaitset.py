"""GaitSet (Chao et al., AAAI 2019, "GaitSet: Regarding Gait as a Set for Cross-View Gait Recognition")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import FrameWise, HorizontalPyramidPooling, SeparateFCs, TemporalMaxPool, init_weights
from .registry import register_model


def _conv_block(c_in: int, c_out: int, k1: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k1, padding=k1 // 2, bias=False),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.LeakyReLU(0.01, inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_model("gaitset")
class GaitSet(nn.Module):
    """GaitSet: frame-level CNN, set pooling (max over frames) at three depths with a global branch, and
    horizontal pyramid mapping with bins 16/8/4/2/1 on both branches (62 parts); no batch norm, LeakyReLU.

    ``forward(silhouettes [n, T, H, W] in [0, 1]) -> embeddings [n, embed_dim, 62]``. Trained with the triplet
    loss alone in the original recipe (the BNNeck head is optional here).

    Args:
        width: channel multiplier (channels 32/64/128 at 1.0).
        bins: pyramid bins per branch (GaitSet: 16, 8, 4, 2, 1).
        embed_dim: per-part output channels (GaitSet: 256).
    """

    def __init__(self, width: float = 1.0, bins: Sequence[int] = (16, 8, 4, 2, 1), embed_dim: int = 256) -> None:
        super().__init__()
        c1, c2, c3 = (max(4, int(round(c * width))) for c in (32, 64, 128))
        self.set_block1 = FrameWise(_conv_block(1, c1, 5, pool=True))
        self.set_block2 = FrameWise(_conv_block(c1, c2, 3, pool=True))
        self.set_block3 = FrameWise(_conv_block(c2, c3, 3, pool=False))
        self.gl_block2 = _conv_block(c1, c2, 3, pool=True)
        self.gl_block3 = _conv_block(c2, c3, 3, pool=False)
        self.set_pool = TemporalMaxPool()
        self.hpp = HorizontalPyramidPooling(bins)
        self.parts = 2 * self.hpp.parts
        self.fcs = SeparateFCs(self.parts, c3, embed_dim)
        self.embed_dim = embed_dim
        init_weights(self)

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        x = self.set_block1(silhouettes.unsqueeze(2))  # [n, T, c1, H/2, W/2]
        gl = self.gl_block2(self.set_pool(x))  # [n, c2, H/4, W/4]
        x = self.set_block2(x)  # [n, T, c2, H/4, W/4]
        gl = self.gl_block3(gl + self.set_pool(x))  # [n, c3, H/4, W/4]
        x = self.set_pool(self.set_block3(x))  # [n, c3, H/4, W/4]
        gl = gl + x
        feat = torch.cat([self.hpp(x), self.hpp(gl)], dim=-1)  # [n, c3, 62]
        return self.fcs(feat)  # [n, embed_dim, 62]
