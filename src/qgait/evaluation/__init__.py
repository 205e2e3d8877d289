"""Evaluation: part distances, retrieval metrics (rank-k, mAP, mINP), the CASIA-B / OU-MVLP cross-view
protocol and Markdown / JSON reports. All accuracies are in percent (0-100)."""

from .cross_view import CASIA_B, OUMVLP, PROTOCOLS, CrossViewProtocol, evaluate_cross_view, get_protocol
from .distance import METRICS, part_distance
from .embedding_stats import embedding_drift, embedding_stats
from .report import format_comparison, format_cross_view, format_retrieval, write_results
from .retrieval import evaluate_retrieval, retrieval_metrics
from .stats import paired_difference, rank1_from_per_subject, seed_stats, subject_bootstrap

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
    "rank1_from_per_subject",
    "subject_bootstrap",
    "seed_stats",
    "paired_difference",
    "embedding_stats",
    "embedding_drift",
]
