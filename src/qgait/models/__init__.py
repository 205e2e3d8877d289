"""Gait recognition models: GaitBase, GaitSet, their shared blocks and the model registry (importing the
model classes registers them)."""

from .gaitbase import GaitBase
from .gaitset import GaitSet
from .heads import GaitWithHead
from .registry import available_models, build_model, register_model

__all__ = ["GaitBase", "GaitSet", "GaitWithHead", "available_models", "build_model", "register_model"]
