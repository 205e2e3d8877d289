"""Evaluation: part distances, retrieval metrics (rank-k, mAP, mINP), the CASIA-B / OU-MVLP cross-view
protocol and Markdown / JSON reports. All accuracies are in percent (0-100)."""

from .cross_view import CASIA_B, OUMVLP, PROTOCOLS, CrossViewProtocol, evaluate_cross_view, get_protocol
from .distance import METRICS, part_distance
from .report import format_comparison, format_cross_view, format_retrieval, write_results
from .retrieval import evaluate_retrieval, retrieval_metrics

__all__ = [
    "CASIA_B",
    "OUMVLP",
    "PROTOCOLS",
    "CrossViewProtocol",
    "evaluate_cross_view",
    "get_protocol",
    "METRICS",
    "part_distance",
    "evaluate_retrieval",
    "retrieval_metrics",
    "format_comparison",
    "format_cross_view",
    "format_retrieval",
    "write_results",
]
