"""Distillation plumbing (GaitKD, arXiv 2604.26255; methods.md 2): frozen teachers and teacher-student alignment.

The losses themselves are in :mod:`qgait.losses.distill`.
"""

from .align import PartConnector, align_pair, align_parts, build_connector, common_parts
from .teacher import MultiTeacher, Teacher

__all__ = ["MultiTeacher", "PartConnector", "Teacher", "align_pair", "align_parts", "build_connector", "common_parts"]
