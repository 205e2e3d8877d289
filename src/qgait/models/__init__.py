"""Gait recognition models: GaitBase, GaitSet, DeepGaitV2, their shared blocks and the model registry (importing the
model classes registers them)."""

from .deepgaitv2 import DeepGaitV2
from .gaitbase import GaitBase
from .gaitset import GaitSet
from .heads import GaitWithHead
from .registry import available_models, build_model, register_model

__all__ = ["DeepGaitV2", "GaitBase", "GaitSet", "GaitWithHead", "available_models", "build_model", "register_model"]
