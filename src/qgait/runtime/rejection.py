"""Calibrated rejection for open-set identification: a distance threshold chosen for a target false match rate
(FMR) on a calibration split, stored in the exported model's ``qgait`` metadata, so that ``qgait identify``
answers "unknown" for a probe whose nearest enrolled subject is farther than the threshold (issue 17).

Calibration (:func:`calibrate_threshold`): every unordered pair of distinct calibration sequences is one
comparison, *genuine* when both are of one subject and *impostor* otherwise (ISO/IEC 19795-1:2021 terms,
:mod:`qgait.evaluation.verification`). The threshold is the largest observed distance whose FMR on the impostor
comparisons is at most the target (:func:`qgait.evaluation.verification.tar_at_fmr`); a probe is accepted as a
gallery subject iff its distance to that subject's nearest gallery sequence is ``<= threshold``. Distances are
:func:`qgait.evaluation.distance.part_distance` in float64, the function ``identify`` ranks with, so the
threshold is in the units of the metric it was calibrated with (``"euc"``: part-averaged Euclidean distance;
``"cos"``: 1 - mean part cosine) and is refused for the other.

What the target controls. FMR is a one-to-one rate. Identification compares a probe with every gallery
sequence, so a non-enrolled probe is falsely accepted when *any* of them is within the threshold: with ``N``
gallery sequences of independent impostor scores, the false positive identification rate is about
``1 - (1 - FMR)^N``, i.e. ``N * FMR`` while that is small. Choose the target FMR with the gallery size in mind
(``docs/identification.md`` gives the measured FPIR on CASIA-B). The calibration subjects must not be the
model's training subjects (its impostor distances there are larger than on unseen people, which makes the
threshold too loose); on CASIA-B, calibrate on part of the test subjects and measure on the rest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "META_FIELD",
    "RejectionThreshold",
    "calibration_scores",
    "calibrate_threshold",
    "threshold_of",
    "write_threshold",
]

#: The key of the ``qgait`` metadata JSON that holds the rejection threshold.
META_FIELD = "rejection"

_METRICS = ("euc", "cos")


@dataclass(frozen=True)
class RejectionThreshold:
    """A distance threshold for open-set decisions and how it was calibrated.

    Attributes:
        threshold: distance (units of ``metric``); a probe is accepted iff its distance ``<= threshold``.
        metric: ``"euc"`` or ``"cos"`` (:func:`qgait.evaluation.distance.part_distance`).
        target_fmr: the FMR asked for, a fraction in ``(0, 1]`` (``1e-3``, not 0.1 percent).
        fmr: the FMR achieved on the calibration comparisons (``<= target_fmr``).
        tar: the true accept rate (1 - FNMR) on the calibration comparisons at ``threshold``.
        num_genuine, num_impostor: calibration comparisons of each kind.
        calibration: where the calibration sequences came from (free-form, recorded for the user).

    Raises:
        ValueError: a non-finite threshold, an unknown metric, rates outside ``[0, 1]``, counts below 1.
    """

    threshold: float
    metric: str
    target_fmr: float
    fmr: float
    tar: float
    num_genuine: int
    num_impostor: int
    calibration: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            for name in ("threshold", "target_fmr", "fmr", "tar"):
                object.__setattr__(self, name, float(getattr(self, name)))
            for name in ("num_genuine", "num_impostor"):
                object.__setattr__(self, name, int(getattr(self, name)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed rejection threshold: {exc}") from None
        if not math.isfinite(self.threshold):
            raise ValueError(f"rejection threshold must be a finite distance, got {self.threshold}")
        if self.metric not in _METRICS:
            raise ValueError(f"rejection metric must be one of {_METRICS}, got {self.metric!r}")
        if not 0.0 < self.target_fmr <= 1.0:
            raise ValueError(f"target FMR must be in (0, 1] (a fraction: 1e-3, not 0.1 percent), got "
                             f"{self.target_fmr}")
        for name in ("fmr", "tar"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")
        if self.num_genuine < 1 or self.num_impostor < 1:
            raise ValueError("a rejection threshold needs genuine and impostor calibration comparisons, got "
                             f"{self.num_genuine} and {self.num_impostor}")
        if not isinstance(self.calibration, dict):
            raise ValueError(f"calibration must be a dict, got {type(self.calibration).__name__}")

    def accepts(self, distance: float) -> bool:
        """Whether a probe at ``distance`` from a subject is accepted as that subject (``distance <= threshold``)."""
        return float(distance) <= self.threshold

    def describe(self) -> str:
        """``threshold 12.3456 (euc) at FMR 1e-03 (TAR 0.912 on 3,300 genuine / 1,200,000 impostor pairs)``."""
        return (f"threshold {self.threshold:.4f} ({self.metric}) at FMR {self.target_fmr:.0e} (TAR {self.tar:.3f} on "
                f"{self.num_genuine:,} genuine / {self.num_impostor:,} impostor calibration pairs)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> RejectionThreshold:
        """Read :meth:`to_dict`'s output.

        Raises:
            ValueError: not a dict, a field missing or malformed.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a rejection threshold must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("threshold", "metric", "target_fmr", "fmr", "tar", "num_genuine", "num_impostor")
                   if k not in d]
        if missing:
            raise ValueError(f"rejection threshold lacks {missing}")
        return cls(d["threshold"], d["metric"], d["target_fmr"], d["fmr"], d["tar"], d["num_genuine"],
                   d["num_impostor"], d.get("calibration", {}))


