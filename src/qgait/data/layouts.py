"""Released per-frame PNG layouts of the gait datasets, mapped to the OpenGait ``subject/condition/view`` keys.

Each scanner lists a dataset's raw silhouette frames as :class:`~qgait.data.sources.ScanItem` s (a sequence: its
:class:`~qgait.data.sources.SequenceKey` and PNG frames in natural order; or a bad path with its reason), which
:func:`qgait.data.pretreat.pretreat_items` turns into a store (``qgait data pretreat SRC DEST --layout NAME``).
The keys are those of OpenGait's pickles for the same dataset, so the built-in partitions and the evaluation
protocols apply unchanged.

* ``opengait``: ``<subject>/<condition>/<view>/*.png`` (CASIA-B's, OU-MVLP's, CCPG's and SUSTech1K's
  rearranged silhouettes).
* ``gait3d``: Gait3D's ``2D_Silhouettes/<subject>/<camidC_videoidV>/<seqS>/*.png`` (Zheng et al., CVPR 2022);
  ``SRC`` may be ``2D_Silhouettes`` or the folder holding it. Names are checked: subject 4 digits, camera /
  video ``camid<d>_videoid<d>``, sequence ``seq<d>``.
* ``grew``: GREW's ``train/<subject>/<sequence>/*.png``, ``test/gallery/<subject>/<sequence>/*.png`` and
  ``test/probe/<sequence>/*.png`` (Zhu et al., ICCV 2021), rearranged as OpenGait's
  ``datasets/GREW/rearrange_GREW.py`` does: training ``<subject>train/00/<sequence>``; gallery
  ``<subject>/01|02/<sequence>`` (01, 02 in sorted sequence-name order; OpenGait takes the directory listing
  order); probes ``probe/03/<sequence>``. ``distractor/`` is not imported. Files other than ``*.png`` (GREW
  ships ``*_2d_pose.txt`` and others beside the frames) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .sources import ScanItem, SequenceKey, natural_key, scan_folder

__all__ = ["LAYOUTS", "LayoutError", "scan_layout", "scan_gait3d", "scan_grew"]

_PNG = ".png"


class LayoutError(ValueError):
    """The folder does not have the layout asked for (the message names the expected layout)."""


def _listing(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _pngs(folder: Path) -> list[Path]:
    return sorted((p for p in _listing(folder) if p.is_file() and p.name.lower().endswith(_PNG)),
                  key=lambda p: natural_key(p.name))


def _stray_pngs(folder: Path, root: Path, expected: str) -> list[ScanItem]:
    """Bad items for the PNG files directly in ``folder`` (a level where frames do not belong)."""
    out = []
    for p in _pngs(folder):
        rel = p.relative_to(root).parts
        out.append(ScanItem(parts=rel, origin="/".join(rel), reason=f"outside the expected layout {expected}"))
    return out


def scan_opengait(root: Path) -> list[ScanItem]:
    """``<subject>/<condition>/<view>/*.png`` (see :func:`~qgait.data.sources.scan_folder`)."""
    return scan_folder(root, _PNG, None, many_files=True)


_GAIT3D_NAMES = (("subject", re.compile(r"\d{4}")), ("camera/video", re.compile(r"camid\d+_videoid\d+")),
                 ("sequence", re.compile(r"seq\d+")))
GAIT3D_EXPECTED = "2D_Silhouettes/<0000-9999>/camid<C>_videoid<V>/seq<S>/*.png"


def scan_gait3d(root: Path) -> list[ScanItem]:
    """Gait3D's silhouettes; a sequence whose folder names do not follow Gait3D's naming is a bad item.

    Raises:
        LayoutError: no sequence with Gait3D's names at all (the message shows what was found).
    """
    if (root / "2D_Silhouettes").is_dir():
        root = root / "2D_Silhouettes"
    items = []
    for it in scan_folder(root, _PNG, None, many_files=True):
        if it.key is None:
            items.append(ScanItem(parts=it.parts, origin=it.origin,
                                  reason=f"outside Gait3D's layout {GAIT3D_EXPECTED}"))
            continue
        names = (it.key.subject, it.key.condition, it.key.view)
        wrong = [f"{what} {name!r}" for (what, pat), name in zip(_GAIT3D_NAMES, names) if not pat.fullmatch(name)]
        if wrong:
            items.append(ScanItem(parts=it.parts, origin=it.origin,
                                  reason=f"not a Gait3D name: {', '.join(wrong)} (expected {GAIT3D_EXPECTED})"))
        else:
            items.append(it)
    if not any(it.key is not None for it in items):
        shown = "; ".join(f"{it.origin}: {it.reason}" for it in items[:3]) or "no PNG frames"
        raise LayoutError(f"{root}: no Gait3D sequence found, expected {GAIT3D_EXPECTED} ({shown})")
    return items


GREW_EXPECTED = ("train/<subject>/<sequence>/*.png, test/gallery/<subject>/<sequence>/*.png, "
                 "test/probe/<sequence>/*.png")


def _grew_subject_tree(base: Path, root: Path, key_of: Callable[[str, int, str], SequenceKey],
                       items: list[ScanItem]) -> None:
    """``base/<subject>/<sequence>/*.png`` -> items keyed by ``key_of(subject, 1-based index, sequence)``."""
    items += _stray_pngs(base, root, GREW_EXPECTED)
    for subj in _listing(base):
        if not subj.is_dir():
            continue
        items += _stray_pngs(subj, root, GREW_EXPECTED)
        seqs = [s for s in _listing(subj) if s.is_dir()]
        for n, seq in enumerate(seqs, start=1):
            frames = _pngs(seq)
            if not frames:
                continue
            key = key_of(subj.name, n, seq.name)
            rel = seq.relative_to(root).parts
            items.append(ScanItem(parts=(key.subject, key.condition, key.view), origin="/".join(rel), key=key,
                                  files=tuple(frames)))
            for sub in _listing(seq):
                if sub.is_dir() and _pngs(sub):
                    items += _stray_pngs(sub, root, GREW_EXPECTED)


def scan_grew(root: Path) -> list[ScanItem]:
    """GREW's released silhouettes, keyed as OpenGait's GREW pickles.

    Raises:
        LayoutError: neither ``train/`` nor ``test/`` under ``root``; a test gallery identity with more than 99
            sequences; no sequence found.
    """
    train, test = root / "train", root / "test"
    if not train.is_dir() and not test.is_dir():
        raise LayoutError(f"{root}: not GREW's layout, expected {GREW_EXPECTED} (no train/ or test/ folder)")
    items: list[ScanItem] = []
    if train.is_dir():
        _grew_subject_tree(train, root, lambda s, n, q: SequenceKey(f"{s}train", "00", q), items)
    if test.is_dir():
        gallery, probe = test / "gallery", test / "probe"
        if not gallery.is_dir() and not probe.is_dir():
            raise LayoutError(f"{test}: expected gallery/ and probe/ folders ({GREW_EXPECTED})")
        if gallery.is_dir():
            def gallery_key(s: str, n: int, q: str) -> SequenceKey:
                if n > 99:
                    raise LayoutError(f"{gallery / s}: more than 99 sequences for one gallery identity")
                return SequenceKey(s, f"{n:02d}", q)
            _grew_subject_tree(gallery, root, gallery_key, items)
        if probe.is_dir():
            items += _stray_pngs(probe, root, GREW_EXPECTED)
            for seq in _listing(probe):
                frames = _pngs(seq) if seq.is_dir() else []
                if frames:
                    key = SequenceKey("probe", "03", seq.name)
                    rel = seq.relative_to(root).parts
                    items.append(ScanItem(parts=("probe", "03", seq.name), origin="/".join(rel), key=key,
                                          files=tuple(frames)))
    if not any(it.key is not None for it in items):
        raise LayoutError(f"{root}: no GREW sequence found, expected {GREW_EXPECTED}")
    seen: dict[SequenceKey, str] = {}
    for it in items:
        if it.key is not None:
            if it.key in seen:
                raise LayoutError(f"{root}: {it.origin} and {seen[it.key]} both map to {it.key}")
            seen[it.key] = it.origin
    items.sort(key=lambda it: it.parts)
    return items


LAYOUTS: dict[str, Callable[[Path], list[ScanItem]]] = {
    "opengait": scan_opengait,
    "gait3d": scan_gait3d,
    "grew": scan_grew,
}
"""Layout name -> scanner (``qgait data pretreat --layout``)."""


def scan_layout(root: str | Path, layout: str = "opengait") -> list[ScanItem]:
    """Scan ``root`` with the scanner of ``layout`` (a name of :data:`LAYOUTS`).

    Raises:
        ValueError: unknown layout (the known ones are listed). LayoutError: see each scanner.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](Path(root))
