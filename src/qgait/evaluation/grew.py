"""GREW protocol: rank-1 / 5 / 10 / 20 on the labelled test split, and the submission file for its server.

GREW (Zhu et al., "Gait Recognition in the Wild: A Benchmark", ICCV 2021) hides the labels of its test probes:
the official figures come from a server that scores a CSV of the 20 best-ranked identities per probe. Both
follow OpenGait's ``opengait/evaluation/evaluator.py`` on its GREW layout (``datasets/GREW``: each test
identity's two labelled sequences are conditions ``01`` and ``02``; the unlabelled probes sit under subject
``probe``, condition ``03``, one folder per probe video id):

* :func:`evaluate_grew` (``evaluate_real_scene``): gallery = condition ``01``, probes = condition ``02`` of the
  labelled test identities; CMC rank-1 / 5 / 10 / 20 of the nearest gallery sequences (Euclidean on part
  embeddings), in percent. A local figure for regression checks, not the server's.
* :func:`grew_submission_rows` / :func:`write_grew_submission` (``GREW_submission``): gallery = conditions
  ``01`` and ``02``, probes = condition ``03``; header
  ``videoId,rank1,rank2,...,rank20``, then one row per probe: its video id (the view folder name) and the
  labels of its 20 nearest gallery *sequences* in order (a label may repeat, as in OpenGait), written as
  integers (``"00012"`` -> ``12``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .distance import part_distance
from .retrieval import evaluate_retrieval

__all__ = ["GREW_RANKS", "GREW_GALLERY", "GREW_PROBE", "GREW_SUBMISSION_GALLERY", "GREW_SUBMISSION_PROBE",
           "GREW_SUBMISSION_HEADER", "evaluate_grew", "grew_submission_rows", "write_grew_submission"]

GREW_RANKS = (1, 5, 10, 20)
GREW_GALLERY = ("01",)
GREW_PROBE = ("02",)
GREW_SUBMISSION_GALLERY = ("01", "02")
GREW_SUBMISSION_PROBE = ("03",)
NUM_SUBMITTED = 20
GREW_SUBMISSION_HEADER = "videoId," + ",".join(f"rank{k}" for k in range(1, NUM_SUBMITTED + 1))


def _pick(conditions: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    return np.flatnonzero(np.isin(np.asarray([str(c) for c in conditions]), list(wanted)))


def evaluate_grew(embeddings, subjects: Sequence[str], conditions: Sequence[str], metric: str = "euc") -> dict:
    """GREW's labelled-split rank-1 / 5 / 10 / 20 (percent): probes condition ``02``, gallery condition ``01``.

    Args:
        embeddings: ``[N, c, p]`` (tensor or numpy) of the test sequences.
        subjects, conditions: ``N`` folder names; sequences of other conditions (e.g. the ``03`` probes) are
            ignored.
        metric: ``"euc"`` (published) or ``"cos"``.

    Returns:
        :func:`~qgait.evaluation.retrieval.evaluate_retrieval`'s dict (rank-1/5/10/20, mAP, mINP, counts, metric)
        plus ``"protocol": "GREW"`` and ``"num_gallery"``.

    Raises:
        ValueError: no ``01`` or no ``02`` sequence (the conditions found are listed); as
            :func:`evaluate_retrieval`.
    """
    g, p = _pick(conditions, GREW_GALLERY), _pick(conditions, GREW_PROBE)
    if g.size == 0 or p.size == 0:
        raise ValueError(f"GREW needs gallery condition {GREW_GALLERY} and probe condition {GREW_PROBE}; found "
                         f"conditions {sorted(set(map(str, conditions)))[:10]}")
    subj = [str(s) for s in subjects]
    out = evaluate_retrieval(embeddings[p], [subj[i] for i in p], embeddings[g], [subj[i] for i in g],
                             metric=metric, ranks=GREW_RANKS)
    out["protocol"] = "GREW"
    out["num_gallery"] = int(g.size)
    return out


def grew_submission_rows(embeddings, subjects: Sequence[str], conditions: Sequence[str], views: Sequence[str],
                         metric: str = "euc") -> list[tuple[str, list[str]]]:
    """For each unlabelled probe (condition ``03``), its video id and the labels of its 20 nearest gallery
    sequences (conditions ``01`` / ``02``), nearest first; ties go to the earlier gallery sequence.

    Args:
        embeddings: ``[N, c, p]``; subjects / conditions / views: ``N`` folder names (a probe's video id is its
            view folder).

    Returns:
        ``[(video_id, [label x 20]), ...]`` in input order; labels as strings, as in the data. With fewer than 20
        gallery sequences, the list is shorter.

    Raises:
        ValueError: no probe or no gallery sequence.
    """
    g, p = _pick(conditions, GREW_SUBMISSION_GALLERY), _pick(conditions, GREW_SUBMISSION_PROBE)
    if g.size == 0 or p.size == 0:
        raise ValueError(f"GREW submission needs gallery conditions {GREW_SUBMISSION_GALLERY} and probe condition "
                         f"{GREW_SUBMISSION_PROBE}; found conditions {sorted(set(map(str, conditions)))[:10]}")
    emb = torch.as_tensor(np.asarray(embeddings)) if not isinstance(embeddings, torch.Tensor) else embeddings
    dist = part_distance(emb[torch.as_tensor(p)], emb[torch.as_tensor(g)], metric=metric)  # [n_probe, n_gallery]
    order = torch.sort(dist, dim=1, stable=True).indices[:, :NUM_SUBMITTED].numpy()
    labels = [str(subjects[i]) for i in g]
    return [(str(views[i]), [labels[j] for j in order[r]]) for r, i in enumerate(p)]


def _as_int_label(label: str) -> str:
    try:
        return str(int(label))
    except ValueError:
        raise ValueError(f"GREW submission labels must be numeric identity ids, got {label!r}") from None


def write_grew_submission(rows: Sequence[tuple[str, Sequence[str]]], path: str | Path) -> Path:
    """Write the CSV GREW's server scores (format of OpenGait's ``GREW_submission``), atomically.

    Args:
        rows: ``(video_id, labels)`` pairs (:func:`grew_submission_rows`), each with exactly 20 labels.
        path: the CSV file to write (its folder must exist).

    Returns:
        ``path``.

    Raises:
        ValueError: no rows; a row without 20 labels; a non-numeric label; a video id with a comma or newline.
    """
    if not rows:
        raise ValueError("no probe rows to write")
    lines = [GREW_SUBMISSION_HEADER]
    for video_id, labels in rows:
        if len(labels) != NUM_SUBMITTED:
            raise ValueError(f"probe {video_id!r}: {len(labels)} labels, the submission needs {NUM_SUBMITTED} "
                             f"(is the gallery smaller than {NUM_SUBMITTED} sequences?)")
        if any(ch in str(video_id) for ch in ",\n\r"):
            raise ValueError(f"video id {video_id!r} holds a comma or a line break")
        lines.append(",".join([str(video_id), *(_as_int_label(x) for x in labels)]))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
