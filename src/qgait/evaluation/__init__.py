"""Evaluation: part distances, retrieval metrics (rank-k, mAP, mINP), the CASIA-B / OU-MVLP cross-view
protocols (``OU-MVLP`` and ``OU-MVLP-valid``), the Gait3D, GREW, CCPG and SUSTech1K protocols and Markdown /
JSON reports. All accuracies are in percent (0-100), except the biometric
operating-point rates (FMR, FNMR, TAR, EER, FPIR, FNIR, DIR: ``verification``, ``open_set``,
``biometric_report``), which are fractions in [0, 1]."""

from .biometric_report import verification_report, verification_summary
from .ccpg import evaluate_ccpg
from .cross_view import CASIA_B, OUMVLP, OUMVLP_VALID, PROTOCOLS, CrossViewProtocol, evaluate_cross_view, get_protocol
from .gait3d import evaluate_gait3d
from .grew import evaluate_grew, grew_submission_rows, write_grew_submission
from .sustech1k import evaluate_sustech1k
from .curves import plot_verification_curves
from .distance import METRICS, part_distance
from .embedding_stats import embedding_drift, embedding_stats
from .open_set import (
    FPIR_TARGETS,
    OpenSetScores,
    dir_at_fpir,
    fpir_fnir,
    open_set_curve,
    open_set_scores,
    sampled_open_set_curve,
    split_subjects,
)
from .report import format_comparison, format_cross_view, format_retrieval, write_results
from .retrieval import evaluate_retrieval, retrieval_metrics
from .stats import paired_difference, rank1_from_per_subject, seed_stats, subject_bootstrap
from .verification import (
    FMR_TARGETS,
    equal_error_rate,
    error_rates,
    genuine_impostor_scores,
    roc_curve,
    sampled_roc_curve,
    tar_at_fmr,
)

__all__ = [
    "CASIA_B",
    "OUMVLP",
    "OUMVLP_VALID",
    "evaluate_gait3d",
    "evaluate_grew",
    "grew_submission_rows",
    "write_grew_submission",
    "evaluate_ccpg",
    "evaluate_sustech1k",
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
    "FMR_TARGETS",
    "genuine_impostor_scores",
    "error_rates",
    "roc_curve",
    "sampled_roc_curve",
    "equal_error_rate",
    "tar_at_fmr",
    "FPIR_TARGETS",
    "OpenSetScores",
    "split_subjects",
    "open_set_scores",
    "fpir_fnir",
    "open_set_curve",
    "sampled_open_set_curve",
    "dir_at_fpir",
    "verification_summary",
    "verification_report",
    "plot_verification_curves",
]
