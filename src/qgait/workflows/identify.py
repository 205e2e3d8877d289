"""Sequences in, embeddings out (``qgait embed / identify``): resolve sequence sources, embed them with an exported
model, build a gallery and rank its subjects for probes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SequenceItem", "collect_sequences", "embed_sequences", "build_gallery", "identify_sequences"]


@dataclass
class SequenceItem:
    """One sequence to embed: where it comes from, its label (subject) when known, and its frames loader."""

    source: str
    subject: str | None
    condition: str | None
    view: str | None
    _frames: Any

    def frames(self, max_frames: int = 720) -> np.ndarray:
        f = self._frames() if callable(self._frames) else self._frames
        return np.asarray(f[:max_frames])

    def describe(self) -> dict:
        return {"source": self.source, "subject": self.subject, "condition": self.condition, "view": self.view}


def _csv(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [s for s in v.split(",") if s]
    return list(v)


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file() and (path / "frames.u8").exists()


def _load_file(path: Path) -> np.ndarray:
    from ..data.safe_pickle import load_array
    from ..data.sources import validate_frames

    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc
    else:
        arr = load_array(path)
    return validate_frames(arr, str(path))


def collect_sequences(
    sources: Sequence[str | Path],
    subjects: str | Sequence[str] | None = None,
    conditions: str | Sequence[str] | None = None,
    views: str | Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
) -> list[SequenceItem]:
    """Resolve sequence sources into :class:`SequenceItem` s (frames loaded lazily).

    Each source is one of: a ``.pkl`` (OpenGait, read with the numpy-only unpickler) or ``.npy`` file holding
    uint8 ``[T, 64, 64|44]``; a qgait store folder (filtered by ``subjects`` / ``conditions`` / ``views`` or
    picked by ``indices``); an OpenGait folder ``subject/condition/view/*.pkl`` or ``.tar.xz`` archives
    (filtered the same way). A pickle's label is read from its path when it follows the OpenGait layout.

    Raises:
        FileNotFoundError: a source that does not exist. ValueError: nothing selected.
    """
    from ..data.sources import iter_sequences
    from ..data.store import SequenceStore

    subj, cond, view = _csv(subjects), _csv(conditions), _csv(views)
    items: list[SequenceItem] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such sequence file, store or folder")
        if p.is_file() and p.suffix in (".pkl", ".npy"):
            parts = p.resolve().parts  # root / subject / condition / view / file in the OpenGait layout
            label = (parts[-4], parts[-3], parts[-2]) if len(parts) >= 5 else (None, None, None)
            items.append(SequenceItem(str(p), *label, (lambda p=p: _load_file(p))))
        elif _is_store(p):
            store = SequenceStore.open(p)
            idx = list(indices) if indices is not None else store.select(subj, cond, view)
            for i in idx:
                r = store.records[int(i)]
                items.append(SequenceItem(f"{p}#{int(i)}", r.subject, r.condition, r.view,
                                          (lambda store=store, i=int(i): store.frames(i))))
        elif p.is_dir() or p.name.endswith(".tar.xz"):
            for seq in iter_sequences(p, subjects=subj):
                k = seq.key
                if (cond is None or k.condition in cond) and (view is None or k.view in view):
                    items.append(SequenceItem(seq.origin, k.subject, k.condition, k.view, seq.frames))
        else:
            raise ValueError(f"{p}: not a .pkl/.npy sequence, a qgait store or an OpenGait folder")
    if not items:
        raise ValueError(f"no sequences selected from {[str(s) for s in sources]} (subjects={subj}, "
                         f"conditions={cond}, views={view})")
    return items


def embed_sequences(embedder, items: Sequence[SequenceItem], max_frames: int = 720,
                    progress: bool = False) -> np.ndarray:
    """Embed each item (all its frames, capped at ``max_frames``): ``[len(items), c, p]`` float32.

    Raises:
        ValueError: a bad sequence (its source is named).
    """
    from tqdm import tqdm

    out = []
    for it in tqdm(items, desc="embed", disable=not progress, dynamic_ncols=True):
        try:
            out.append(embedder.embed(it.frames(max_frames)))
        except ValueError as exc:
            raise ValueError(f"{it.source}: {exc}") from exc
    return np.concatenate(out, axis=0)


def build_gallery(embedder, sources: Sequence[str | Path], subjects=None, conditions=None, views=None,
                  max_frames: int = 720, progress: bool = False):
    """A :class:`qgait.runtime.Gallery` from sequence sources (see :func:`collect_sequences`), or a saved
    ``.npz`` gallery when ``sources`` is one such file.

    Raises:
        ValueError: an empty selection, sequences without a subject label.
    """
    from ..runtime import Gallery

    if len(sources) == 1 and str(sources[0]).endswith(".npz"):
        return Gallery.load(sources[0])
    items = collect_sequences(sources, subjects, conditions, views)
    unlabeled = [it.source for it in items if it.subject is None]
    if unlabeled:
        raise ValueError(f"gallery sequences need a subject label (OpenGait path subject/condition/view/x.pkl or "
                         f"a store): {unlabeled[:3]}")
    emb = embed_sequences(embedder, items, max_frames, progress)
    return Gallery(emb, [it.subject for it in items],
                   [{"condition": it.condition, "view": it.view, "source": it.source} for it in items])


def identify_sequences(model: str | Path, gallery_sources, probe_sources, top_k: int = 5, *,
                       gallery_subjects=None, gallery_conditions=None, gallery_views=None,
                       probe_subjects=None, probe_conditions=None, probe_views=None, metric: str = "euc",
                       max_frames: int = 720, save_gallery: str | Path | None = None, threads: int | None = None,
                       progress: bool = False) -> list[dict]:
    """Embed a gallery and probes with an exported model and rank the gallery subjects for every probe.

    Returns:
        one dict per probe: ``{"probe": {...source, subject...}, "top": [(label, distance), ...]}``.
    """
    from ..runtime import GaitEmbedder, identify_many

    emb = GaitEmbedder(model, threads=threads)
    gallery = build_gallery(emb, list(gallery_sources), gallery_subjects, gallery_conditions, gallery_views,
                            max_frames, progress)
    if save_gallery is not None:
        gallery.save(save_gallery)
    probes = collect_sequences(list(probe_sources), probe_subjects, probe_conditions, probe_views)
    pe = embed_sequences(emb, probes, max_frames, progress)
    ranks = identify_many(pe, gallery, top_k, metric)
    return [{"probe": p.describe(), "top": r} for p, r in zip(probes, ranks)]
