"""Batched tensor transforms from stored uint8 silhouettes to model input, and training augmentation.

Everything works on whole batches ``[B, T, H, W]`` with torch ops (no per-frame numpy in the training loop).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["CUT", "to_model_input", "GaitAugment"]

CUT = 10
"""Pixels cut off each side of a 64-wide frame (64 -> 44), as OpenGait's BaseSilCuttingTransform."""
_BASE = (64, 44)


def to_model_input(frames: torch.Tensor, size: tuple[int, int] = _BASE) -> torch.Tensor:
    """Stored silhouettes to model input: scale to [0, 1], cut the sides 64 -> 44, resize if asked.

    Args:
        frames: uint8 ``[B, T, H, W]`` or ``[T, H, W]`` with ``H == 64`` and ``W`` 64 (cut 10 px each side) or
            44 (already cut: left as is, never cut twice).
        size: output ``(h, w)`` in pixels; other than (64, 44) the cut frames are resized with bilinear
            interpolation (``align_corners=False``, antialiased).

    Returns:
        float32 tensor, same rank as ``frames``, ``[..., h, w]``, values in [0, 1], on ``frames``' device.

    Raises:
        TypeError: not a uint8 tensor. ValueError: wrong rank, frame size, or ``size``.
    """
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        desc = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise TypeError(f"to_model_input: expected a uint8 tensor, got {desc}")
    if frames.ndim not in (3, 4):
        raise ValueError(f"to_model_input: expected [B, T, H, W] or [T, H, W], got shape {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if h != 64 or w not in (64, 44):
        raise ValueError(f"to_model_input: frames of {h}x{w}, expected 64x64 or 64x44")
    oh, ow = (int(v) for v in size)
    if oh < 1 or ow < 1:
        raise ValueError(f"to_model_input: size {size} must be positive")
    if w == 64:
        frames = frames[..., CUT : 64 - CUT]
    x = frames.to(torch.float32).div_(255.0)
    if (oh, ow) != _BASE:
        lead = x.shape[:-2]
        x = F.interpolate(x.reshape(-1, 1, 64, 44), size=(oh, ow), mode="bilinear", align_corners=False,
                          antialias=True).reshape(*lead, oh, ow)
    return x.contiguous()


class GaitAugment:
    """Training augmentation of GaitBase's CASIA-B recipe, one parameter draw per SEQUENCE.

    Every frame of a sequence gets the same flip, rotation and erased rectangle. The draws depend only on the
    given ``torch.Generator`` (CPU), and the same number of values is drawn whatever gets applied, so a
    generator seeded from ``(seed, iteration, rank)`` reproduces the batch exactly.

    Args:
        rotation_prob: probability that a sequence is rotated.
        max_degrees: rotation angle drawn uniformly in ``[-max_degrees, max_degrees]`` degrees, about the frame
            centre (in pixel space, so the aspect ratio is respected); zero fill.
        erasing_prob: probability that a rectangle of a sequence is set to 0.
        erasing_area: erased area as a fraction of the frame, uniform in this range.
        erasing_aspect: erased height / width ratio, log-uniform in this range.
        flip_prob: probability of a horizontal flip (0: off, the default).

    Raises:
        ValueError: a probability outside [0, 1] or an invalid range.
    """

    def __init__(
        self,
        rotation_prob: float = 0.2,
        max_degrees: float = 10.0,
        erasing_prob: float = 0.2,
        erasing_area: tuple[float, float] = (0.02, 0.2),
        erasing_aspect: tuple[float, float] = (0.3, 3.3),
        flip_prob: float = 0.0,
    ) -> None:
        for name, p in (("rotation_prob", rotation_prob), ("erasing_prob", erasing_prob), ("flip_prob", flip_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"GaitAugment: {name}={p} outside [0, 1]")
        if max_degrees < 0:
            raise ValueError(f"GaitAugment: max_degrees={max_degrees} must be >= 0")
        if not 0.0 < erasing_area[0] <= erasing_area[1] <= 1.0:
            raise ValueError(f"GaitAugment: erasing_area={erasing_area} must satisfy 0 < lo <= hi <= 1")
        if not 0.0 < erasing_aspect[0] <= erasing_aspect[1]:
            raise ValueError(f"GaitAugment: erasing_aspect={erasing_aspect} must satisfy 0 < lo <= hi")
        self.rotation_prob, self.max_degrees = float(rotation_prob), float(max_degrees)
        self.erasing_prob = float(erasing_prob)
        self.erasing_area = (float(erasing_area[0]), float(erasing_area[1]))
        self.erasing_aspect = (float(erasing_aspect[0]), float(erasing_aspect[1]))
        self.flip_prob = float(flip_prob)

    def __repr__(self) -> str:
        return (f"GaitAugment(rotation_prob={self.rotation_prob}, max_degrees={self.max_degrees}, "
                f"erasing_prob={self.erasing_prob}, erasing_area={self.erasing_area}, "
                f"erasing_aspect={self.erasing_aspect}, flip_prob={self.flip_prob})")

    def draw(self, batch: int, height: int, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw the per-sequence parameters (CPU tensors of length ``batch``).

        Returns:
            ``{"flip": bool, "rotate": bool, "angle": float32 radians, "erase": bool, "top", "left", "eh",
            "ew": int64 pixels}``; exactly 9 uniform draws per sequence, whatever is applied.
        """
        u = torch.rand(batch, 9, generator=generator, dtype=torch.float64)
        area = (self.erasing_area[0] + (self.erasing_area[1] - self.erasing_area[0]) * u[:, 4]) * height * width
        log_lo, log_hi = math.log(self.erasing_aspect[0]), math.log(self.erasing_aspect[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 5])
        eh = torch.sqrt(area * aspect).round().clamp(1, height).to(torch.int64)
        ew = torch.sqrt(area / aspect).round().clamp(1, width).to(torch.int64)
        top = (u[:, 6] * (height - eh + 1)).floor().to(torch.int64).clamp(max=height - 1)
        left = (u[:, 7] * (width - ew + 1)).floor().to(torch.int64).clamp(max=width - 1)
        return {
            "flip": u[:, 0] < self.flip_prob,
            "rotate": u[:, 1] < self.rotation_prob,
            "angle": ((u[:, 2] * 2 - 1) * math.radians(self.max_degrees)).to(torch.float32),
            "erase": u[:, 3] < self.erasing_prob,
            "top": top, "left": left, "eh": eh, "ew": ew,
            # u[:, 8] is reserved so that adding one more option keeps the stream of earlier draws unchanged
        }

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch of sequences.

        Args:
            x: float ``[B, T, H, W]`` (any device).
            generator: a CPU ``torch.Generator``; the only source of randomness.

        Returns:
            A new tensor of the same shape, dtype and device (``x`` is not modified).

        Raises:
            ValueError: ``x`` not 4-D or not floating point.
        """
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"GaitAugment: expected float [B, T, H, W], got {x.dtype} {tuple(x.shape)}")
        b, t, h, w = x.shape
        prm = self.draw(b, h, w, generator)
        out = x.clone()
        flip = torch.nonzero(prm["flip"]).flatten().tolist()
        if flip:
            out[flip] = out[flip].flip(-1)
        rot = torch.nonzero(prm["rotate"]).flatten().tolist()
        if rot:
            out[rot] = self._rotate(out[rot], prm["angle"][rot].to(x.device))
        erase = prm["erase"]
        if bool(erase.any()):
            rows = torch.arange(h).view(1, h, 1)
            cols = torch.arange(w).view(1, 1, w)
            top, left = prm["top"].view(b, 1, 1), prm["left"].view(b, 1, 1)
            box = ((rows >= top) & (rows < top + prm["eh"].view(b, 1, 1))
                   & (cols >= left) & (cols < left + prm["ew"].view(b, 1, 1)))  # [B, H, W]
            mask = (box & erase.view(b, 1, 1)).unsqueeze(1).to(x.device)  # same box for every frame
            out = out.masked_fill(mask, 0.0)
        return out

    @staticmethod
    def _rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Rotate every frame of sequence ``i`` by ``angle[i]`` radians about the frame centre (zero fill).

        ``x`` float ``[n, T, H, W]``, ``angle`` ``[n]``. ``affine_grid`` works in coordinates normalised to
        [-1, 1] per axis, so the pixel-space rotation is rescaled by the aspect ratio.
        """
        n, t, h, w = x.shape
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        # output pixel (u, v) samples input R(-angle) (u, v); in normalised coordinates x_n = u / (w/2), y_n = v / (h/2)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = sin * (h / w)
        theta[:, 1, 0] = -sin * (w / h)
        theta[:, 1, 1] = cos
        grid = F.affine_grid(theta.repeat_interleave(t, dim=0), [n * t, 1, h, w], align_corners=False)
        y = F.grid_sample(x.reshape(n * t, 1, h, w), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
        return y.reshape(n, t, h, w)
