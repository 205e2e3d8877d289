"""Small building blocks shared by the gait models.

Each block has one job and documents its tensor shapes. Shapes use ``n`` for sequences, ``T`` for frames,
``c`` for channels, ``h, w`` for feature-map height and width and ``p`` for parts (horizontal strips).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a batch norm follows)."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016): two 3x3 convs with batch norm and a shortcut.

    Each activation is its own ``nn.ReLU`` module (PT2E quantization refuses one module used twice).

    Shapes: ``[N, c_in, h, w] -> [N, c_out, h / stride, w / stride]``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class FrameWise(nn.Module):
    """Runs a 2D module on every frame by folding time into the batch.

    Shapes: ``[n, T, c, h, w] -> [n, T, c', h', w']``. ``T`` may differ between calls (dynamic in ONNX).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[0], x.shape[1]
        y = self.module(x.flatten(0, 1))  # [n*T, c', h', w']
        return y.reshape(n, t, *y.shape[1:])


class TemporalMaxPool(nn.Module):
    """Max over frames (set pooling): ``[n, T, c, h, w] -> [n, c, h, w]``.

    The order of frames does not matter, so unordered frame sampling in training and all frames at test agree.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=1)


class HorizontalPyramidPooling(nn.Module):
    """Horizontal pyramid pooling (Fu et al., AAAI 2019, as used by GaitSet and GaitBase).

    The map is cut into ``b`` horizontal strips for each ``b`` in ``bins``; each strip is pooled by mean + max.
    Shapes: ``[n, c, h, w] -> [n, c, p]`` with ``p = sum(bins)``.

    Raises:
        ValueError: if ``h`` is not divisible by a bin count (strips must be whole rows).
    """

    def __init__(self, bins: Sequence[int] = (16,)) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)

    @property
    def parts(self) -> int:
        return sum(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = []
        for b in self.bins:
            if h % b:
                raise ValueError(f"feature height {h} is not divisible by {b} strips; change the input size or bins")
            z = x.reshape(n, c, b, (h // b) * w)
            out.append(z.mean(dim=-1) + z.amax(dim=-1))
        return torch.cat(out, dim=-1)


class SeparateFCs(nn.Module):
    """One linear map per part, ``[n, c_in, p] -> [n, c_out, p]`` (GaitSet's and GaitBase's separate FCs).

    Written as a grouped 1x1 ``nn.Conv1d`` (``groups = p``) so that a quantization layer wraps it like any
    convolution (per-channel weight steps = per part and output channel) and ONNX Runtime's quantizer can
    handle it; there is no raw parameter matmul in ``forward``.
    """

    def __init__(self, parts: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.parts, self.c_in, self.c_out = parts, c_in, c_out
        self.fc = nn.Conv1d(parts * c_in, parts * c_out, kernel_size=1, groups=parts, bias=False)
        nn.init.xavier_uniform_(self.fc.weight.view(parts, c_out, c_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        z = x.permute(0, 2, 1).reshape(n, self.parts * self.c_in, 1)  # part-major groups
        y = self.fc(z).reshape(n, self.parts, self.c_out)
        return y.permute(0, 2, 1)


class BNNeckHead(nn.Module):
    """BNNeck with a cosine classifier (Luo et al., CVPR-W 2019; GaitBase, Fan et al., CVPR 2023).

    Training only: batch norm over the flattened embedding, then L2-normalised features times L2-normalised
    per-part class weights.

    Shapes: embeddings ``[n, c, p]`` -> ``(bn_embeddings [n, c, p], logits [n, C, p])``; logits are cosines in
    [-1, 1] (the cross-entropy scales them).
    """

    def __init__(self, channels: int, parts: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels * parts)
        self.weight = nn.Parameter(torch.empty(parts, channels, num_classes))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, p = emb.shape
        feat = self.bn(emb.reshape(n, c * p)).reshape(n, c, p)
        f = F.normalize(feat.permute(2, 0, 1), dim=-1)  # [p, n, c]
        wt = F.normalize(self.weight, dim=1)  # [p, c, C]
        logits = f.bmm(wt).permute(1, 2, 0)  # [n, C, p]
        return feat, logits


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions, unit batch norms, Xavier linears (in place)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
