"""DeepGaitV2 (Fan, Hou, Wang, Huang, Yu, "Exploring Deep Models for Practical Gait Recognition",
arXiv 2303.03301, 2023): a deeper ResNet-like backbone whose later stages convolve over time as well.

The stem and stage 1 are 2D (per frame); stages 2-4 are 3D basic blocks (``mode="3d"``: 3x3x3 convolutions) or
pseudo-3D blocks (``mode="p3d"``: a 1x3x3 spatial then a 3x1x1 temporal convolution, as the paper's P3D variant).
Frames stay frames (temporal stride 1) and padding keeps ``T``, so temporal max pooling, horizontal pyramid pooling
and separate FCs follow as in GaitBase. Channels are 64/128/256/512 at full width; the paper uses blocks
``(1, 1, 1, 1)`` on CASIA-B and ``(1, 4, 4, 1)`` (DeepGaitV2-22) on the large datasets. Inference parameters at
full width (measured): 16.3M (3D) / 9.1M (P3D) with blocks 1-1-1-1; 29.6M / 15.0M with 1-4-4-1.

It is qgait's teacher for full-size distillation pairs (DeepGaitV2 -> GaitBase, a GPU recipe). Its frames are mixed
over time inside the backbone, so a running max cannot stream it (:mod:`qgait.runtime.streaming` refuses it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import BasicBlock, HorizontalPyramidPooling, SeparateFCs, TemporalMaxPool, init_weights
from .registry import register_model


class BasicBlock3D(nn.Module):
    """A basic block over ``[n, c, T, h, w]`` with spatial stride ``stride`` and temporal stride 1.

    ``mode="3d"``: two 3x3x3 convolutions; ``mode="p3d"``: each of the two convolutions is a 1x3x3 spatial
    convolution followed by a 3x1x1 temporal one (batch norm and ReLU between). Shapes:
    ``[n, c_in, T, h, w] -> [n, c_out, T, h / stride, w / stride]``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, mode: str = "3d") -> None:
        super().__init__()
        if mode not in ("3d", "p3d"):
            raise ValueError(f"DeepGaitV2 block mode must be '3d' or 'p3d', got {mode!r}")
        self.conv1 = self._conv(c_in, c_out, stride, mode)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = self._conv(c_out, c_out, 1, mode)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv3d(c_in, c_out, kernel_size=1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(c_out)
            )

    @staticmethod
    def _conv(c_in: int, c_out: int, stride: int, mode: str) -> nn.Module:
        if mode == "3d":
            return nn.Conv3d(c_in, c_out, kernel_size=3, stride=(1, stride, stride), padding=1, bias=False)
        return nn.Sequential(
            nn.Conv3d(c_in, c_out, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


@register_model("deepgaitv2")
class DeepGaitV2(nn.Module):
    """DeepGaitV2: 2D stem and stage 1, 3D (or P3D) stages 2-4, temporal max pooling, horizontal pyramid pooling,
    separate per-part FCs (Fan et al., arXiv 2303.03301, Fig. 3 and Table 1).

    ``forward(silhouettes [n, T, H, W] in [0, 1]) -> embeddings [n, embed_dim, p]``; the BNNeck training head lives
    beside it (:class:`qgait.models.heads.GaitWithHead`), as for GaitBase.

    Args:
        width: channel multiplier (channels ``round(64 * width * 2**i)``, at least 4).
        strides: spatial stride of each of the 4 stages (DeepGaitV2: 1/2/2/1).
        blocks: blocks per stage (CASIA-B: ``(1, 1, 1, 1)``; DeepGaitV2-22: ``(1, 4, 4, 1)``).
        bins: horizontal strip counts of the pyramid pooling (``(16,)``).
        embed_dim: output channels of the per-part FCs (256).
        mode: ``"3d"`` or ``"p3d"`` blocks in stages 2-4.

    Raises:
        ValueError: not 4 strides / block counts, or an unknown ``mode``.
    """

    def __init__(
        self,
        width: float = 1.0,
        strides: Sequence[int] = (1, 2, 2, 1),
        blocks: Sequence[int] = (1, 1, 1, 1),
        bins: Sequence[int] = (16,),
        embed_dim: int = 256,
        mode: str = "3d",
    ) -> None:
        super().__init__()
        if len(strides) != 4 or len(blocks) != 4:
            raise ValueError("DeepGaitV2 needs 4 strides and 4 block counts")
        chans = [max(4, int(round(64 * width * 2**i))) for i in range(4)]
        stem: list[nn.Module] = [nn.Conv2d(1, chans[0], kernel_size=3, stride=1, padding=1, bias=False),
                                 nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True)]
        c_in = chans[0]
        for j in range(blocks[0]):
            stem.append(BasicBlock(c_in, chans[0], strides[0] if j == 0 else 1))
        self.stem2d = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        for c_out, stride, nb in zip(chans[1:], strides[1:], blocks[1:]):
            for j in range(nb):
                layers.append(BasicBlock3D(c_in, c_out, stride if j == 0 else 1, mode))
                c_in = c_out
        self.stages3d = nn.Sequential(*layers)
        self.temporal_pool = TemporalMaxPool()
        self.hpp = HorizontalPyramidPooling(bins)
        self.fcs = SeparateFCs(self.hpp.parts, chans[-1], embed_dim)
        self.embed_dim = embed_dim
        self.parts = self.hpp.parts
        init_weights(self)

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        n, t = silhouettes.shape[:2]
        x = self.stem2d(silhouettes.reshape(n * t, 1, *silhouettes.shape[2:]))  # [n*T, c, h, w]
        x = x.reshape(n, t, *x.shape[1:]).transpose(1, 2)  # [n, c, T, h, w]
        x = self.stages3d(x)  # [n, c, T, h', w']
        x = self.temporal_pool(x.transpose(1, 2))  # [n, c, h', w']
        x = self.hpp(x)  # [n, c, p]
        return self.fcs(x)  # [n, embed_dim, p]
