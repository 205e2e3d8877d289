"""Packed on-disk sequence store: every frame of a dataset in one memory-mapped uint8 file.

Layout of a store folder::

    frames.u8    raw uint8 frames back to back, C-order [n_frames, H, W]
    index.json   {"format_version": 1, "records": [{"subject", "condition", "view", "start", "length"}, ...]}
    meta.json    {format_version, frame_shape [H, W], n_frames, n_sequences, n_subjects, source, created, ...}

``meta.json`` is written last, inside a temporary ``<dest>.partial-<pid>`` folder that is then renamed to
``<dest>``: a folder without ``meta.json`` is an incomplete store and :meth:`SequenceStore.open` refuses it.
Nothing is pickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import warnings

import numpy as np

from .errors import BadSequenceError, raise_on_sigterm, signals_deferred
from .sources import SequenceKey, iter_sequences

__all__ = [
    "FORMAT_VERSION",
    "StoreError",
    "SequenceRecord",
    "ImportSummary",
    "StoreWriter",
    "build_store",
    "SequenceStore",
]

FORMAT_VERSION = 1
FRAMES_FILE = "frames.u8"
INDEX_FILE = "index.json"
META_FILE = "meta.json"
_PARTIAL = ".partial-"


class StoreError(ValueError):
    """A store folder is incomplete, corrupt or inconsistent; the message names the folder or file."""


@dataclass(frozen=True)
class SequenceRecord:
    """Where one sequence lives in a store: frames ``[start, start + length)`` of ``frames.u8``.

    Attributes:
        subject, condition, view: the sequence's key (strings as in the source paths).
        start: index of its first frame in the store (frames, not bytes).
        length: number of frames (>= 1).
    """

    subject: str
    condition: str
    view: str
    start: int
    length: int

    @property
    def key(self) -> SequenceKey:
        """The record's :class:`~qgait.data.sources.SequenceKey`."""
        return SequenceKey(self.subject, self.condition, self.view)


