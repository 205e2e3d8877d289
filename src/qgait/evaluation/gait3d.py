"""Gait3D protocol: probe / gallery split from the partition's probe list, then retrieval metrics.

Definition (Zheng et al., "Gait Recognition in the Wild with Dense 3D Representations and A Benchmark", CVPR
2022; as evaluated by OpenGait's ``evaluate_Gait3D`` in ``opengait/evaluation/evaluator.py``): the test set's
sequences are split by the ``PROBE_SET`` of the partition file (``datasets/Gait3D/Gait3D.json``, one probe
sequence per test identity, named ``"<subject>-<camera/video>-<sequence>"``, i.e. the three folder names of the
OpenGait layout joined by ``-``); every other test sequence is the gallery. The probe x gallery Euclidean
distance of the part embeddings (mean over parts) ranks the gallery for each probe; the report is rank-1 / 5 /
10 (CMC), mAP and mINP in percent (:func:`qgait.evaluation.retrieval.retrieval_metrics`; probes whose subject
has no gallery sequence are skipped, as OpenGait's ``evaluate_rank`` does).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from .retrieval import evaluate_retrieval

__all__ = ["GAIT3D_RANKS", "gait3d_sequence_name", "gait3d_probe_mask", "evaluate_gait3d"]

GAIT3D_RANKS = (1, 5, 10)
"""CMC ranks Gait3D reports."""


def gait3d_sequence_name(subject: str, condition: str, view: str) -> str:
    """The name a Gait3D probe list uses for the sequence ``subject/condition/view``:
    ``"0002-camid33_videoid2-seq0"`` for ``("0002", "camid33_videoid2", "seq0")``."""
    return f"{subject}-{condition}-{view}"


def gait3d_probe_mask(subjects: Sequence[str], conditions: Sequence[str], views: Sequence[str],
                      probe_set: Collection[str]) -> np.ndarray:
    """Which sequences are probes.

    Args:
        subjects, conditions, views: ``N`` folder names of each sequence (OpenGait layout).
        probe_set: probe sequence names (the partition's ``PROBE_SET``).

    Returns:
        bool array ``[N]``.

    Raises:
        ValueError: lengths differ; ``probe_set`` empty; no sequence is a probe, or every sequence is (the
            message shows a probe name and a sequence name, to spot a layout that does not match).
    """
    n = len(subjects)
    if len(conditions) != n or len(views) != n:
        raise ValueError(f"subjects ({n}), conditions ({len(conditions)}) and views ({len(views)}) differ in length")
    wanted = set(probe_set)
    if not wanted:
        raise ValueError("the probe list is empty")
    names = [gait3d_sequence_name(str(s), str(c), str(v)) for s, c, v in zip(subjects, conditions, views)]
    mask = np.array([name in wanted for name in names], dtype=bool)
    if not mask.any():
        raise ValueError(f"no sequence is in the probe list (probe names look like {sorted(wanted)[0]!r}; "
                         f"sequences look like {names[0] if names else None!r})")
    if mask.all():
        raise ValueError("every sequence is in the probe list: the gallery is empty")
    return mask


def evaluate_gait3d(embeddings, subjects: Sequence[str], conditions: Sequence[str], views: Sequence[str],
                    probe_set: Collection[str], metric: str = "euc") -> dict:
    """Gait3D rank-1 / 5 / 10, mAP and mINP (percent) of the test sequences' embeddings.

    Args:
        embeddings: ``[N, c, p]`` part embeddings (tensor or numpy).
        subjects, conditions, views: ``N`` folder names (subject, camera/video, sequence).
        probe_set: the partition's ``PROBE_SET`` (:func:`qgait.data.partition.load_partition` ``("gait3d").probe``).
        metric: ``"euc"`` (published) or ``"cos"``.

    Returns:
        :func:`~qgait.evaluation.retrieval.evaluate_retrieval`'s dict (``"rank-1"``, ``"rank-5"``,
        ``"rank-10"``, ``"mAP"``, ``"mINP"``, ``"num_probes"``, ``"num_skipped"``, ``"metric"``) plus
        ``"protocol": "Gait3D"`` and ``"num_gallery"``.

    Raises:
        ValueError: as :func:`gait3d_probe_mask` and :func:`evaluate_retrieval`.
    """
    mask = gait3d_probe_mask(subjects, conditions, views, probe_set)
    emb = embeddings
    idx_p, idx_g = np.flatnonzero(mask), np.flatnonzero(~mask)
    subj = [str(s) for s in subjects]
    out = evaluate_retrieval(emb[idx_p], [subj[i] for i in idx_p], emb[idx_g], [subj[i] for i in idx_g],
                             metric=metric, ranks=GAIT3D_RANKS)
    out["protocol"] = "Gait3D"
    out["num_gallery"] = int(idx_g.size)
    return out
