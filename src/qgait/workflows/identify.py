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


PRETREAT_HINT = ("raw silhouette frames (PNG / JPEG) must be pretreated first: qgait data pretreat SRC DEST "
                 "(SRC a folder subject/condition/view/*.png), then use the store DEST")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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
    if isinstance(arr, np.ndarray) and arr.ndim == 4 and arr.shape[-1] in (3, 4):
        raise ValueError(f"{path}: colour images {list(arr.shape)}, not silhouettes; segment the person first, then "
                         + PRETREAT_HINT)
    return validate_frames(arr, str(path))


def _path_labels(p: Path) -> tuple[str | None, str | None, str | None]:
    """Subject / condition / view of a sequence file from its path, only where the path follows the OpenGait
    layout ``subject/condition/view/<file>`` with a file named after it (``<view>.pkl``, as OpenGait's
    pretreatment writes, or ``<subject>-<condition>-<view>...``); otherwise unknown (never made up from
    arbitrary folder names)."""
    parts = p.resolve().parts
    if len(parts) < 5:
        return None, None, None
    subject, condition, view = parts[-4], parts[-3], parts[-2]
    stem = p.stem
    if stem == view or stem.startswith(f"{subject}-{condition}-{view}"):
        return subject, condition, view
    return None, None, None


def _has_images(folder: Path) -> bool:
    return any(q.suffix.lower() in _IMAGE_SUFFIXES for q in folder.rglob("*") if q.is_file())


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
    (filtered the same way). A file's label is read from its path only when it follows the OpenGait layout
    (:func:`_path_labels`); otherwise its subject, condition and view are unknown (None).

    Raises:
        FileNotFoundError: a source that does not exist. ValueError: nothing selected; a filter id that none of
            the stores / folders holds (as ``qgait data import --subjects``: the unknown ids are listed); image
            files or folders (pointing to ``qgait data pretreat``).
    """
    from ..data.sources import iter_sequences
    from ..data.store import SequenceStore

    subj, cond, view = _csv(subjects), _csv(conditions), _csv(views)
    items: list[SequenceItem] = []
    seen: dict[str, set[str]] = {"subject": set(), "condition": set(), "view": set()}  # in stores and folders
    filtered = False  # a store or folder was filtered (files are taken whole)
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such sequence file, store or folder")
        if p.is_file() and p.suffix in (".pkl", ".npy"):
            items.append(SequenceItem(str(p), *_path_labels(p), (lambda p=p: _load_file(p))))
        elif p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES:
            raise ValueError(f"{p}: an image, not a sequence; " + PRETREAT_HINT)
        elif _is_store(p):
            store = SequenceStore.open(p)
            filtered = filtered or indices is None
            for r in store.records:
                seen["subject"].add(r.subject)
                seen["condition"].add(r.condition)
                seen["view"].add(r.view)
            idx = list(indices) if indices is not None else store.select(subj, cond, view)
            bad = [int(i) for i in idx if not 0 <= int(i) < len(store)]
            if bad:
                raise ValueError(f"{p}: no sequence index {', '.join(map(str, bad))} (the store holds indices "
                                 f"0..{len(store) - 1})")
            for i in idx:
                r = store.records[int(i)]
                items.append(SequenceItem(f"{p}#{int(i)}", r.subject, r.condition, r.view,
                                          (lambda store=store, i=int(i): store.frames(i))))
        elif p.is_dir() or p.name.endswith(".tar.xz"):
            if p.is_dir() and next(p.rglob("*.pkl"), None) is None and next(p.glob("*.tar.xz"), None) is None \
                    and _has_images(p):
                raise ValueError(f"{p}: holds images, not OpenGait .pkl sequences; " + PRETREAT_HINT)
            filtered = True
            for seq in iter_sequences(p, subjects=subj):  # refuses subjects the folder lacks
                k = seq.key
                seen["subject"].add(k.subject)
                seen["condition"].add(k.condition)
                seen["view"].add(k.view)
                if (cond is None or k.condition in cond) and (view is None or k.view in view):
                    items.append(SequenceItem(seq.origin, k.subject, k.condition, k.view, seq.frames))
        else:
            raise ValueError(f"{p}: not a .pkl/.npy sequence, a qgait store or an OpenGait folder")
    if filtered:  # unknown ids are refused, as `qgait data import --subjects` refuses them
        for kind, wanted in (("subject", subj), ("condition", cond), ("view", view)):
            missing = sorted(set(wanted or ()) - seen[kind])
            if missing:
                held = sorted(seen[kind])
                shown = ", ".join(held[:12]) + (f", ... ({len(held)} in all)" if len(held) > 12 else "")
                raise ValueError(f"{', '.join(str(s) for s in sources)}: no {kind} {', '.join(missing)} (they hold "
                                 f"{shown})")
    if not items:
        raise ValueError(f"no sequences selected from {[str(s) for s in sources]} (subjects={subj}, "
                         f"conditions={cond}, views={view})")
    return items


def embed_sequences(embedder, items: Sequence[SequenceItem], max_frames: int = 720,
                    progress: bool = False, check: bool = True) -> np.ndarray:
    """Embed each item (all its frames, capped at ``max_frames``): ``[len(items), c, p]`` float32.

    Args:
        check: refuse uint8 sequences that do not look like silhouettes (empty, noise, grey images, inverted;
            :func:`qgait.data.plausible.silhouette_problem`) instead of embedding them.

    Raises:
        ValueError: a bad or (with ``check``) implausible sequence (its source is named, with the reason).
    """
    from tqdm import tqdm

    from ..data.plausible import silhouette_problem

    out = []
    for it in tqdm(items, desc="embed", disable=not progress, dynamic_ncols=True):
        frames = it.frames(max_frames)
        problem = silhouette_problem(frames) if check else None
        if problem:
            raise ValueError(f"{it.source}: does not look like a silhouette sequence: {problem} (qgait expects "
                             "binary masks, 0 background and 255 person, as `qgait data pretreat` writes them; "
                             "--no-silhouette-check embeds it anyway)")
        try:
            out.append(embedder.embed(frames))
        except ValueError as exc:
            raise ValueError(f"{it.source}: {exc}") from exc
    return np.concatenate(out, axis=0)


def _filter_saved(gallery, source, subjects=None, conditions=None, views=None):
    """The entries of a saved gallery that match the filters; ids it does not hold are refused (listed)."""
    from ..runtime import Gallery

    info = gallery.info or [{} for _ in gallery.labels]
    columns = {"subject": list(gallery.labels), "condition": [str(i.get("condition")) for i in info],
               "view": [str(i.get("view")) for i in info]}
    keep = list(range(len(gallery)))
    for kind, wanted in (("subject", _csv(subjects)), ("condition", _csv(conditions)), ("view", _csv(views))):
        if wanted is None:
            continue
        held = sorted(set(columns[kind]))
        missing = sorted(set(wanted) - set(held))
        if missing:
            raise ValueError(f"{source}: no {kind} {', '.join(missing)} in this gallery (it holds "
                             f"{', '.join(held[:12])}{', ...' if len(held) > 12 else ''})")
        keep = [i for i in keep if columns[kind][i] in set(wanted)]
    if len(keep) == len(gallery):
        return gallery
    return Gallery(gallery.embeddings[keep], [gallery.labels[i] for i in keep],
                   [gallery.info[i] for i in keep] if gallery.info else [], identity=gallery.identity)


def build_gallery(embedder, sources: Sequence[str | Path], subjects=None, conditions=None, views=None,
                  max_frames: int = 720, progress: bool = False, check: bool = True):
    """A :class:`qgait.runtime.Gallery` from sequence sources (see :func:`collect_sequences`), or a saved
    ``.npz`` gallery when ``sources`` is one such file (the filters then pick its entries). A built gallery records
    ``embedder``'s identity, so that a saved one is refused later with another model.

    Raises:
        GalleryMismatchError: a saved gallery built with another model or input size.
        ValueError: an empty selection, unknown filter ids, sequences without a subject label, implausible
            sequences (``check``, :func:`embed_sequences`).
    """
    from ..runtime import Gallery, ModelIdentity

    if len(sources) == 1 and str(sources[0]).endswith(".npz"):  # another model's gallery is refused
        return _filter_saved(Gallery.load(sources[0], expect=embedder), sources[0], subjects, conditions, views)
    items = collect_sequences(sources, subjects, conditions, views)
    unlabeled = [it.source for it in items if it.subject is None]
    if unlabeled:
        raise ValueError(f"gallery sequences need a subject label (a store, an OpenGait folder, or files at "
                         f"subject/condition/view/<view>.pkl): {unlabeled[:3]}")
    emb = embed_sequences(embedder, items, max_frames, progress, check)
    return Gallery(emb, [it.subject for it in items],
                   [{"condition": it.condition, "view": it.view, "source": it.source} for it in items],
                   identity=ModelIdentity.of(embedder))


def identify_sequences(model: str | Path, gallery_sources, probe_sources, top_k: int = 5, *,
                       gallery_subjects=None, gallery_conditions=None, gallery_views=None,
                       probe_subjects=None, probe_conditions=None, probe_views=None, metric: str = "euc",
                       max_frames: int = 720, save_gallery: str | Path | None = None, threads: int | None = None,
                       progress: bool = False, check: bool = True, overwrite: bool = False,
                       threshold: float | str | None = "model") -> list[dict]:
    """Embed a gallery and probes with an exported model and rank the gallery subjects for every probe.

    Args:
        threshold: open-set rejection (:func:`qgait.workflows.calibrate.resolve_rule`): ``"model"`` (default)
            applies the threshold ``qgait calibrate`` stored in the model, if any; a number applies that
            distance; ``"off"`` ranks only.
        check: refuse gallery and probe sequences that do not look like silhouettes (:func:`embed_sequences`).
        save_gallery: write the gallery there (``.npz``; checked first: not an input, not an existing file
            unless ``overwrite``; written atomically).

    Returns:
        one dict per probe: ``{"probe": {...source, subject...}, "top": [(label, distance), ...], "decision":
        {"label" (the top label, or "unknown" beyond the threshold), "known", "distance", "threshold", "metric",
        "target_fmr", "source"} or None without a threshold}``; a probe's subject / condition / view are None
        where its source does not give them.

    Raises:
        ValueError: see :func:`collect_sequences`, :func:`build_gallery`, :func:`embed_sequences`;
            :class:`~qgait.workflows.outputs.OutputError` for ``save_gallery``.
    """
    from ..runtime import GaitEmbedder, identify_many
    from .calibrate import decide, resolve_rule
    from .outputs import check_outputs, staged

    if save_gallery is not None:
        save_gallery = Path(save_gallery)
        if save_gallery.suffix != ".npz":
            raise ValueError(f"{save_gallery}: a saved gallery is a .npz file")
        check_outputs([save_gallery], [model, *gallery_sources, *probe_sources], overwrite)
    probes = collect_sequences(list(probe_sources), probe_subjects, probe_conditions, probe_views)  # checked first
    emb = GaitEmbedder(model, threads=threads)
    rule = resolve_rule(emb, threshold, metric)
    gallery = build_gallery(emb, list(gallery_sources), gallery_subjects, gallery_conditions, gallery_views,
                            max_frames, progress, check)
    if save_gallery is not None:
        with staged([save_gallery]) as (tmp,):
            gallery.save(tmp)
    pe = embed_sequences(emb, probes, max_frames, progress, check)
    ranks = identify_many(pe, gallery, top_k, metric)
    return [{"probe": p.describe(), "top": r, "decision": decide(r, rule) if rule else None}
            for p, r in zip(probes, ranks)]


def identify_stream(model: str | Path, gallery_sources, probe_sources, *, every: int = 5, firm_after: int = 3,
                    gallery_subjects=None, gallery_conditions=None, gallery_views=None, probe_subjects=None,
                    probe_conditions=None, probe_views=None, metric: str = "euc", max_frames: int = 720,
                    threads: int | None = None, progress: bool = False, check: bool = True,
                    on_update=None, threshold: float | str | None = "model") -> list[dict]:
    """Identify probes frame by frame (issue 17): each probe sequence's frames are pushed in order into a
    :class:`qgait.runtime.StreamingEmbedder` over the exported model, and every ``every`` frames (and at the
    last) the current embedding is ranked against the gallery.

    A decision is *firm* once the top-1 label has stayed the same for ``firm_after`` consecutive updates; it stops
    being firm when the label changes.

    Args:
        on_update: called with ``(probe_description, update)`` after every update (the CLI prints it).
        threshold: open-set rejection as in :func:`identify_sequences`: an update's ``label`` is ``"unknown"``
            while the nearest subject is beyond it (``nearest`` keeps that subject).

    Returns:
        one dict per probe: ``{"probe": {...}, "updates": [{"frames", "label", "distance", "margin", "firm"},
        ...], "final": the last update, "firm_at": frames at which the final label became firm (None: not firm)}``;
        ``margin`` is the distance gap between the top-1 label and the runner-up (None with one label); with a
        threshold each update also has ``nearest`` (the top-1 subject) and ``threshold``.

    Raises:
        ValueError: ``every`` or ``firm_after`` below 1; see :func:`identify_sequences` for the sources.
        TemporalSplitError: a model that cannot be streamed (frames mixed before its temporal max).
    """
    from ..data.plausible import silhouette_problem
    from ..runtime import GaitEmbedder, StreamingEmbedder, identify
    from .calibrate import decide, resolve_rule

    if every < 1 or firm_after < 1:
        raise ValueError(f"every and firm_after must be at least 1, got {every} and {firm_after}")
    probes = collect_sequences(list(probe_sources), probe_subjects, probe_conditions, probe_views)
    emb = GaitEmbedder(model, threads=threads)
    rule = resolve_rule(emb, threshold, metric)
    stream = StreamingEmbedder.from_onnx(model, threads=threads or 1)  # one thread per stream: measured fastest
    gallery = build_gallery(emb, list(gallery_sources), gallery_subjects, gallery_conditions, gallery_views,
                            max_frames, progress, check)
    out = []
    for p in probes:
        frames = p.frames(max_frames)
        problem = silhouette_problem(frames) if check else None
        if problem:
            raise ValueError(f"{p.source}: does not look like a silhouette sequence: {problem} "
                             "(--no-silhouette-check streams it anyway)")
        stream.reset()
        updates, run, last, firm_at = [], 0, None, None
        for t in range(len(frames)):
            try:
                stream.push(frames[t])
            except ValueError as exc:
                raise ValueError(f"{p.source}, frame {t}: {exc}") from exc
            if (t + 1) % every and t + 1 != len(frames):
                continue
            top = identify(stream.embedding(), gallery, top_k=2, metric=metric)
            nearest, dist = top[0]
            label = nearest if rule is None else decide(top, rule)["label"]
            run = run + 1 if label == last else 1
            last = label
            if run == 1:
                firm_at = None  # the label changed: not firm (any more)
            if run == firm_after:
                firm_at = t + 1
            upd = {"frames": t + 1, "label": label, "distance": dist,
                   "margin": top[1][1] - dist if len(top) > 1 else None, "firm": run >= firm_after}
            if rule is not None:
                upd.update(nearest=nearest, threshold=rule["threshold"])
            updates.append(upd)
            if on_update is not None:
                on_update(p.describe(), upd)
        out.append({"probe": p.describe(), "updates": updates, "final": updates[-1], "firm_at": firm_at})
    return out
