"""Enrollment: create a gallery file or add entries to it, refusing a gallery built by another model.

Example::

    from qgait.runtime import GaitEmbedder
    from qgait.runtime.gallery import enroll

    emb = GaitEmbedder("model.int8.onnx")
    enroll("gallery.npz", emb, [frames_a, frames_b], ["001", "002"], [{"view": "090"}, {"view": "090"}])
    enroll("gallery.npz", emb, [frames_c], "003")        # appends; a gallery of another model is refused

Each enrollment reads the whole file and writes it anew atomically (:mod:`qgait.runtime.gallery_io`): the cost
is ``O(m)`` in the gallery size, fine for occasional enrollments into galleries of up to millions of entries
(4 KiB per entry at ``[128, 8]`` float32). Two processes enrolling into the same file at once are not serialized:
the file stays whole, but the later write drops the earlier one's entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .gallery_io import gallery_path, load_gallery, read_identity, save_gallery
from .identity import GalleryMismatchError, ModelIdentity, check_identity

__all__ = ["EnrollResult", "check_enrollable", "enroll", "enroll_embeddings"]


@dataclass
class EnrollResult:
    """What an enrollment did: the file, the gallery now in it, the entries added, whether the file was created."""

    path: Path
    gallery: Any
    added: int
    created: bool

    def describe(self) -> str:
        verb = "created" if self.created else "added to"
        subjects = len(set(self.gallery.labels))
        return (f"{verb} {self.path}: +{self.added} entries, now {len(self.gallery)} entries of {subjects} "
                f"subjects ({self.gallery.identity.describe() if self.gallery.identity else 'model unknown'})")


def check_enrollable(path: str | Path, model: ModelIdentity, adopt_unknown: bool = False) -> str:
    """Whether entries embedded by ``model`` may be added to the gallery file ``path`` (cheap: reads only the
    recorded identity).

    Returns:
        ``"new"`` (no file yet), ``"match"``, or ``"unknown"`` (a gallery without identity, accepted only with
        ``adopt_unknown``).

    Raises:
        GalleryFileError: the file exists but is corrupt (named).
        GalleryMismatchError: the gallery was built with another model or input size (both named), or records no
            identity and ``adopt_unknown`` is false.
    """
    path = gallery_path(path)
    if not path.exists():
        return "new"
    status = check_identity(read_identity(path), model, where=f"gallery {path}")
    if status == "unknown" and not adopt_unknown:
        raise GalleryMismatchError(
            f"gallery {path} records no model identity (written by an older qgait): it cannot be checked against "
            f"model {model.describe()}; re-enroll it from its sequences, or adopt it for this model (adopt_unknown"
            "=True, qgait enroll --adopt) if you know its entries were embedded by this model")
    return status


def _labels(labels: str | Sequence[Any], n: int) -> list[str]:
    if isinstance(labels, str):
        labels = [labels] * n
    labels = [str(v) for v in labels]
    if len(labels) != n:
        raise ValueError(f"{n} embeddings to enroll but {len(labels)} labels")
    if any(not v.strip() for v in labels):
        raise ValueError("labels must be non-empty strings")
    return labels


def _info(info: Sequence[dict] | None, n: int) -> list[dict]:
    if info is None:
        return [{} for _ in range(n)]
    info = list(info)
    if len(info) != n or not all(isinstance(d, dict) for d in info):
        raise ValueError(f"info must be {n} dicts (one per enrolled embedding), got {len(info)} items")
    return info


def enroll_embeddings(path: str | Path, model: ModelIdentity, embeddings: Any, labels: str | Sequence[Any],
                      info: Sequence[dict] | None = None, *, adopt_unknown: bool = False) -> EnrollResult:
    """Add embeddings computed by ``model`` to the gallery file ``path`` (created when missing), atomically.

    Args:
        path: the gallery ``.npz`` (``.npz`` appended when missing).
        model: the identity of the model that computed ``embeddings`` (``ModelIdentity.of(embedder)``).
        embeddings: ``[k, c, p]`` float, finite.
        labels: ``k`` labels, or one label for all.
        info: ``k`` per-entry dicts (JSON-serializable), or ``None``.
        adopt_unknown: add to a gallery that records no identity, which then takes ``model``'s.

    Returns:
        :class:`EnrollResult`.

    Raises:
        ValueError: embeddings not a non-empty finite ``[k, c, p]``, label / info counts that differ from ``k``,
            embeddings of another ``[c, p]`` than the gallery's.
        GalleryFileError: the existing file is corrupt (it is left as it is).
        GalleryMismatchError: the gallery was built with another model or input size, or records none (without
            ``adopt_unknown``).
    """
    from .embedder import Gallery

    e = np.asarray(embeddings.detach().cpu().numpy() if hasattr(embeddings, "detach") else embeddings)
    if e.ndim != 3 or e.shape[0] == 0 or e.shape[1] == 0 or e.shape[2] == 0:
        raise ValueError(f"embeddings to enroll must be a non-empty [k, c, p] array, got shape {list(e.shape)}")
    if e.dtype.kind not in "fiu":
        raise ValueError(f"embeddings to enroll must be numbers, got dtype {e.dtype}")
    if not np.isfinite(e).all():
        raise ValueError("embeddings to enroll contain NaN or infinite values")
    e = e.astype(np.float32, copy=False)
    labels, info = _labels(labels, e.shape[0]), _info(info, e.shape[0])
    model = model.with_embedding_shape(e.shape[1:])
    path = gallery_path(path)
    status = check_enrollable(path, model, adopt_unknown)
    if status == "new":
        gallery = Gallery(e, labels, info, identity=model)
    else:
        old = load_gallery(path)
        if old.embeddings.shape[1:] != e.shape[1:]:
            raise ValueError(f"embeddings {list(e.shape[1:])} do not match gallery {path}'s "
                             f"{list(old.embeddings.shape[1:])}")
        old_info = old.info or [{} for _ in range(len(old))]
        gallery = Gallery(np.concatenate([old.embeddings, e]), old.labels + labels, old_info + info, identity=model)
    save_gallery(gallery, path)
    return EnrollResult(path, gallery, int(e.shape[0]), status == "new")


def enroll(path: str | Path, embedder: Any, sequences: Iterable[Any], labels: str | Sequence[Any],
           info: Sequence[dict] | None = None, *, adopt_unknown: bool = False) -> EnrollResult:
    """Embed silhouette sequences with ``embedder`` and add them to the gallery file ``path`` (created when
    missing). The gallery's identity is checked before anything is embedded.

    Args:
        path: the gallery ``.npz``.
        embedder: a :class:`qgait.runtime.GaitEmbedder` (its model file is hashed for the identity).
        sequences: silhouette sequences as ``GaitEmbedder.embed`` takes them (uint8 ``[T, 64, 64|44]`` frames or
            float ``[T, h, w]`` in [0, 1]), one entry each.
        labels: one label per sequence, or one label for all.
        info: one dict per sequence (e.g. condition, view, source), or ``None``.
        adopt_unknown: see :func:`enroll_embeddings`.

    Raises:
        ValueError: no sequences, a bad sequence (its position named), count mismatches.
        GalleryFileError, GalleryMismatchError: see :func:`enroll_embeddings`.
    """
    model = ModelIdentity.of(embedder)
    check_enrollable(path, model, adopt_unknown)
    emb = embedder.embed_many(sequences)
    return enroll_embeddings(path, model, emb, labels, info, adopt_unknown=adopt_unknown)
