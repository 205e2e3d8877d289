"""Turn raw silhouette frames (PNG) into OpenGait-format sequences ``[T, 64, 64]`` uint8, and into a store.

The recipe (OpenGait's pretreatment, docs/gait-protocols.md): drop near-empty frames; crop the rows to the
first and last non-zero row; resize to height 64 keeping the aspect ratio (bicubic); find the x-centre as the
column where the cumulative mass reaches half the total; take the 64-wide window around it, zero-padded at the
borders; stack.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import BadSequenceError
from .layouts import LAYOUTS, scan_layout
from .sources import ScanItem
from .store import ImportSummary, StoreWriter

__all__ = ["MIN_MASS", "OUT_SIZE", "pretreat_frame", "pretreat_sequence", "pretreat_items", "pretreat_folder"]

_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC  # Pillow >= 9.1 moved the constants

MIN_MASS = 10000
"""Frames whose pixel sum (0..255 units) is at most this are dropped as near-empty (~40 person pixels)."""
OUT_SIZE = 64
"""Output height and width in pixels."""
MIN_FRAMES_WARN = 5
"""Fewer frames than this left in a sequence triggers a warning."""


def pretreat_frame(img: np.ndarray, size: int = OUT_SIZE) -> np.ndarray:
    """Crop, resize and centre one non-empty silhouette frame.

    Args:
        img: uint8 ``[H, W]``, 0 = background, larger = person; must have at least one non-zero pixel.
        size: output height and width in pixels.

    Returns:
        uint8 ``[size, size]``: the person spans the full height (rows ``0..size-1``) and its horizontal mass
        centre is at column ``size // 2``.

    Raises:
        ValueError: ``img`` is all zero.
    """
    rows = np.flatnonzero(img.any(axis=1))
    if rows.size == 0:
        raise ValueError("empty frame (all pixels zero)")
    img = img[rows[0] : rows[-1] + 1]  # crop rows to the first and last non-zero row
    h, w = img.shape
    new_w = max(1, int(round(w * size / h)))
    resized = np.asarray(Image.fromarray(img).resize((new_w, size), _BICUBIC), dtype=np.uint8)
    mass = resized.sum(axis=0, dtype=np.int64)
    cum = np.cumsum(mass)
    if cum[-1] == 0:  # everything vanished in the resize (a sliver): centre the image itself
        centre = new_w // 2
    else:
        centre = int(np.searchsorted(cum, cum[-1] / 2.0))  # first column where the cumulative mass >= half
    half = size // 2
    padded = np.zeros((size, new_w + 2 * half), dtype=np.uint8)
    padded[:, half : half + new_w] = resized
    # window [centre - half, centre + half) of `resized` == [centre, centre + size) of `padded`
    return np.ascontiguousarray(padded[:, centre : centre + size])


def pretreat_sequence(
    frames: Iterable[np.ndarray], min_mass: int = MIN_MASS, origin: str = "<frames>", size: int = OUT_SIZE
) -> np.ndarray:
    """Pretreat one sequence of raw silhouette frames.

    Args:
        frames: grayscale uint8 frames ``[H, W]`` (each may have its own size), in temporal order.
        min_mass: frames whose pixel sum (0..255 units) is ``<= min_mass`` are dropped.
        origin: name of the sequence, for messages.
        size: output height and width in pixels.

    Returns:
        uint8 ``[T, size, size]``, ``T`` = number of kept frames, in the input order.

    Warns:
        UserWarning: fewer than 5 frames are left.

    Raises:
        BadSequenceError: a frame that is not a 2-D uint8 array, or no frame left.
    """
    out = []
    n_in = 0
    for j, img in enumerate(frames):
        n_in += 1
        if not isinstance(img, np.ndarray) or img.ndim != 2 or img.dtype != np.uint8:
            desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise BadSequenceError(origin, f"frame {j}: expected a grayscale uint8 [H, W] array, got {desc}")
        if int(img.sum(dtype=np.int64)) <= min_mass:
            continue
        out.append(pretreat_frame(img, size))
    if not out:
        raise BadSequenceError(origin, f"no frames left: all {n_in} frame(s) have a pixel sum <= {min_mass}")
    if len(out) < MIN_FRAMES_WARN:
        warnings.warn(f"{origin}: only {len(out)} of {n_in} frames left after dropping near-empty frames",
                      stacklevel=2)
    return np.stack(out)


def _read_png(path: Path, origin: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadSequenceError(origin, f"unreadable image ({exc})") from None


def pretreat_folder(
    src: str | Path,
    dest: str | Path,
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    min_mass: int = MIN_MASS,
    layout: str = "opengait",
) -> ImportSummary:
    """Pretreat a folder of raw silhouette PNGs (by default ``<subject>/<condition>/<view>/*.png``) into a store.

    Frames of a sequence are read in natural filename order (``2.png`` before ``10.png``; the plain sorted
    order for zero-padded names) and converted to grayscale. Sequences are written in sorted (subject,
    condition, view) order through :class:`~qgait.data.store.StoreWriter` (atomic: nothing at ``dest`` unless
    the whole import succeeds).

    Args:
        src: the folder of PNG frames.
        dest: the store folder to create.
        skip_bad: skip bad sequences (unreadable image, no frame left, PNG at the wrong depth) and list them in
            the summary instead of failing.
        progress: show a tqdm progress bar over sequences.
        overwrite: replace an existing store at ``dest``.
        min_mass: near-empty frame threshold, see :func:`pretreat_sequence`.
        layout: the released layout, a name of :data:`qgait.data.layouts.LAYOUTS` (``"opengait"``,
            ``"gait3d"``, ``"grew"``), mapped to OpenGait's subject / condition / view keys.

    Returns:
        The :class:`~qgait.data.store.ImportSummary` (frames 64x64).

    Raises:
        FileNotFoundError: ``src`` missing. NotADirectoryError: ``src`` is a file.
        BadSequenceError: (``skip_bad=False``) the first bad sequence or misplaced frame, named.
        LayoutError: ``src`` does not have the layout (see :mod:`qgait.data.layouts`).
        ValueError: unknown layout; no PNG sequences found, or none usable.
        FileExistsError: see :class:`~qgait.data.store.StoreWriter`.
    """
    src = Path(src)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such folder")
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: expected a folder of PNG frames ({layout} layout)")
    t0 = time.perf_counter()
    items = scan_layout(src, layout)
    if not any(it.key is not None for it in items):
        raise ValueError(f"{src}: no sequences found; expected <subject>/<condition>/<view>/*.png")
    summary = pretreat_items(items, str(src.resolve()), dest, skip_bad=skip_bad, progress=progress,
                             overwrite=overwrite, min_mass=min_mass)
    summary.seconds = time.perf_counter() - t0
    return summary


def pretreat_items(
    items: Sequence[ScanItem],
    source: str,
    dest: str | Path,
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    min_mass: int = MIN_MASS,
) -> ImportSummary:
    """Pretreat listed sequences (a layout scan, :mod:`qgait.data.layouts`) into a store, atomically.

    Args:
        items: sequences (``key`` and PNG ``files`` in frame order) and bad paths (``reason``); written in order.
        source: recorded in the store's metadata.
        dest, skip_bad, progress, overwrite, min_mass: as :func:`pretreat_folder`.

    Returns:
        The :class:`~qgait.data.store.ImportSummary` (bad paths and bad sequences listed in ``skipped`` with
        ``skip_bad``; ``seconds`` 0, the caller times).

    Raises:
        BadSequenceError: (``skip_bad=False``) the first bad item, named. ValueError: no usable sequence.
    """
    from tqdm.auto import tqdm

    skipped: list[tuple[str, str]] = []

    def bad(origin: str, reason: str) -> None:
        if not skip_bad:
            raise BadSequenceError(origin, reason)
        skipped.append((origin, reason))

    with StoreWriter(dest, source=source, overwrite=overwrite) as writer:
        for it in tqdm(items, desc="pretreat", unit="seq", disable=not progress, dynamic_ncols=True):
            if it.key is None:
                bad(it.origin, it.reason or "bad path")
                continue
            try:
                imgs = [_read_png(p, f"{it.origin}/{p.name}") for p in it.files]
                seq = pretreat_sequence(imgs, min_mass=min_mass, origin=it.origin)
                writer.add(it.key, seq, origin=it.origin)
            except BadSequenceError as exc:
                bad(exc.origin, exc.reason)
        if writer.n_sequences == 0:
            raise ValueError(f"{source}: no usable sequence (all {len(skipped)} skipped)")
        summary = ImportSummary(n_subjects=len(writer.subjects), n_sequences=writer.n_sequences,
                                n_frames=writer.n_frames, frame_shape=writer.frame_shape,  # type: ignore[arg-type]
                                skipped=skipped, dest=str(dest))
        writer.close()
    return summary
