"""Read gait sequences from OpenGait-format folders or ``.tar.xz`` archives, one validated sequence at a time.

Accepted sources (all in the OpenGait layout ``<subject>/<condition>/<view>/<name>.pkl``, each pickle a numpy
uint8 array ``[T, 64, 64]`` or ``[T, 64, 44]``):

* a folder ``root/<subject>/<condition>/<view>/*.pkl``;
* a folder of per-subject archives ``root/<subject>.tar.xz`` whose members are ``<subject>/<cond>/<view>/*.pkl``
  (members are streamed, never extracted to disk);
* a single ``.tar.xz`` archive with that member layout (one or several subjects).

Sequences come out in sorted ``(subject, condition, view)`` order, whatever the order on disk.

A view folder normally holds one pickle. When it holds several, :func:`choose_pickle` says which one is the
sequence: SUSTech1K's camera silhouettes among its 16 modality pickles, else the first in sorted order.
"""

from __future__ import annotations

import logging
import lzma
import re
import tarfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from .errors import BadSequenceError
from .safe_pickle import load_array

__all__ = [
    "BadSequenceError",
    "SequenceKey",
    "RawSequence",
    "FRAME_HEIGHT",
    "FRAME_WIDTHS",
    "validate_frames",
    "iter_sequences",
    "PickleChoice",
    "choose_pickle",
    "SUSTECH1K_SILHOUETTES",
]

log = logging.getLogger(__name__)

FRAME_HEIGHT = 64
"""Height in pixels of every silhouette frame in the OpenGait format."""
FRAME_WIDTHS = (64, 44)
"""Accepted frame widths in pixels: 64 (as pretreated) or 44 (already cut by 10 px per side)."""

ARCHIVE_SUFFIX = ".tar.xz"


@dataclass(frozen=True, order=True)
class SequenceKey:
    """Identity of one sequence: the three folder names of the OpenGait layout, as strings.

    Example: ``SequenceKey("075", "nm-05", "090")``. Ordered (subject, condition, view) lexicographically.
    """

    subject: str
    condition: str
    view: str

    def __str__(self) -> str:
        return f"{self.subject}/{self.condition}/{self.view}"


@dataclass
class RawSequence:
    """One validated sequence.

    Attributes:
        key: its subject / condition / view.
        frames: uint8 array ``[T, H, W]`` (C-contiguous, ``T >= 1``, ``H == 64``, ``W in (64, 44)``),
            0 = background, 255 = person.
        origin: where it was read from (a path, or ``"<archive>:<member>"``), for messages.
    """

    key: SequenceKey
    frames: np.ndarray
    origin: str


def validate_frames(arr: object, origin: str) -> np.ndarray:
    """Check that ``arr`` is a silhouette sequence in the OpenGait format and return it C-contiguous.

    Args:
        arr: the unpickled object; must be a numpy ``uint8`` array ``[T, H, W]`` with ``T >= 1``,
            ``H == 64`` and ``W`` 64 or 44. No conversion is attempted (a float or bool array is an error).
        origin: name of the file, used in the error message.

    Returns:
        ``arr`` itself when already C-contiguous, else a C-contiguous copy (uint8 ``[T, H, W]``).

    Raises:
        BadSequenceError: not an array, wrong number of dimensions, wrong dtype (``"dtype float64, expected
            uint8"``), no frames (``"empty sequence (0 frames)"``) or a wrong frame size.
    """
    if not isinstance(arr, np.ndarray):
        raise BadSequenceError(origin, f"holds a {type(arr).__name__}, expected a numpy array [T, H, W]")
    if arr.ndim != 3:
        raise BadSequenceError(origin, f"shape {tuple(arr.shape)} has {arr.ndim} dimensions, expected [T, H, W]")
    if arr.dtype != np.uint8:
        raise BadSequenceError(origin, f"dtype {arr.dtype}, expected uint8")
    t, h, w = arr.shape
    if t == 0:
        raise BadSequenceError(origin, "empty sequence (0 frames)")
    if h != FRAME_HEIGHT or w not in FRAME_WIDTHS:
        raise BadSequenceError(
            origin, f"frame size {h}x{w} (HxW), expected {FRAME_HEIGHT}x64 or {FRAME_HEIGHT}x44"
        )
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------------------------------------
# Folder layout scanning (shared with pretreat.py)

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key putting ``2.png`` before ``10.png``; the plain sorted order for zero-padded names."""
    return tuple((1, int(p), "") if p.isdigit() else (0, 0, p) for p in _DIGITS.split(name) if p)


@dataclass(frozen=True)
class ScanItem:
    """One entry of a folder or archive scan: a sequence (``key`` set) or a bad / ignored path (``reason`` set).

    Attributes:
        parts: path components relative to the dataset root, used for sorting.
        origin: the name used in messages.
        key: the sequence key, or None for a bad path.
        files: the sequence's files (one pickle, or the PNG frames in natural order).
        reason: why the path is bad, or ``"ignored: ..."`` for an extra file that is only noted.
    """

    parts: tuple[str, ...]
    origin: str
    key: SequenceKey | None = None
    files: tuple[Path, ...] = ()
    reason: str | None = None


# ----------------------------------------------------------------------------------------------------------
# Which pickle of a view folder is the sequence

SUSTECH1K_SILHOUETTES = "NN-<view>-Camera-Sils_aligned.pkl"
"""The pickle of a SUSTech1K view folder that is imported: the camera's aligned silhouettes at 30 Hz."""