def calibration_scores(embeddings: Any, labels: list, metric: str = "euc") -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor distances of every unordered pair of distinct calibration sequences.

    Args:
        embeddings: ``[n, c, p]`` float (numpy array or tensor), finite.
        labels: ``n`` subject labels (compared as strings).
        metric: ``"euc"`` or ``"cos"``.

    Returns:
        ``(genuine, impostor)``: 1-D float64 arrays sorted ascending, ``n (n - 1) / 2`` values in all.

    Raises:
        ValueError: fewer than 2 sequences, a label count that does not match, fewer than 2 subjects (no
            impostor pair), no subject with 2 sequences (no genuine pair); see ``part_distance`` for the
            embeddings.
    """
    import torch

    from ..evaluation.distance import part_distance

    emb = embeddings if isinstance(embeddings, torch.Tensor) else torch.from_numpy(np.asarray(embeddings))
    if emb.ndim != 3 or emb.shape[0] < 2:
        raise ValueError(f"calibration needs at least 2 embeddings [n, c, p], got shape {list(emb.shape)}")
    labs = np.array([str(v) for v in labels])
    if len(labs) != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} calibration embeddings but {len(labs)} labels")
    if len(set(labs)) < 2:
        raise ValueError("calibration needs sequences of at least 2 subjects (impostor pairs)")
    d = part_distance(emb, emb, metric=metric).numpy()
    iu = np.triu_indices(len(labs), k=1)
    same = labs[iu[0]] == labs[iu[1]]
    if not same.any():
        raise ValueError("calibration needs at least one subject with 2 sequences (genuine pairs)")
    vals = d[iu]
    return np.sort(vals[same]), np.sort(vals[~same])


def calibrate_threshold(embeddings: Any, labels: list, target_fmr: float = 1e-3, metric: str = "euc",
                        calibration: dict | None = None) -> RejectionThreshold:
    """The threshold of largest TAR with FMR ``<= target_fmr`` on the calibration pairs (module docstring).

    Args:
        embeddings: ``[n, c, p]`` calibration embeddings of the model the threshold is for.
        labels: their ``n`` subject labels.
        target_fmr: a fraction in ``(0, 1]``.
        metric: ``"euc"`` or ``"cos"``.
        calibration: a description of the calibration split, stored with the threshold.

    Raises:
        ValueError: see :func:`calibration_scores`; a target outside ``(0, 1]``; fewer than ``1 / target_fmr``
            impostor pairs (the target cannot be told apart from 0: enlarge the split or raise the target); no
            threshold accepts anything at that FMR.
    """
    from ..evaluation.verification import tar_at_fmr

    if not 0.0 < float(target_fmr) <= 1.0:
        raise ValueError(f"target FMR must be in (0, 1] (a fraction: 1e-3, not 0.1 percent), got {target_fmr}")
    genuine, impostor = calibration_scores(embeddings, labels, metric)
    (row,) = tar_at_fmr(genuine, impostor, [float(target_fmr)])
    if not row["resolved"]:
        raise ValueError(f"FMR {target_fmr:g} needs at least {math.ceil(1 / target_fmr):,} impostor pairs; the "
                         f"calibration split gives {len(impostor):,} (add sequences or subjects, or raise the "
                         "target FMR)")
    if not math.isfinite(row["threshold"]):
        raise ValueError(f"no distance threshold accepts any pair at FMR {target_fmr:g} on this calibration split")
    return RejectionThreshold(row["threshold"], metric, float(target_fmr), row["fmr"], row["tar"], len(genuine),
                              len(impostor), dict(calibration or {}))


def threshold_of(meta: dict, where: str = "model") -> RejectionThreshold | None:
    """The threshold stored in a model's ``qgait`` metadata (:attr:`qgait.runtime.GaitEmbedder.meta`), or None.

    Raises:
        ValueError: a stored threshold that is malformed (names ``where``).
    """
    entry = (meta or {}).get(META_FIELD)
    if entry is None:
        return None
    try:
        return RejectionThreshold.from_dict(entry)
    except ValueError as exc:
        raise ValueError(f"{where}: its stored rejection threshold is malformed ({exc}); calibrate it again with "
                         "qgait calibrate") from None


def write_threshold(model_path: str | Path, output: str | Path, threshold: RejectionThreshold | None) -> Path:
    """Copy an exported model (``.onnx`` or packed ``.qgpack``) to ``output`` with ``threshold`` in its ``qgait``
    metadata (``None``: the stored threshold removed). The graph and weights are unchanged; the output has the
    input's format. Written atomically; the caller checks that ``output`` is not the input
    (:func:`qgait.workflows.outputs.check_outputs`).

    Note that the copy is a different file: a gallery records the SHA-256 of the model file it was built with
    (:mod:`qgait.runtime.identity`), so calibrate before enrolling.

    Raises:
        ModelLoadError: the input is missing or not a readable model.
        ValueError: ``output``'s suffix differs from the input's.
    """
    import onnx

    from ..atomic import atomic_write
    from ..export.int4 import PackedModelError, is_packed_file, load_packed, packable_initializers, save_packed
    from ..export.onnx_graph import META_KEY
    from .embedder import ModelLoadError

    src, out = Path(model_path), Path(output)
    if not src.is_file():
        raise ModelLoadError(f"{src}: model file not found")
    if src.suffix != out.suffix:
        raise ValueError(f"{out}: the calibrated copy keeps the model's format ({src.suffix}), give a "
                         f"{src.suffix} file")
    packed = is_packed_file(src)
    try:
        model = load_packed(src) if packed else onnx.load(str(src))
    except PackedModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors
        raise ModelLoadError(f"{src}: not a readable ONNX model ({type(exc).__name__})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    try:
        meta = json.loads(props.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        meta = {}
    if threshold is None:
        meta.pop(META_FIELD, None)
    else:
        meta[META_FIELD] = threshold.to_dict()
    props[META_KEY] = json.dumps(meta)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    out.parent.mkdir(parents=True, exist_ok=True)
    if packed:  # save_packed writes a path: a partial file beside the output, renamed into place
        tmp = out.with_name(f".{out.name}.partial")
        try:
            save_packed(model, tmp, packable_initializers(model))
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        data = model.SerializeToString()
        atomic_write(out, lambda f: f.write(data))
    return out
