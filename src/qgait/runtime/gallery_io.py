"""Gallery files: read and write a :class:`qgait.runtime.Gallery` as ``.npz``, atomically, with the model's identity.

Format ``qgait-gallery/2`` (a numpy ``.npz``, read with ``allow_pickle=False``; nothing in it is pickled):

* ``format``: the string ``"qgait-gallery/2"``;
* ``embeddings``: float32 ``[m, c, p]`` (entries, channels, parts; units of the model's embedding);
* ``labels``: ``m`` unicode strings (e.g. subject ids);
* ``info``: a JSON string, a list of ``m`` per-entry dicts (condition, view, source) or ``[]``;
* ``identity``: a JSON string, :meth:`qgait.runtime.identity.ModelIdentity.to_dict` or ``null``.

Files written before the identity was recorded (``embeddings``, ``labels``, ``info`` only) still load, with
``identity = None``: :func:`qgait.runtime.identity.check_identity` then answers ``"unknown"`` (no warning is
issued: the caller decides, e.g. ``qgait enroll`` refuses to add to such a gallery unless told to adopt it).

Writes go to a temporary file beside the target, are flushed to disk, and replace the target with ``os.replace``
(atomic on POSIX and Windows), so a reader sees the old file or the new one, never a half-written one; a failure
mid-write leaves the old file intact and removes the temporary file. Concurrent writers are not serialized: the
last ``os.replace`` wins (each file stays whole).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from .identity import GalleryMismatchError, ModelIdentity, check_identity

__all__ = ["FORMAT", "GalleryFileError", "gallery_path", "load_gallery", "read_identity", "save_gallery"]

FORMAT = "qgait-gallery/2"
"""The format tag written into every gallery file."""

_REQUIRED = ("embeddings", "labels", "info")


class GalleryFileError(ValueError):
    """A gallery file that is missing, truncated, corrupt or malformed (the message names the file)."""


def gallery_path(path: str | Path) -> Path:
    """The file a gallery is written to: ``path`` itself when it ends in ``.npz``, else ``path + ".npz"`` (as
    ``numpy.savez`` names it)."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _atomic_write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays), sync_dir=True)


def save_gallery(gallery: Any, path: str | Path) -> Path:
    """Write ``gallery`` (a :class:`qgait.runtime.Gallery`) atomically in format ``qgait-gallery/2``.

    Args:
        gallery: embeddings ``[m, c, p]``, ``m`` labels, info, and its ``identity`` (or ``None``).
        path: the target; ``.npz`` is appended when missing (see :func:`gallery_path`).

    Returns:
        The path written.

    Raises:
        ValueError: info entries that are not JSON-serializable.
        OSError: the folder cannot be created or written (the old file, if any, is left as it was).
    """
    path = gallery_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = json.dumps(list(gallery.info))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: gallery info is not JSON-serializable ({exc})") from exc
    identity = None if gallery.identity is None else gallery.identity.to_dict()
    _atomic_write_npz(path, {
        "format": np.array(FORMAT),
        "embeddings": np.ascontiguousarray(gallery.embeddings, dtype=np.float32),
        "labels": np.array([str(v) for v in gallery.labels], dtype=str),
        "info": np.array(info),
        "identity": np.array(json.dumps(identity)),
    })
    return path


