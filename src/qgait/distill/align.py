"""Aligning a heterogeneous teacher-student pair: part counts (pooling) and embedding widths (a connector).

GaitKD (arXiv 2604.26255) distils part-wise outputs ``[n, *, p]``; a teacher and a student may differ in the
part count ``p`` and the embedding width ``c``.

- **Parts** (:func:`align_parts`, :func:`common_parts`): both sides are brought to the common count
  ``q = min(p_s, p_t)``; the side that already has ``q`` parts is unchanged. ``mode="pool"`` (default):
  adaptive average pooling over the part axis (``F.adaptive_avg_pool1d``): output part ``i`` is the mean of the
  input parts ``floor(i p / q) .. ceil((i + 1) p / q) - 1``; when ``q`` divides ``p`` these are the ``p / q``
  consecutive strips that make up output strip ``i`` (16 -> 8: strips 2i and 2i + 1), so, for GaitBase-style
  horizontal strips, a pooled part covers the same body rows as the coarser model's part. ``mode="truncate"``:
  the first ``q`` parts (methods.md 2's reading of the reference code); only meaningful when the part orders
  agree. Neither mode can add parts.
- **Widths** (:class:`PartConnector`): a learnable per-part linear map ``[n, c_s, p_s] -> [n, c_t, p_s]`` on the
  student's embeddings, applied before the part alignment (like the connector of Heo et al., AAAI 2019, which is
  a 1x1 convolution on the student's features). It is a training-only module: it belongs to the distillation
  loss term, never to the student's inference model, so it is not exported and adds no inference cost.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PART_ALIGN_MODES", "align_parts", "common_parts", "align_pair", "PartConnector", "build_connector"]

PART_ALIGN_MODES = ("pool", "truncate")


def _check_mode(mode: str) -> None:
    if mode not in PART_ALIGN_MODES:
        raise ValueError(f"part_align must be one of {PART_ALIGN_MODES}, got {mode!r}")


def align_parts(x: Tensor, parts: int, mode: Literal["pool", "truncate"] = "pool") -> Tensor:
    """Reduce the part axis (the last) of ``x [n, c, p]`` to ``parts``.

    Args:
        x: ``[n, c, p]`` part-wise tensor (embeddings or logits, any float dtype).
        parts: the target count, ``1 <= parts <= p``.
        mode: ``"pool"``: adaptive average pooling over parts (see the module docstring); ``"truncate"``: the
            first ``parts`` parts.

    Returns:
        ``[n, c, parts]`` (``x`` itself when ``parts == p``); differentiable.

    Raises:
        ValueError: ``x`` not 3-D, ``parts`` outside ``[1, p]``, unknown ``mode``.
    """
    _check_mode(mode)
    if x.dim() != 3:
        raise ValueError(f"expected a part-wise tensor [n, c, p], got shape {tuple(x.shape)}")
    p = x.shape[-1]
    if not 1 <= parts <= p:
        raise ValueError(f"cannot align {p} parts to {parts}: only pooling to 1..{p} parts is possible")
    if parts == p:
        return x
    if mode == "truncate":
        return x[..., :parts]
    return F.adaptive_avg_pool1d(x, parts)


def common_parts(*counts: int) -> int:
    """The part count a pair (or set) is aligned to: ``min(counts)``."""
    if not counts or min(counts) < 1:
        raise ValueError(f"part counts must be >= 1, got {counts}")
    return min(counts)


def align_pair(a: Tensor, b: Tensor, mode: Literal["pool", "truncate"] = "pool") -> tuple[Tensor, Tensor]:
    """Both ``[n, *, p_a]`` and ``[n, *, p_b]`` aligned to ``min(p_a, p_b)`` parts (:func:`align_parts`)."""
    q = common_parts(a.shape[-1], b.shape[-1])
    return align_parts(a, q, mode), align_parts(b, q, mode)


class PartConnector(nn.Module):
    """A learnable linear map per part, ``[n, c_in, p] -> [n, c_out, p]``: ``y[:, :, k] = W_k x[:, :, k] + b_k``.

    The training-only width connector between a student's embeddings (``c_in = c_s``) and a teacher's
    (``c_out = c_t``). Weights ``[p, c_out, c_in]`` are Xavier-uniform per part (as :class:`SeparateFCs`), or the
    identity when ``identity_init`` and ``c_in == c_out``; biases start at 0. The input is cast to the weight's
    dtype (so bf16 autocast outputs work) and the output has the weight's dtype.

    Raises:
        ValueError: non-positive sizes (construction); an input that is not ``[n, c_in, p]`` (forward).
    """

    def __init__(self, parts: int, c_in: int, c_out: int, bias: bool = True, identity_init: bool = False) -> None:
        super().__init__()
        if min(parts, c_in, c_out) < 1:
            raise ValueError(f"parts, c_in and c_out must be >= 1, got {parts}, {c_in}, {c_out}")
        self.parts, self.c_in, self.c_out = int(parts), int(c_in), int(c_out)
        self.weight = nn.Parameter(torch.empty(self.parts, self.c_out, self.c_in))
        self.bias = nn.Parameter(torch.zeros(self.parts, self.c_out)) if bias else None
        if identity_init and c_in == c_out:
            with torch.no_grad():
                self.weight.copy_(torch.eye(c_in).expand(self.parts, c_in, c_in))
        else:
            bound = math.sqrt(6.0 / (c_in + c_out))  # Xavier-uniform of each part's [c_out, c_in] matrix
            nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.c_in or x.shape[2] != self.parts:
            raise ValueError(
                f"PartConnector expects [n, {self.c_in}, {self.parts}] (student width, student parts), "
                f"got {tuple(x.shape)}"
            )
        y = torch.einsum("ncp,poc->nop", x.to(self.weight.dtype), self.weight)
        if self.bias is not None:
            y = y + self.bias.t().unsqueeze(0)
        return y

    def extra_repr(self) -> str:
        return f"parts={self.parts}, c_in={self.c_in}, c_out={self.c_out}, bias={self.bias is not None}"


def build_connector(student_parts: int, student_width: int, teacher_width: int, **kwargs) -> PartConnector | None:
    """A :class:`PartConnector` ``[c_s -> c_t]`` over the student's parts, or ``None`` when the widths agree."""
    if student_width == teacher_width:
        return None
    return PartConnector(student_parts, student_width, teacher_width, **kwargs)
