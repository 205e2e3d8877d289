"""Distillation plumbing (GaitKD, arXiv 2604.26255; methods.md 2): frozen teachers, their output cache and
teacher-student alignment.

The losses themselves are in :mod:`qgait.losses.distill`.
"""

from .align import PartConnector, align_pair, align_parts, build_connector, common_parts
from .cache import TeacherOutputCache
from .teacher import MultiTeacher, Teacher

__all__ = ["MultiTeacher", "PartConnector", "Teacher", "TeacherOutputCache", "align_pair", "align_parts",
           "build_connector", "common_parts"]