def _open(path: Path):
    if not path.is_file():
        raise GalleryFileError(f"{path}: gallery file not found")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile / numpy raise many types for corrupt files
        raise GalleryFileError(f"{path}: not a readable gallery file (truncated or corrupt? {type(exc).__name__}: "
                               f"{exc})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise GalleryFileError(f"{path}: a single .npy array, not a gallery .npz file")
    return z


def _scalar_str(z, key: str, path: Path) -> str:
    a = z[key]
    if a.ndim != 0 or a.dtype.kind != "U":
        raise GalleryFileError(f"{path}: gallery field {key!r} must be a string, got {a.dtype} {list(a.shape)}")
    return str(a)


def _identity(z, path: Path) -> ModelIdentity | None:
    files = set(z.files)
    if "format" in files:
        fmt = _scalar_str(z, "format", path)
        if fmt != FORMAT:
            raise GalleryFileError(f"{path}: unknown gallery format {fmt!r} (this qgait reads {FORMAT!r} and "
                                   "files without a format tag)")
    if "identity" not in files:
        return None
    try:
        d = json.loads(_scalar_str(z, "identity", path))
        return None if d is None else ModelIdentity.from_dict(d)
    except (json.JSONDecodeError, ValueError) as exc:
        raise GalleryFileError(f"{path}: malformed model identity ({exc})") from exc


def read_identity(path: str | Path) -> ModelIdentity | None:
    """The model identity recorded in a gallery file, without reading its embeddings (``None``: not recorded).

    Raises:
        GalleryFileError: missing, truncated, corrupt or malformed file (named).
    """
    path = Path(path)
    z = _open(path)
    try:
        missing = [k for k in _REQUIRED if k not in z.files]
        if missing:
            raise GalleryFileError(f"{path}: not a gallery file (lacks {missing}; has {sorted(z.files)})")
        return _identity(z, path)
    except GalleryFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged zip member fails only when read
        raise GalleryFileError(f"{path}: corrupt gallery file ({type(exc).__name__}: {exc})") from exc
    finally:
        z.close()


def load_gallery(path: str | Path, expect: Any = None):
    """Read a gallery file (format ``qgait-gallery/2`` or the older one without identity).

    Args:
        path: the ``.npz`` file.
        expect: a :class:`~qgait.runtime.identity.ModelIdentity` or a ``GaitEmbedder`` the gallery must have
            been built with; ``None``: no check. A gallery without a recorded identity passes (``"unknown"``).

    Returns:
        A :class:`qgait.runtime.Gallery` with ``identity`` set (``None`` for an old file).

    Raises:
        GalleryFileError: missing, truncated or corrupt file, a field missing or malformed (wrong dtype or rank,
            label / info counts that do not match the embeddings, NaN or infinite embeddings); the file is named.
        GalleryMismatchError: ``expect`` is another model or input size (both are named).
    """
    from .embedder import Gallery

    path = Path(path)
    model = None if expect is None or isinstance(expect, ModelIdentity) else ModelIdentity.of(expect)
    z = _open(path)
    try:
        missing = [k for k in _REQUIRED if k not in z.files]
        if missing:
            raise GalleryFileError(f"{path}: not a gallery file (lacks {missing}; has {sorted(z.files)})")
        identity = _identity(z, path)
        if expect is not None:  # before reading the embeddings: a large gallery fails fast
            check_identity(identity, model or expect, where=f"gallery {path}")
        emb, labels = z["embeddings"], z["labels"]
        info_text = _scalar_str(z, "info", path)
    except (GalleryFileError, GalleryMismatchError):
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile (CRC), EOFError, OSError on a damaged member
        raise GalleryFileError(f"{path}: corrupt gallery file ({type(exc).__name__}: {exc})") from exc
    finally:
        z.close()
    try:
        info = json.loads(info_text)
    except json.JSONDecodeError as exc:
        raise GalleryFileError(f"{path}: malformed info JSON ({exc})") from exc
    if emb.dtype.kind != "f" or emb.ndim != 3 or emb.shape[0] == 0:
        raise GalleryFileError(f"{path}: embeddings must be a non-empty float [m, c, p] array, got {emb.dtype} "
                               f"{list(emb.shape)}")
    if labels.ndim != 1 or labels.dtype.kind != "U" or len(labels) != emb.shape[0]:
        raise GalleryFileError(f"{path}: labels must be {emb.shape[0]} strings (one per embedding), got "
                               f"{labels.dtype} {list(labels.shape)}")
    if not isinstance(info, list) or (info and len(info) != emb.shape[0]) or not all(isinstance(d, dict) for d in info):
        raise GalleryFileError(f"{path}: info must be a list of {emb.shape[0]} dicts or empty")
    if not np.isfinite(emb).all():
        raise GalleryFileError(f"{path}: embeddings contain NaN or infinite values")
    if identity is not None and identity.embedding_shape not in (None, tuple(emb.shape[1:])):
        raise GalleryFileError(f"{path}: embeddings {list(emb.shape[1:])} do not match the recorded model's "
                               f"{list(identity.embedding_shape)}")
    return Gallery(emb, [str(v) for v in labels], info, identity=identity)