_SUSTECH1K_PICKLE = re.compile(
    r"(?P<index>\d{2})-(?P<sync>sync-)?(?P<view>[^-]+)-(?P<sensor>Camera|LiDAR)-(?P<modality>[\w-]+)\.pkl")


class PickleChoice(NamedTuple):
    """What :func:`choose_pickle` decided for one view folder.

    Attributes:
        index: position in the given names of the sequence pickle, or None (the folder is a bad item).
        ignored: position -> ``"ignored: ..."`` reason, for each other pickle worth reporting.
        reason: why there is no sequence pickle (``index`` None), else None.
    """

    index: int | None
    ignored: dict[int, str]
    reason: str | None = None


def _sustech1k_silhouettes(name: str) -> bool:
    m = _SUSTECH1K_PICKLE.fullmatch(name)
    return bool(m) and not m["sync"] and m["sensor"] == "Camera" and m["modality"] == "Sils_aligned"


def choose_pickle(names: Sequence[str]) -> PickleChoice:
    """Which of a view folder's ``.pkl`` files holds the silhouette sequence.

    * SUSTech1K (any name of the form ``NN-[sync-]<view>-<Camera|LiDAR>-<modality>.pkl``): its released pickles,
      made by OpenGait's ``datasets/SUSTech1K/pretreatment_SUSTech1K.py``, put 16 files in each
      ``<id>/<NN-covariates>/<view>/`` folder (``datasets/SUSTech1K/README.md`` of ShiqiYu/OpenGait @ f280be5):
      ``00-<view>-LiDAR-PCDs``, ``01-..-LiDAR-PCDs_depths``, ``02-..-LiDAR-PCDs_sils``, ``03-..-Camera-Pose``,
      ``04-..-Camera-Ratios-HW``, ``05-..-Camera-RGB_raw``, ``06-..-Camera-Sils_aligned``, ``07-..-Camera-Sils_raw``,
      then the same eight synchronised to the LiDAR's 10 Hz (``08-sync-..`` to ``15-sync-..``). The sequence is
      ``06-<view>-Camera-Sils_aligned.pkl``, the one OpenGait's silhouette recipe for SUSTech1K reads
      (``data_in_use`` index 6 of ``configs/deepgaitv2/DeepGaitV2_sustech1k.yaml``, ShiqiYu/OpenGait @ 6c69c70);
      the other modalities are expected and not reported, other files are reported as ignored. A SUSTech1K folder
      without it is a bad item (its reason lists what the folder holds).
    * Otherwise the only pickle, or the first in sorted order with the others reported as ignored (OpenGait keeps
      one modality per pickle; CCPG's folders, as OpenGait's ``datasets/CCPG/organize_ccpg.py`` writes them, sort
      ``<view>-aligned-sils.pkl`` before ``-ratios``, ``-rgbs`` and ``-sils``: the pickle its CCPG recipes read,
      ``data_in_use: [True, False, False, False]`` in ``configs/gaitbase/gaitbase_ccpg.yaml``, @ 78171db).

    Args:
        names: the folder's pickle file names, sorted.

    Returns:
        A :class:`PickleChoice`.
    """
    if not names:
        raise ValueError("choose_pickle: no pickle names")
    if any(_SUSTECH1K_PICKLE.fullmatch(n) for n in names):
        sils = [i for i, n in enumerate(names) if _sustech1k_silhouettes(n)]
        if not sils:
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} files)" if len(names) > 8 else "")
            return PickleChoice(None, {}, f"SUSTech1K view folder without the camera silhouettes "
                                          f"{SUSTECH1K_SILHOUETTES} (holds {shown})")
        chosen = names[sils[0]]
        ignored = {i: f"ignored: not one of SUSTech1K's modality pickles; used {chosen}"
                   for i, n in enumerate(names) if not _SUSTECH1K_PICKLE.fullmatch(n)}
        ignored.update({i: f"ignored: several SUSTech1K camera silhouette pickles; used {chosen}"
                        for i in sils[1:]})
        return PickleChoice(sils[0], ignored)
    ignored = {i: f"ignored: view folder holds {len(names)} .pkl files, used the first in sorted order ({names[0]})"
               for i in range(1, len(names))}
    return PickleChoice(0, ignored)


