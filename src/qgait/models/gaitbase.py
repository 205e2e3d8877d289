"""GaitBase (Fan et al., CVPR 2023, "OpenGait: Revisiting Gait Recognition Toward Better Practicality")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import BasicBlock, FrameWise, HorizontalPyramidPooling, SeparateFCs, TemporalMaxPool, init_weights
from .registry import register_model


@register_model("gaitbase")
class GaitBase(nn.Module):
    """GaitBase: a ResNet-9-like 2D backbone per frame, temporal max pooling, horizontal pyramid pooling and
    separate per-part FCs.

    The full-size model (``width=1.0``, input 64x44) has channels 64/128/256/512 with strides 1/2/2/1, giving a
    ``[512, 16, 11]`` map per frame and 16 strips; about 7.0M inference parameters. ``width`` scales the
    channels for CPU recipes; ``strides`` and ``bins`` adapt it to smaller inputs (the map height must be
    divisible by every bin count).

    ``forward(silhouettes [n, T, H, W] in [0, 1]) -> embeddings [n, embed_dim, p]`` is the whole inference path
    (exportable to ONNX with dynamic ``n`` and ``T``); the BNNeck training head lives beside it
    (:class:`qgait.models.heads.GaitWithHead`).

    Args:
        width: channel multiplier (channels ``round(64 * width * 2**i)``, at least 4).
        strides: stride of each of the 4 stages.
        bins: horizontal strip counts of the pyramid pooling (GaitBase: ``(16,)``).
        embed_dim: output channels of the per-part FCs (GaitBase: 256).
        blocks: basic blocks per stage (GaitBase: one each).
    """

    def __init__(
        self,
        width: float = 1.0,
        strides: Sequence[int] = (1, 2, 2, 1),
        bins: Sequence[int] = (16,),
        embed_dim: int = 256,
        blocks: Sequence[int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        if len(strides) != 4 or len(blocks) != 4:
            raise ValueError("GaitBase needs 4 strides and 4 block counts")
        chans = [max(4, int(round(64 * width * 2**i))) for i in range(4)]
        layers: list[nn.Module] = [
            nn.Conv2d(1, chans[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(inplace=True),
        ]
        c_in = chans[0]
        for c_out, stride, nb in zip(chans, strides, blocks):
            for j in range(nb):
                layers.append(BasicBlock(c_in, c_out, stride if j == 0 else 1))
                c_in = c_out
        self.backbone = FrameWise(nn.Sequential(*layers))
        self.temporal_pool = TemporalMaxPool()
        self.hpp = HorizontalPyramidPooling(bins)
        self.fcs = SeparateFCs(self.hpp.parts, chans[-1], embed_dim)
        self.embed_dim = embed_dim
        self.parts = self.hpp.parts
        init_weights(self)

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        x = silhouettes.unsqueeze(2)  # [n, T, 1, H, W]
        x = self.backbone(x)  # [n, T, c, h, w]
        x = self.temporal_pool(x)  # [n, c, h, w]
        x = self.hpp(x)  # [n, c, p]
        return self.fcs(x)  # [n, embed_dim, p]
