"""extract_embeddings: one embedding per sequence, and the model moved to where the sequences go."""

from __future__ import annotations

import torch
from torch import nn

from qgait.evaluation.extract import extract_embeddings


class _MeanPool(nn.Module):
    """``[1, T, h, w] -> [1, 2, 1]``: the mean and max silhouette value; records where ``to`` sent it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.moved_to: list[str] = []

    def to(self, *args, **kwargs):  # noqa: D102 - records the device, then moves as nn.Module does
        self.moved_to.append(str(torch.device(args[0])) if args else str(kwargs.get("device")))
        return super().to(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.device == self.scale.device, "the sequence and the weights must be on one device"
        return torch.stack([x.mean(), x.amax()]).mul(self.scale).reshape(1, 2, 1)


def test_one_embedding_per_sequence_and_model_moved_to_device(small_store):
    """A checkpoint loads on the CPU; the evaluation on a GPU failed with 'Input type (cuda) and weight type
    (cpu)' until the module was moved to the extraction device (found on an H200, 2026-12-04)."""
    idx = list(range(3))
    model = _MeanPool()
    emb = extract_embeddings(model, small_store, idx, size=(32, 22), max_frames=8, device="cpu", progress=False)
    assert emb.shape == (3, 2, 1) and emb.device.type == "cpu"
    assert model.moved_to == ["cpu"]
    assert not model.training
    assert bool((emb[:, 1] >= emb[:, 0]).all()) and bool((emb[:, 1] <= 1).all())  # max >= mean, silhouettes in [0, 1]
