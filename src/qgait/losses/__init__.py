"""Losses that consume a model's named outputs: triplet, cross-entropy (and, in their own modules, IDC and
distillation terms)."""

from .combined import LossSum
from .cross_entropy import PartCrossEntropy
from .triplet import TripletLoss, pairwise_part_distance

__all__ = ["LossSum", "PartCrossEntropy", "TripletLoss", "pairwise_part_distance"]