@dataclass
class ImportSummary:
    """What an import wrote.

    Attributes:
        n_subjects, n_sequences, n_frames: counts in the written store.
        frame_shape: ``(H, W)`` in pixels of every frame.
        skipped: ``(origin, reason)`` of every skipped bad item and ignored extra file.
        seconds: wall-clock duration of the import.
        dest: the store folder.
    """

    n_subjects: int
    n_sequences: int
    n_frames: int
    frame_shape: tuple[int, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    dest: str = ""

    def format(self, max_skipped: int = 50) -> str:
        """A human summary, listing at most ``max_skipped`` skipped items with their reasons."""
        h, w = self.frame_shape
        lines = [
            f"store {self.dest}: {self.n_subjects} subjects, {self.n_sequences} sequences, "
            f"{self.n_frames} frames of {h}x{w} ({self.n_frames * h * w / 2**20:.1f} MiB) in {self.seconds:.1f} s"
        ]
        n_ignored = sum(1 for _, reason in self.skipped if reason.startswith("ignored:"))
        n_bad = len(self.skipped) - n_ignored
        if self.skipped:
            parts = ([f"skipped {n_bad} bad item(s)"] if n_bad else []) + \
                    ([f"ignored {n_ignored} extra file(s)"] if n_ignored else [])
            lines.append(", ".join(parts) + ":")
        for origin, reason in self.skipped[:max_skipped]:
            lines.append(f"  {origin}: {reason}")
        if len(self.skipped) > max_skipped:
            lines.append(f"  ... and {len(self.skipped) - max_skipped} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not supported on every platform
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: object) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _looks_like_store(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    return bool(names) and names <= {FRAMES_FILE, INDEX_FILE, META_FILE}


class StoreWriter:
    """Write a store sequence by sequence; nothing appears at ``dest`` until :meth:`close` succeeds.

    Frames are appended to ``<dest>.partial-<pid>/frames.u8`` as they come (memory: one sequence);
    :meth:`close` writes ``index.json`` then ``meta.json`` and renames the folder to ``dest`` in one step.
    Used as a context manager, an exception aborts the import and removes the partial folder; so do Ctrl-C and
    SIGTERM (which raises :class:`~qgait.data.errors.Interrupted` inside the block, main thread only).

    Args:
        dest: the store folder to create.
        source: a description of the source (path), recorded in ``meta.json``.
        overwrite: replace ``dest`` if it is already a store.
        cut_width: store 64-wide frames cut to 44 (10 px off each side), as training and test read them
            (gait-protocols.md); 44-wide frames are kept as they are. Saves 31% of the bytes every batch
            copies. ``meta.json`` records it.

    Raises:
        FileExistsError: ``dest`` is a complete store and ``overwrite`` is False, or ``dest`` exists and is
            not a store folder (never deleted).
    """

    def __init__(self, dest: str | Path, source: str = "", overwrite: bool = False, cut_width: bool = False) -> None:
        self.dest = Path(dest)
        self.cut_width = bool(cut_width)
        self.source = str(source)
        self.overwrite = overwrite
        self._check_dest()
        self._remove_stale_partials()
        self.partial = self.dest.parent / f"{self.dest.name}{_PARTIAL}{os.getpid()}"
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir()
        self._fh = open(self.partial / FRAMES_FILE, "wb")
        self._records: list[SequenceRecord] = []
        self._keys: set[SequenceKey] = set()
        self._n_frames = 0
        self.frame_shape: tuple[int, int] | None = None
        self._closed = False

    # -- checks
    def _check_dest(self) -> None:
        d = self.dest
        if not d.exists():
            return
        if not d.is_dir():
            raise FileExistsError(f"{d}: exists and is not a store folder; choose another destination")
        if (d / META_FILE).exists():
            if not self.overwrite:
                raise FileExistsError(f"{d}: a store already exists there; add --overwrite to replace it")
        elif any(d.iterdir()) and not _looks_like_store(d):
            raise FileExistsError(f"{d}: exists and holds files that are not a store's; choose another destination")

    def _remove_stale_partials(self) -> None:
        parent = self.dest.parent
        if not parent.is_dir():
            return
        prefix = f"{self.dest.name}{_PARTIAL}"
        for p in parent.iterdir():
            if not p.name.startswith(prefix) or not p.is_dir():
                continue
            pid = p.name[len(prefix):]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                shutil.rmtree(p, ignore_errors=True)

    # -- writing
    @property
    def n_sequences(self) -> int:
        """Sequences added so far."""
        return len(self._records)

    @property
    def n_frames(self) -> int:
        """Frames added so far."""
        return self._n_frames

    @property
    def subjects(self) -> set[str]:
        """Subjects added so far."""
        return {r.subject for r in self._records}

    def check(self, frames: np.ndarray, origin: str) -> None:
        """Raise :class:`BadSequenceError` if ``frames`` (uint8 ``[T, H, W]``, T >= 1) cannot join this store,
        e.g. a frame size different from the first sequence's."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 3 or not len(frames):
            desc = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise BadSequenceError(origin, f"expected uint8 frames [T, H, W] with T >= 1, got {desc}")
        shape = (int(frames.shape[1]), int(frames.shape[2]))
        if self.frame_shape is not None and shape != self.frame_shape:
            raise BadSequenceError(origin, f"frame size {shape[0]}x{shape[1]} differs from the store's "
                                           f"{self.frame_shape[0]}x{self.frame_shape[1]}")

    def add(self, key: SequenceKey, frames: np.ndarray, origin: str | None = None) -> SequenceRecord:
        """Append one sequence.

        Args:
            key: its subject / condition / view; unique in the store.
            frames: uint8 ``[T, H, W]``, T >= 1, same ``(H, W)`` as every other sequence.
            origin: name for error messages (default: the key).

        Returns:
            The sequence's record.

        Raises:
            BadSequenceError: wrong dtype / rank, no frames, or a frame size different from the store's.
            ValueError: the key was already added, or the writer is closed.
        """
        if self._closed:
            raise ValueError(f"{self.dest}: writer already closed")
        origin = str(key) if origin is None else origin
        if self.cut_width and isinstance(frames, np.ndarray) and frames.ndim == 3 and frames.shape[2] == 64:
            frames = frames[:, :, 10:54]
        self.check(frames, origin)
        if key in self._keys:
            raise ValueError(f"{origin}: sequence {key} added twice")
        if self.frame_shape is None:
            self.frame_shape = (int(frames.shape[1]), int(frames.shape[2]))
        self._fh.write(np.ascontiguousarray(frames).tobytes())
        rec = SequenceRecord(key.subject, key.condition, key.view, self._n_frames, int(frames.shape[0]))
        self._records.append(rec)
        self._keys.add(key)
        self._n_frames += rec.length
        return rec

    def close(self) -> Path:
        """Finish the store: write ``index.json``, then ``meta.json``, then rename to ``dest`` atomically.

        Returns:
            ``dest``.

        Raises:
            ValueError: nothing was added (the partial folder is removed).
            FileExistsError: ``dest`` appeared meanwhile and ``overwrite`` is False.
        """
        if self._closed:
            raise ValueError(f"{self.dest}: writer already closed")
        if not self._records:
            self.abort()
            raise ValueError(f"{self.dest}: no sequences were added; nothing written")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        _write_json(self.partial / INDEX_FILE, {
            "format_version": FORMAT_VERSION,
            "records": [{"subject": r.subject, "condition": r.condition, "view": r.view,
                         "start": r.start, "length": r.length} for r in self._records],
        })
        h, w = self.frame_shape  # type: ignore[misc]
        _write_json(self.partial / META_FILE, {
            "format_version": FORMAT_VERSION,
            "frame_shape": [h, w],
            "dtype": "uint8",
            "n_frames": self._n_frames,
            "n_sequences": len(self._records),
            "n_subjects": len(self.subjects),
            "source": self.source,
            "cut_width": self.cut_width,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        _fsync_dir(self.partial)
        self._check_dest()
        old = None
        with signals_deferred():  # Ctrl-C / SIGTERM wait: never the old store moved aside and the new one deleted
            if self.dest.exists():
                old = self.dest.parent / f"{self.dest.name}.old-{os.getpid()}"
                if old.exists():
                    shutil.rmtree(old)
                os.rename(self.dest, old)
            os.rename(self.partial, self.dest)
            self._closed = True
            _fsync_dir(self.dest.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return self.dest

    def abort(self) -> None:
        """Drop everything written so far (removes the partial folder); safe to call twice."""
        if not self._fh.closed:
            self._fh.close()
        shutil.rmtree(self.partial, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> StoreWriter:
        self._sigterm = raise_on_sigterm()
        self._sigterm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.abort()
            elif not self._closed:
                self.close()
        finally:
            self._sigterm.__exit__(None, None, None)


def build_store(
    src: str | Path,
    dest: str | Path,
    subjects: Collection[str] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    cut_width: bool = False,
) -> ImportSummary:
    """Import an OpenGait dataset (folder or ``.tar.xz`` archives, see :func:`~qgait.data.sources.iter_sequences`)
    into a packed store at ``dest``.

    Sequences are streamed: memory holds one subject's pickles at most (archives), never the dataset.

    Args:
        src: the dataset folder, folder of ``<subject>.tar.xz`` archives, or one archive.
        dest: the store folder to create (its parent is created if needed).
        subjects: only these subject ids (None: all).
        skip_bad: skip bad items (listed in the summary) instead of failing on the first one.
        progress: show a tqdm progress bar (sequences, with the current subject).
        overwrite: replace an existing store at ``dest``.
        cut_width: cut 64-wide frames to 44 at import (see :class:`StoreWriter`).

    Returns:
        An :class:`ImportSummary`.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        FileExistsError: ``dest`` is already a store (without ``overwrite``) or is some other folder or file.
        BadSequenceError: (``skip_bad=False``) a bad item, named; also a frame size that differs from the
            first sequence's. Nothing is left at ``dest`` and the partial folder is removed.
        ValueError: no sequences (see ``iter_sequences``).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    skipped: list[tuple[str, str]] = []
    with StoreWriter(dest, source=str(Path(src).resolve()), overwrite=overwrite, cut_width=cut_width) as writer:
        bar = tqdm(desc="import", unit="seq", disable=not progress, dynamic_ncols=True)
        try:
            for seq in iter_sequences(src, subjects=subjects, skip_bad=skip_bad, skipped=skipped):
                try:
                    writer.add(seq.key, seq.frames, origin=seq.origin)
                except BadSequenceError as exc:
                    if not skip_bad:
                        raise
                    skipped.append((exc.origin, exc.reason))
                    continue
                bar.update(1)
                bar.set_postfix(subject=seq.key.subject, frames=writer.n_frames, refresh=False)
        finally:
            bar.close()
        frame_shape = writer.frame_shape
        n_subjects, n_sequences, n_frames = len(writer.subjects), writer.n_sequences, writer.n_frames
        writer.close()
    return ImportSummary(n_subjects=n_subjects, n_sequences=n_sequences, n_frames=n_frames,
                         frame_shape=frame_shape,  # type: ignore[arg-type]
                         skipped=skipped, seconds=time.perf_counter() - t0, dest=str(dest))


def _as_str_set(values: Collection[str] | str | None) -> set[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return {values}
    return {str(v) for v in values}


class SequenceStore:
    """Read-only access to a packed store; frames are memory-mapped, so opening is instant and cheap.

    Open with :meth:`SequenceStore.open`. Pickling a store pickles its path only (it is reopened on load),
    so it can be handed to loader processes.

    Attributes:
        path: the store folder.
        meta: the content of ``meta.json``.
        records: one :class:`SequenceRecord` per sequence, in store order (sorted subject, condition, view
            for stores written by :func:`build_store`).
    """

    def __init__(self, path: Path, meta: dict, records: list[SequenceRecord], frames: np.ndarray) -> None:
        self.path = path
        self.meta = meta
        self.records = records
        self._frames = frames

    @classmethod
    def open(cls, path: str | Path) -> SequenceStore:
        """Open a store folder written by :class:`StoreWriter`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            StoreError: not a folder; incomplete (no ``meta.json``: interrupted or still running import);
                ``meta.json`` / ``index.json`` unreadable or inconsistent; ``frames.u8`` missing or its size
                differs from ``n_frames * H * W`` bytes.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such store folder")
        if not path.is_dir():
            raise StoreError(f"{path}: not a store folder")
        meta_path, index_path, frames_path = path / META_FILE, path / INDEX_FILE, path / FRAMES_FILE
        if not meta_path.exists():
            raise StoreError(f"{path}: incomplete store (no {META_FILE}): its import was interrupted or is still "
                             f"running; import it again")
        meta = cls._read_json(meta_path)
        try:
            version = meta["format_version"]
            h, w = (int(v) for v in meta["frame_shape"])
            n_frames, n_sequences = int(meta["n_frames"]), int(meta["n_sequences"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{meta_path}: missing or malformed field ({exc})") from None
        if version != FORMAT_VERSION:
            raise StoreError(f"{meta_path}: format_version {version!r}, this qgait reads {FORMAT_VERSION}")
        if h < 1 or w < 1 or n_frames < 1 or n_sequences < 1:
            raise StoreError(f"{meta_path}: frame_shape {[h, w]}, n_frames {n_frames}, n_sequences {n_sequences} "
                             f"must all be positive")
        records = cls._read_records(index_path, n_frames, n_sequences)
        if not frames_path.exists():
            raise StoreError(f"{frames_path}: missing")
        size = frames_path.stat().st_size
        if size != n_frames * h * w:
            raise StoreError(f"{frames_path}: {size} bytes, expected n_frames * H * W = {n_frames} * {h} * {w} = "
                             f"{n_frames * h * w} (truncated or corrupt)")
        frames = np.memmap(frames_path, dtype=np.uint8, mode="r", shape=(n_frames, h, w))
        return cls(path, meta, records, frames)

    @staticmethod
    def _read_json(p: Path) -> dict:
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{p}: missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{p}: corrupt ({exc})") from None
        if not isinstance(obj, dict):
            raise StoreError(f"{p}: corrupt (expected a JSON object, got {type(obj).__name__})")
        return obj

    @classmethod
    def _read_records(cls, index_path: Path, n_frames: int, n_sequences: int) -> list[SequenceRecord]:
        index = cls._read_json(index_path)
        raw = index.get("records")
        if not isinstance(raw, list):
            raise StoreError(f"{index_path}: corrupt (no 'records' list)")
        if len(raw) != n_sequences:
            raise StoreError(f"{index_path}: {len(raw)} records, meta.json says {n_sequences}")
        records = []
        expected_start = 0
        for i, r in enumerate(raw):
            try:
                rec = SequenceRecord(str(r["subject"]), str(r["condition"]), str(r["view"]),
                                     int(r["start"]), int(r["length"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"{index_path}: record {i} malformed ({exc!r})") from None
            if rec.start != expected_start or rec.length < 1:
                raise StoreError(f"{index_path}: record {i} ({rec.key}) has start {rec.start}, length "
                                 f"{rec.length}; expected start {expected_start} and length >= 1")
            expected_start += rec.length
            records.append(rec)
        if expected_start != n_frames:
            raise StoreError(f"{index_path}: records cover {expected_start} frames, meta.json says {n_frames}")
        return records

    def __reduce__(self):
        return (SequenceStore.open, (str(self.path),))

    def __repr__(self) -> str:
        h, w = self.frame_shape
        return f"SequenceStore({str(self.path)!r}: {len(self)} sequences, {self.n_frames} frames of {h}x{w})"

    # -- shape and size
    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(H, W)`` in pixels of every frame."""
        return (int(self._frames.shape[1]), int(self._frames.shape[2]))

    @property
    def n_frames(self) -> int:
        """Total frames in the store."""
        return int(self._frames.shape[0])

    def __len__(self) -> int:
        """Number of sequences."""
        return len(self.records)

    @property
    def subjects(self) -> list[str]:
        """Sorted distinct subject ids."""
        return sorted({r.subject for r in self.records})

    # -- frames
    def _record(self, i: int) -> SequenceRecord:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"sequence index must be an int, got {type(i).__name__}")
        if not 0 <= i < len(self.records):
            raise IndexError(f"sequence index {i} out of range for a store of {len(self.records)} sequences")
        return self.records[int(i)]

    def frames(self, i: int) -> np.ndarray:
        """All frames of sequence ``i``: a read-only memmap view (no copy), uint8 ``[T, H, W]``.

        Raises:
            IndexError: ``i`` out of range. TypeError: ``i`` not an integer.
        """
        r = self._record(i)
        return self._frames[r.start : r.start + r.length]

    def gather(self, i: int, frame_idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """Frames ``frame_idx`` (in that order, repeats allowed) of sequence ``i``, copied.

        Args:
            i: sequence index.
            frame_idx: integer frame positions in ``[0, length)``, shape ``[n]``.

        Returns:
            uint8 ndarray ``[n, H, W]``.

        Raises:
            IndexError: ``i`` or a frame position out of range. TypeError: non-integer ``frame_idx``.
        """
        r = self._record(i)
        idx = np.asarray(frame_idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise TypeError(f"frame_idx must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= r.length):
            raise IndexError(f"frame positions {int(idx.min())}..{int(idx.max())} out of range for sequence {i} "
                             f"({r.key}) of {r.length} frames")
        return np.asarray(self._frames[r.start + idx.astype(np.int64)])

    def gather_batch(self, indices: Sequence[int], frame_idx: np.ndarray) -> np.ndarray:
        """Frames of several sequences at once: ``frame_idx[j]`` of sequence ``indices[j]``, in one read.

        Args:
            indices: ``[B]`` sequence indices.
            frame_idx: int ``[B, n]`` positions, each row within its sequence's length.

        Returns:
            uint8 ``[B, n, H, W]`` (a copy).

        Raises:
            IndexError: a sequence index or frame position out of range.
        """
        idx = np.asarray(indices, dtype=np.int64)
        pos = np.asarray(frame_idx, dtype=np.int64)
        if pos.ndim != 2 or pos.shape[0] != idx.size:
            raise IndexError(f"frame_idx must be [{idx.size}, n], got {pos.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.records)):
            raise IndexError(f"sequence index out of range for a store of {len(self.records)} sequences")
        starts, lengths = self._starts_lengths()
        if pos.size and (pos.min() < 0 or (pos >= lengths[idx][:, None]).any()):
            raise IndexError("frame position out of range for its sequence")
        flat = (starts[idx][:, None] + pos).reshape(-1)
        h, w = self.frame_shape
        # torch's index_select over the map (zero-copy view) is 2.5-5x faster than numpy fancy indexing here
        import torch

        frames = getattr(self, "_torch_frames", None)
        if frames is None:
            with warnings.catch_warnings():  # the map is read-only; index_select only reads it
                warnings.simplefilter("ignore", UserWarning)
                frames = self._torch_frames = torch.from_numpy(self._frames.view(np.ndarray))
        out = frames.index_select(0, torch.from_numpy(flat)).numpy()
        return out.reshape(idx.size, pos.shape[1], h, w)

    @property
    def lengths(self) -> np.ndarray:
        """Frames per sequence, int64 ``[len(store)]`` (cached)."""
        return self._starts_lengths()[1]

    def _starts_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        cached = getattr(self, "_sl_cache", None)
        if cached is None:
            cached = (np.array([r.start for r in self.records], dtype=np.int64),
                      np.array([r.length for r in self.records], dtype=np.int64))
            self._sl_cache = cached
        return cached

    # -- selection
    def select(
        self,
        subjects: Collection[str] | str | None = None,
        conditions: Collection[str] | str | None = None,
        views: Collection[str] | str | None = None,
    ) -> list[int]:
        """Indices (store order) of the sequences matching every given filter; None matches anything.

        Values are exact strings as in the records (e.g. ``conditions=["nm-01", "nm-02"]``); a single string
        is one value, not a collection of characters.
        """
        s, c, v = _as_str_set(subjects), _as_str_set(conditions), _as_str_set(views)
        return [i for i, r in enumerate(self.records)
                if (s is None or r.subject in s) and (c is None or r.condition in c) and (v is None or r.view in v)]

    def check_known(
        self,
        subjects: Collection[str] | str | None = None,
        conditions: Collection[str] | str | None = None,
        views: Collection[str] | str | None = None,
    ) -> None:
        """Refuse requested subject / condition / view ids that the store does not hold (as ``qgait data import
        --subjects`` refuses subjects its source lacks), rather than selecting fewer sequences silently.

        Raises:
            ValueError: the unknown ids, by kind, with what the store holds.
        """
        problems = []
        for kind, wanted, have in (("subject", subjects, self.subjects),
                                   ("condition", conditions, {r.condition for r in self.records}),
                                   ("view", views, {r.view for r in self.records})):
            missing = sorted((_as_str_set(wanted) or set()) - set(have))
            if missing:
                held = sorted(have)
                shown = ", ".join(held[:12]) + (f", ... ({len(held)} in all)" if len(held) > 12 else "")
                problems.append(f"no {kind} {', '.join(missing)} (it holds {shown})")
        if problems:
            raise ValueError(f"{self.path}: " + "; ".join(problems))

    def labels_for(self, indices: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """Class labels of the given sequences.

        Args:
            indices: sequence indices.

        Returns:
            ``(label_ids, subject_names)``: ``label_ids`` int64 ``[len(indices)]`` with values in ``0..C-1``,
            where ``subject_names`` is the sorted list of the ``C`` distinct subjects among ``indices`` and
            ``label_ids[j]`` is the position of sequence ``indices[j]``'s subject in it.
        """
        subj = [self._record(int(i)).subject for i in indices]
        names = sorted(set(subj))
        lookup = {n: j for j, n in enumerate(names)}
        return np.fromiter((lookup[s] for s in subj), dtype=np.int64, count=len(subj)), names

    def stats(self) -> dict:
        """Counts: ``{"subjects", "sequences", "frames", "frame_shape", "frames_per_sequence": {"min",
        "median", "max"}, "conditions": {condition: sequences}, "views": {view: sequences}}``."""
        lengths = [r.length for r in self.records]
        return {
            "subjects": len(self.subjects),
            "sequences": len(self.records),
            "frames": self.n_frames,
            "frame_shape": list(self.frame_shape),
            "frames_per_sequence": {"min": min(lengths), "median": float(statistics.median(lengths)),
                                    "max": max(lengths)},
            "conditions": dict(sorted(Counter(r.condition for r in self.records).items())),
            "views": dict(sorted(Counter(r.view for r in self.records).items())),
        }
