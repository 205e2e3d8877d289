"""A small inference API over an exported ONNX gait model: embed silhouette sequences, identify against a gallery.

Example::

    from qgait.runtime import GaitEmbedder, Gallery, identify

    emb = GaitEmbedder("model.int8.onnx")              # or a packed ".qgpack" model
    gallery = Gallery(emb.embed_many(gallery_seqs), labels)
    probe = emb.embed(frames)                           # uint8 [T, 64, 64] or [T, 64, 44], or float [n, T, h, w]
    identify(probe, gallery, top_k=5)                   # [(label, distance), ...] nearest first

Distances are the part-averaged Euclidean distance of the evaluation (``qgait.evaluation.part_distance``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.transforms import to_model_input
from ..evaluation.distance import part_distance

__all__ = ["ModelLoadError", "GaitEmbedder", "prepare_silhouettes", "Gallery", "identify", "identify_many",
           "default_providers"]


class ModelLoadError(ValueError):
    """A model file that is missing, unreadable, corrupt, or not a silhouette-sequence model (names the file)."""


def default_providers() -> list[str]:
    """``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when ONNX Runtime has CUDA, else the CPU one."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + ["CPUExecutionProvider"]


def ort_session(source: str | bytes, threads: int | None = None, providers: Sequence[str] | None = None):
    """An ONNX Runtime session over a model file path or serialized bytes: warnings silenced, ``threads`` intra-op
    threads (one inter-op), ``providers`` (default :func:`default_providers`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(source, so, providers=list(providers or default_providers()))


_FLOAT_TYPES = {"tensor(float)": np.float32}


def prepare_silhouettes(silhouettes: Any, input_size: tuple[int, int]) -> np.ndarray:
    """Model input ``float32 [n, T, h, w]`` at ``input_size`` ``(h, w)`` from raw frames or float silhouettes.

    Accepted: uint8 ``[T, 64, 64]`` / ``[T, 64, 44]`` (or with a leading batch ``n``) raw stored frames,
    converted exactly as in training (``qgait.data.transforms.to_model_input``: /255, cut 64 -> 44, resize
    to the model's input size); float ``[T, h, w]`` / ``[n, T, h, w]`` silhouettes in [0, 1] at the model's
    input size (bool is read as 0/1). numpy arrays or torch tensors.

    Raises:
        ValueError: wrong rank or frame size, empty sequence, unsupported dtype, float values outside [0, 1]
            or not finite (the message names the problem and what is expected).
    """
    if isinstance(silhouettes, np.ndarray):
        if silhouettes.dtype == object:
            raise ValueError("silhouettes: dtype object is not a numeric array")
        arr = np.ascontiguousarray(silhouettes)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    elif isinstance(silhouettes, torch.Tensor):
        x = silhouettes.detach().cpu()
    else:
        raise ValueError(f"silhouettes must be a numpy array or torch tensor, got {type(silhouettes).__name__}")
    h, w = (int(v) for v in input_size)
    if x.ndim not in (3, 4):
        raise ValueError(f"silhouettes must be [T, H, W] or [n, T, H, W], got shape {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"silhouettes is empty: shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        fh, fw = x.shape[-2:]
        if fh != 64 or fw not in (64, 44):
            raise ValueError(f"raw uint8 frames must be 64x64 or 64x44 (OpenGait format), got {fh}x{fw} "
                             f"(shape {tuple(x.shape)})")
        x = to_model_input(x, (h, w))
    elif x.dtype == torch.bool or x.is_floating_point():
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"float silhouettes must have frames of the model input size {h}x{w}, got "
                             f"{x.shape[-2]}x{x.shape[-1]} (shape {tuple(x.shape)}); pass raw uint8 frames to "
                             "have them cut and resized")
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("silhouettes contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"float silhouettes must be in [0, 1], got values in [{lo:g}, {hi:g}] (raw frames "
                             "are uint8 0..255)")
    else:
        dt = str(x.dtype).replace("torch.", "")
        raise ValueError(f"unsupported silhouette dtype {dt}: pass uint8 frames (0..255) or float "
                         "silhouettes in [0, 1]")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


class GaitEmbedder:
    """An ONNX Runtime session over a gait model ``silhouettes [n, T, h, w] float -> embeddings [n, c, p]``.

    Args:
        path: an ``.onnx`` file (FP32 or int8 QDQ, from ``qgait export``) or a packed ``.qgpack`` file.
        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
        threads: intra-op threads (default: ONNX Runtime's choice, i.e. the physical cores).

    Attributes:
        input_size: the model's ``(h, w)``.
        meta: the ``qgait`` export metadata (kind, layers, ...), ``{}`` for foreign models.

    Raises:
        ModelLoadError: missing or corrupt file; a model whose input is not one float ``[n, T, h, w]`` tensor with
            fixed ``h, w``, or whose output is not ``[n, c, p]``.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        from ..export.int4 import PackedModelError, is_packed_file, load_packed

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: model file not found")
        try:
            source: Any = load_packed(self.path).SerializeToString() if is_packed_file(self.path) else str(self.path)
            self.session = ort_session(source, threads, providers)
        except PackedModelError as exc:
            raise ModelLoadError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - ORT raises its own error types for unreadable models
            raise ModelLoadError(f"{self.path}: not a readable ONNX model ({type(exc).__name__}: "
                                 f"{str(exc).strip()[:300]})") from exc
        self._validate()
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.meta: dict = json.loads(meta.get("qgait", "{}"))
        except json.JSONDecodeError:
            self.meta = {}

    def _validate(self) -> None:
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1:
            raise ModelLoadError(f"{self.path}: a gait model has one input (silhouettes [n, T, h, w]); this one has "
                                 f"{len(ins)}: {[i.name for i in ins]}")
        inp = ins[0]
        shape = list(inp.shape)
        if inp.type not in _FLOAT_TYPES or len(shape) != 4:
            raise ModelLoadError(f"{self.path}: input {inp.name!r} is {inp.type} {shape}; a gait model takes a float "
                                 f"silhouette sequence [n, T, h, w]")
        h, w = shape[2], shape[3]
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise ModelLoadError(f"{self.path}: input {inp.name!r} {shape} has no fixed frame size (h, w)")
        out = outs[0]
        if len(outs) < 1 or (out.shape is not None and len(out.shape) != 3):
            raise ModelLoadError(f"{self.path}: output {out.name!r} {out.shape} is not embeddings [n, c, p]")
        self.input_name, self.output_name = inp.name, out.name
        self.input_size = (h, w)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __repr__(self) -> str:
        kind = self.meta.get("kind", "onnx")
        return f"GaitEmbedder({str(self.path)!r}, {kind}, input {self.input_size}, {self.providers[0]})"

    # ------------------------------------------------------------------ input handling
    def prepare(self, silhouettes: Any) -> np.ndarray:
        """Model input ``float32 [n, T, h, w]`` from raw frames or float silhouettes
        (:func:`prepare_silhouettes` at this model's input size).

        Raises:
            ValueError: see :func:`prepare_silhouettes`.
        """
        return prepare_silhouettes(silhouettes, self.input_size)

    # ------------------------------------------------------------------ inference
    def embed(self, silhouettes: Any) -> np.ndarray:
        """Embeddings ``float32 [n, c, p]`` of one sequence (``n = 1``) or a batch of equal-length sequences."""
        x = self.prepare(silhouettes)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def embed_many(self, sequences: Iterable[Any]) -> np.ndarray:
        """Embed sequences of different lengths one at a time: ``[len(sequences), c, p]``.

        Raises:
            ValueError: no sequences, or a bad one (its position is named).
        """
        out = []
        for i, s in enumerate(sequences):
            try:
                out.append(self.embed(s))
            except ValueError as exc:
                raise ValueError(f"sequence {i}: {exc}") from exc
        if not out:
            raise ValueError("no sequences to embed")
        return np.concatenate(out, axis=0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor in, tensor out (``[n, T, h, w] -> [n, c, p]``): the callable ``evaluate_on_store`` takes."""
        return torch.from_numpy(self.embed(x))


@dataclass
class Gallery:
    """Labelled gallery embeddings for identification.

    Args:
        embeddings: ``[m, c, p]`` (numpy or torch).
        labels: ``m`` labels (e.g. subject ids).
        info: optional per-entry details (e.g. ``{"condition": "nm-01", "view": "090"}``).
        identity: the :class:`qgait.runtime.identity.ModelIdentity` of the model that embedded the entries, or
            ``None`` when unknown (a gallery file written before identities were recorded).

    Files: :meth:`save` / :meth:`load` (format and atomic writes: :mod:`qgait.runtime.gallery_io`); adding to a
    gallery file: :func:`qgait.runtime.gallery.enroll`; indexed search: :class:`qgait.runtime.index.GalleryIndex`.

    Raises:
        ValueError: empty gallery, embeddings not ``[m, c, p]``, ``len(labels) != m``, ``identity`` not a
            ``ModelIdentity`` or recording another embedding shape than ``[c, p]``.
    """

    embeddings: np.ndarray
    labels: list[str]
    info: list[dict] = field(default_factory=list)
    identity: Any = None

    def __post_init__(self) -> None:
        from .identity import ModelIdentity

        e = self.embeddings
        e = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
        if e.size == 0 or len(self.labels) == 0:
            raise ValueError("empty gallery: it needs at least one embedding with a label")
        if e.ndim != 3:
            raise ValueError(f"gallery embeddings must be [m, c, p], got shape {e.shape}")
        if e.shape[0] != len(self.labels):
            raise ValueError(f"gallery has {e.shape[0]} embeddings but {len(self.labels)} labels")
        if self.info and len(self.info) != len(self.labels):
            raise ValueError(f"gallery has {len(self.labels)} labels but {len(self.info)} info entries")
        if self.identity is not None:
            if not isinstance(self.identity, ModelIdentity):
                raise ValueError(f"gallery identity must be a ModelIdentity or None, got "
                                 f"{type(self.identity).__name__}")
            if self.identity.embedding_shape is None:
                self.identity = self.identity.with_embedding_shape(e.shape[1:])
            elif self.identity.embedding_shape != tuple(e.shape[1:]):
                raise ValueError(f"gallery embeddings are {list(e.shape[1:])} but its model "
                                 f"{self.identity.describe()} gives {list(self.identity.embedding_shape)}")
        self.embeddings = e.astype(np.float32, copy=False)
        self.labels = [str(v) for v in self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def check(self, model: Any) -> str:
        """Whether this gallery may be searched with ``model`` (a ``ModelIdentity`` or a :class:`GaitEmbedder`).

        Returns:
            ``"match"``, or ``"unknown"`` when the gallery records no identity (see
            :func:`qgait.runtime.identity.check_identity`).

        Raises:
            GalleryMismatchError: built with another model or input size (both named).
        """
        from .identity import ModelIdentity, check_identity

        ident = model if isinstance(model, ModelIdentity) else ModelIdentity.of(model)
        return check_identity(self.identity, ident)

    def save(self, path: str | Path) -> Path:
        """Write the gallery atomically as ``.npz`` (embeddings, labels, info and model identity; format
        ``qgait-gallery/2``, :func:`qgait.runtime.gallery_io.save_gallery`). Returns the path written (``.npz``
        appended when missing)."""
        from .gallery_io import save_gallery

        return save_gallery(self, path)

    @classmethod
    def load(cls, path: str | Path, expect: Any = None) -> Gallery:
        """Read a gallery written by :meth:`save` (or by an older qgait, without identity: ``identity = None``).

        Args:
            expect: a ``ModelIdentity`` or :class:`GaitEmbedder` the gallery must have been built with (``None``:
                no check; a gallery without identity passes).

        Raises:
            GalleryFileError (a ValueError): missing, truncated, corrupt or malformed file (named).
            GalleryMismatchError (a ValueError): built with another model or input size than ``expect``.
        """
        from .gallery_io import load_gallery

        return load_gallery(path, expect)


def _probe_array(probe: Any) -> np.ndarray:
    p = probe.detach().cpu().numpy() if isinstance(probe, torch.Tensor) else np.asarray(probe)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"probe embedding must be [c, p] or [n, c, p], got shape {p.shape}")
    return p


def identify_many(probes: Any, gallery: Gallery, top_k: int = 5, metric: str = "euc") -> list[list[tuple[str, float]]]:
    """For each probe ``[n, c, p]``, the ``top_k`` nearest gallery LABELS with their distance (each label scored by
    its nearest gallery embedding), nearest first.

    Raises:
        ValueError: empty gallery, shape mismatch between probe and gallery ``[c, p]``, ``top_k < 1``.
    """
    if not isinstance(gallery, Gallery):
        raise ValueError(f"gallery must be a Gallery, got {type(gallery).__name__}")
    if len(gallery) == 0:
        raise ValueError("empty gallery")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    p = _probe_array(probes)
    if p.shape[1:] != gallery.embeddings.shape[1:]:
        raise ValueError(f"probe embedding [c, p] = {list(p.shape[1:])} does not match the gallery's "
                         f"{list(gallery.embeddings.shape[1:])} (embedded by another model?)")
    dist = part_distance(torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)),
                         torch.from_numpy(gallery.embeddings), metric=metric).numpy()  # [n, m]
    labels = np.array(gallery.labels)
    uniq, inverse = np.unique(labels, return_inverse=True)
    out = []
    for row in dist:
        best = np.full(len(uniq), np.inf)
        np.minimum.at(best, inverse, row)
        order = np.argsort(best, kind="stable")[:top_k]
        out.append([(str(uniq[j]), float(best[j])) for j in order])
    return out


def identify(probe_emb: Any, gallery: Gallery, top_k: int = 5, metric: str = "euc") -> list[tuple[str, float]]:
    """The ``top_k`` nearest gallery labels ``[(label, distance), ...]`` of ONE probe embedding (``[c, p]`` or
    ``[1, c, p]``), by the part-averaged Euclidean distance (``metric="cos"``: 1 - mean part cosine).

    Raises:
        ValueError: several probes (use :func:`identify_many`), empty gallery, shape mismatch, ``top_k < 1``.
    """
    p = _probe_array(probe_emb)
    if p.shape[0] != 1:
        raise ValueError(f"identify takes one probe embedding, got {p.shape[0]}; use identify_many")
    return identify_many(p, gallery, top_k, metric)[0]