def _skip_unread(name: str) -> bool:
    """A SUSTech1K modality pickle that is never the sequence: an archive member not worth reading."""
    return bool(_SUSTECH1K_PICKLE.fullmatch(name)) and not _sustech1k_silhouettes(name)


def _layout_reason(suffix: str, depth: int) -> str:
    return f"outside the expected layout <subject>/<condition>/<view>/*{suffix} (depth {depth}, expected 4)"


def _normalise_subjects(subjects: Collection[str] | None) -> frozenset[str] | None:
    if subjects is None:
        return None
    if isinstance(subjects, str):
        subjects = [subjects]
    out = frozenset(str(s) for s in subjects)
    if not out:
        raise ValueError("subjects: empty collection (pass None to take every subject)")
    return out


def scan_folder(
    root: Path, suffix: str, subjects: frozenset[str] | None, *, many_files: bool
) -> list[ScanItem]:
    """List the sequences of ``root/<subject>/<condition>/<view>/*<suffix>`` and the misplaced files.

    Args:
        root: the dataset folder.
        suffix: suffix of the sequence files (``".pkl"``, ``".png"``), compared case-insensitively.
        subjects: keep only these subject folders (None: all).
        many_files: True when a sequence is all the files of its view folder (PNG frames, natural sort
            order); False when it is one file (pickles: the one :func:`choose_pickle` names, others it reports
            returned as ``"ignored: ..."`` items; a folder it refuses is a bad item).

    Returns:
        Items sorted by path components: sequences, and bad items for files with the suffix at any other
        depth. Names starting with ``.`` and files with other suffixes are ignored.
    """
    suffix = suffix.lower()
    items: list[ScanItem] = []

    def listing(folder: Path) -> list[Path]:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)

    def is_seq_file(p: Path) -> bool:
        return p.name.lower().endswith(suffix) and p.is_file()

    def bad_files_below(folder: Path) -> None:
        """Every sequence file at or below ``folder`` is misplaced."""
        candidates = [folder] if folder.is_file() else sorted(folder.rglob("*"))
        for p in candidates:
            rel = p.relative_to(root).parts
            if is_seq_file(p) and not any(part.startswith(".") for part in rel):
                items.append(ScanItem(parts=rel, origin="/".join(rel), reason=_layout_reason(suffix, len(rel))))

    for subj_dir in listing(root):
        if subjects is not None and subj_dir.name not in subjects:
            continue  # files at the top level belong to no subject: reported only without a filter
        if not subj_dir.is_dir():
            if subjects is None:
                bad_files_below(subj_dir)
            continue
        for cond_dir in listing(subj_dir):
            if not cond_dir.is_dir():
                bad_files_below(cond_dir)
                continue
            for view_dir in listing(cond_dir):
                if not view_dir.is_dir():
                    bad_files_below(view_dir)
                    continue
                files = []
                for entry in listing(view_dir):
                    if entry.is_dir():
                        bad_files_below(entry)
                    elif is_seq_file(entry):
                        files.append(entry)
                if not files:
                    continue
                key = SequenceKey(subj_dir.name, cond_dir.name, view_dir.name)
                rel = (key.subject, key.condition, key.view)
                if many_files:
                    files.sort(key=lambda p: natural_key(p.name))
                    items.append(ScanItem(parts=rel, origin="/".join(rel), key=key, files=tuple(files)))
                    continue
                choice = choose_pickle([f.name for f in files])
                if choice.index is None:
                    items.append(ScanItem(parts=rel, origin="/".join(rel), reason=choice.reason))
                    continue
                chosen = files[choice.index]
                items.append(ScanItem(parts=rel + (chosen.name,), origin="/".join(rel + (chosen.name,)),
                                      key=key, files=(chosen,)))
                for i, why in choice.ignored.items():
                    parts = rel + (files[i].name,)
                    items.append(ScanItem(parts=parts, origin="/".join(parts), reason=why))
    items.sort(key=lambda it: it.parts)
    return items


# ----------------------------------------------------------------------------------------------------------
# Archives


class _ArchiveOrderError(ValueError):
    """The members of a multi-subject archive are not grouped by subject in sorted order."""


def _member_problem(name: str) -> str | None:
    """Why an archive member name is unsafe, or None (a leading ``./`` is fine)."""
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return "absolute or non-POSIX member path"
    if ".." in name.split("/"):
        return "member path contains '..'"
    return None


def _archive_subject(path: Path) -> str:
    return path.name[: -len(ARCHIVE_SUFFIX)]


def scan_archive(
    archive: Path, subjects: frozenset[str] | None, *, stem_is_subject: bool
) -> Iterator[tuple[ScanItem, bytes | None]]:
    """Stream one ``.tar.xz`` and yield ``(item, pickle bytes)`` (bytes None for bad / ignored items).

    Members are read once in archive order, never extracted to disk. The pickles of one subject are buffered
    (one subject at a time, ~40 MB for CASIA-B) and yielded sorted by (condition, view), so the output order
    does not depend on the archive's. A multi-subject archive must hold each subject as one contiguous group,
    in increasing order (true for ``tar`` of a sorted tree); otherwise ``_ArchiveOrderError`` (ValueError).

    Args:
        archive: the ``.tar.xz`` file.
        subjects: keep only these subjects (None: all).
        stem_is_subject: the archive is ``<subject>.tar.xz``; members of another subject are bad.

    Raises:
        BadSequenceError: (origin = the archive's name) the archive cannot be opened or is corrupt / truncated.
    """
    label = archive.name
    own_subject = _archive_subject(archive) if stem_is_subject else None
    group_subject: str | None = None
    group: dict[SequenceKey, list[tuple[tuple[str, ...], str, bytes | None]]] = {}
    pending_bad: list[ScanItem] = []
    done: list[str] = []

    def flush() -> list[tuple[ScanItem, bytes | None]]:
        out: list[tuple[ScanItem, bytes | None]] = list((it, None) for it in pending_bad)
        for key, found in group.items():
            found.sort(key=lambda f: f[0])
            choice = choose_pickle([f[0][-1] for f in found])
            if choice.index is None:
                rel = (key.subject, key.condition, key.view)
                out.append((ScanItem(parts=rel, origin=f"{label}:{'/'.join(rel)}", reason=choice.reason), None))
                continue
            parts, origin, data = found[choice.index]
            out.append((ScanItem(parts=parts, origin=origin, key=key), data))
            for i, why in choice.ignored.items():
                out.append((ScanItem(parts=found[i][0], origin=found[i][1], reason=why), None))
        out.sort(key=lambda e: e[0].parts)
        group.clear()
        pending_bad.clear()
        return out

    try:
        tar = tarfile.open(archive, "r:xz")
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as exc:
        raise BadSequenceError(label, f"cannot open as {ARCHIVE_SUFFIX} ({exc})") from None
    with tar:
        try:
            for member in tar:
                name = member.name
                if member.isdir() or not name.lower().endswith(".pkl"):
                    continue  # folders and non-sequence files (README, checksums, ...)
                origin = f"{label}:{name}"
                parts = PurePosixPath(name).parts
                subject = parts[0] if parts else ""
                problem = _member_problem(name)
                if problem is None and len(parts) != 4:
                    problem = _layout_reason(".pkl", len(parts))
                if problem is None and own_subject is not None and subject != own_subject:
                    problem = f"subject folder {subject!r} inside the archive of subject {own_subject!r}"
                if problem is None and not member.isfile():
                    problem = "not a regular file (link or device)"
                if problem is not None:
                    if subjects is None or own_subject is not None or subject in subjects:
                        pending_bad.append(ScanItem(parts=(subject,) + tuple(parts[1:]), origin=origin,
                                                    reason=problem))
                    continue
                if subjects is not None and subject not in subjects:
                    continue
                if subject != group_subject:
                    if group_subject is not None:
                        done.append(group_subject)
                        yield from flush()
                    if done and subject <= done[-1]:
                        raise _ArchiveOrderError(
                            f"{label}: the members of subject {subject} are not grouped in sorted subject "
                            f"order; extract the archive and import the folder instead")
                    group_subject = subject
                if _skip_unread(parts[-1]):
                    data = None  # another SUSTech1K modality (point clouds, RGB, ...): never the sequence
                else:
                    fh = tar.extractfile(member)
                    data = fh.read() if fh is not None else b""
                key = SequenceKey(parts[0], parts[1], parts[2])
                group.setdefault(key, []).append((parts, origin, data))
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as exc:
            raise BadSequenceError(label, f"corrupt or truncated archive ({exc})") from None
    yield from flush()


# ----------------------------------------------------------------------------------------------------------


def iter_sequences(
    src: str | Path,
    subjects: Collection[str] | None = None,
    skip_bad: bool = False,
    skipped: list[tuple[str, str]] | None = None,
) -> Iterator[RawSequence]:
    """Yield the validated sequences of an OpenGait dataset, in sorted (subject, condition, view) order.

    Args:
        src: a folder ``<subject>/<condition>/<view>/*.pkl``, a folder of ``<subject>.tar.xz`` archives, or one
            ``.tar.xz`` file (members ``<subject>/<condition>/<view>/*.pkl``; streamed, never extracted). If a
            view folder holds several pickles, :func:`choose_pickle` picks the sequence: SUSTech1K's camera
            silhouettes ``NN-<view>-Camera-Sils_aligned.pkl`` among its modality pickles (the others are not
            reported, nor read from archives), else the first in sorted order with the others noted in
            ``skipped`` as ``"ignored: ..."`` (OpenGait keeps one modality per pickle).
        subjects: only these subject ids (strings as in the paths, e.g. ``"075"``). Archives
            ``<subject>.tar.xz`` of unwanted subjects are not opened. Asking for a subject that ``src`` does
            not hold is an error.
        skip_bad: False: the first bad item raises. True: bad items are skipped (and recorded in ``skipped``);
            a corrupt archive is one bad item (origin: its file name) and the sequences of the subject being
            read when the damage was met are dropped with it.
        skipped: if given, receives ``(origin, reason)`` for every skipped bad item and every ignored extra
            pickle, in the order met.

    Yields:
        :class:`RawSequence`, frames uint8 ``[T, 64, 64]`` or ``[T, 64, 44]``, C-contiguous. Memory: one
        sequence at a time from folders; one subject's pickles at a time from archives.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        BadSequenceError: (``skip_bad=False``) a pickle that is corrupt, truncated, unsafe
            (:class:`~qgait.data.safe_pickle.UnsafePickleError`; refused, never executed), of the wrong dtype
            or shape, empty; a file outside the layout (wrong depth, absolute path, ``..``); a corrupt
            archive; a SUSTech1K view folder without its camera silhouettes. The message names the file, for
            archive members as ``"075.tar.xz:075/nm-01/000/000.pkl"``.
        ValueError: no sequence found; requested subjects missing; a folder mixing archives and subject
            folders; a multi-subject archive whose subjects are not contiguous and sorted.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder (expected an OpenGait dataset folder or "
                                f"{ARCHIVE_SUFFIX} archive)")
    wanted = _normalise_subjects(subjects)

    def note(item: ScanItem) -> None:
        reason = item.reason or "bad item"
        if reason.startswith("ignored:"):
            log.info("%s: %s", item.origin, reason)
        elif not skip_bad:
            raise BadSequenceError(item.origin, reason)
        else:
            log.info("skipping %s: %s", item.origin, reason)
        if skipped is not None:
            skipped.append((item.origin, reason))

    def load(item: ScanItem, payload: bytes | Path) -> RawSequence | None:
        try:
            frames = validate_frames(load_array(payload, origin=item.origin), item.origin)
        except BadSequenceError as exc:  # includes UnsafePickleError
            if not skip_bad:
                raise  # keep the precise class (UnsafePickleError)
            note(ScanItem(parts=item.parts, origin=exc.origin, reason=exc.reason))
            return None
        return RawSequence(key=item.key, frames=frames, origin=item.origin)  # type: ignore[arg-type]

    found: set[str] = set()

    if src.is_file():
        if not src.name.lower().endswith(ARCHIVE_SUFFIX):
            raise ValueError(f"{src}: neither a folder nor a {ARCHIVE_SUFFIX} archive")
        archives, stem_is_subject = [src], False
    else:
        archives = sorted((p for p in src.iterdir() if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIX)),
                          key=lambda p: p.name)
        stem_is_subject = True
        if archives and any(p.is_dir() and next(p.rglob("*.pkl"), None) is not None for p in src.iterdir()):
            raise ValueError(f"{src}: holds both {ARCHIVE_SUFFIX} archives and subject folders of .pkl files; "
                             f"import one kind at a time")

    if archives:
        if stem_is_subject and wanted is not None:
            missing = sorted(wanted - {_archive_subject(a) for a in archives})
            if missing:
                raise ValueError(f"{src}: no archive for subjects {_short(missing)}")
            archives = [a for a in archives if _archive_subject(a) in wanted]
        for archive in archives:
            try:
                for item, data in scan_archive(archive, wanted, stem_is_subject=stem_is_subject):
                    if item.key is None:
                        note(item)
                        continue
                    seq = load(item, data)  # type: ignore[arg-type]
                    if seq is not None:
                        found.add(item.key.subject)
                        yield seq
            except BadSequenceError as exc:
                if exc.origin != archive.name or not skip_bad:
                    raise  # a member's error (already handled by note) or a corrupt archive without skip_bad
                note(ScanItem(parts=(archive.name,), origin=exc.origin, reason=exc.reason))
    else:
        items = scan_folder(src, ".pkl", wanted, many_files=False)
        if wanted is not None:
            missing = sorted(wanted - {it.key.subject for it in items if it.key is not None})
            if missing:
                raise ValueError(f"{src}: no sequences for subjects {_short(missing)}")
        for item in items:
            if item.key is None:
                note(item)
                continue
            seq = load(item, item.files[0])
            if seq is not None:
                found.add(item.key.subject)
                yield seq

    if not found:
        which = f" for subjects {_short(sorted(wanted))}" if wanted is not None else ""
        why = " (every candidate was bad and skipped)" if skip_bad and skipped else ""
        raise ValueError(f"{src}: no sequences found{which}{why}; expected <subject>/<condition>/<view>/*.pkl "
                         f"or <subject>{ARCHIVE_SUFFIX} archives")
    if wanted is not None and not stem_is_subject and archives:
        missing = sorted(wanted - found)
        if missing:
            raise ValueError(f"{src}: no sequences for subjects {_short(missing)}")


def _short(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
