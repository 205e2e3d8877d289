"""The identity of an exported gait model, recorded in gallery files so that a gallery is only searched with the
model that embedded it.

Embeddings of two models live in different spaces even when their shapes agree (another checkpoint, another
quantization, the same network exported at another input size): distances between them mean nothing, and an
identification against such a gallery silently returns nonsense. A :class:`ModelIdentity` pins the model down:

* ``sha256``: of the model file's bytes (the ``.onnx`` or ``.qgpack`` file as given; an ``.onnx`` and its packed
  ``.qgpack`` twin therefore count as different models even though they compute the same embeddings);
* ``kind``: the ``qgait`` export metadata's ``kind`` (e.g. ``"fp32"``, ``"int8-qdq"``), ``"onnx"`` for a model
  without that metadata;
* ``input_size``: the model's frame size ``(h, w)`` in pixels;
* ``embedding_shape``: ``(c, p)`` (channels, parts) of its embeddings, ``None`` when the ONNX graph leaves them
  symbolic and nothing has been embedded yet;
* ``model_name``: the file's name, for messages only (never compared).

:func:`check_identity` compares a gallery's recorded identity with a model's: ``"match"``, ``"unknown"`` (a
gallery written before identities were recorded; accepted without a warning, the caller decides), or
:class:`GalleryMismatchError` naming both models and the fields that differ.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["GalleryMismatchError", "ModelIdentity", "check_identity", "file_sha256"]


class GalleryMismatchError(ValueError):
    """A gallery built with another model or input size than the one it is used with (names both)."""


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (cached per path, size and modification time).

    Raises:
        FileNotFoundError: no such file.
    """
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _pair(value: Any, name: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be two positive integers, got {value!r}") from exc
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be two positive integers, got {value!r}")
    return a, b


@dataclass(frozen=True)
class ModelIdentity:
    """What a gallery records about the model that embedded it (see the module docstring).

    Raises:
        ValueError: ``sha256`` not 64 hex digits, ``input_size`` / ``embedding_shape`` not two positive integers.
    """

    sha256: str
    kind: str
    input_size: tuple[int, int]
    embedding_shape: tuple[int, int] | None = None
    model_name: str = ""

    def __post_init__(self) -> None:
        sha = str(self.sha256).lower()
        if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
            raise ValueError(f"sha256 must be 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "sha256", sha)
        object.__setattr__(self, "kind", str(self.kind))
        object.__setattr__(self, "input_size", _pair(self.input_size, "input_size"))
        if self.embedding_shape is not None:
            object.__setattr__(self, "embedding_shape", _pair(self.embedding_shape, "embedding_shape"))
        object.__setattr__(self, "model_name", str(self.model_name))

    @classmethod
    def of(cls, embedder: Any) -> ModelIdentity:
        """The identity of a :class:`qgait.runtime.GaitEmbedder` (hashes its model file).

        ``embedding_shape`` comes from the graph's output shape when ``c`` and ``p`` are fixed integers there.
        """
        path = Path(embedder.path)
        shape = None
        try:
            out = embedder.session.get_outputs()[0].shape
            if out is not None and len(out) == 3 and all(isinstance(v, int) and v > 0 for v in out[1:]):
                shape = (int(out[1]), int(out[2]))
        except Exception:  # noqa: BLE001 - a stand-in embedder without an ORT session
            shape = None
        kind = (getattr(embedder, "meta", None) or {}).get("kind") or "onnx"
        return cls(file_sha256(path), kind, tuple(embedder.input_size), shape, path.name)

    def with_embedding_shape(self, shape: tuple[int, int]) -> ModelIdentity:
        """This identity with ``embedding_shape`` set (e.g. from the first embeddings of a model whose graph
        leaves it symbolic).

        Raises:
            GalleryMismatchError: a different ``embedding_shape`` is already recorded.
        """
        shape = _pair(shape, "embedding_shape")
        if self.embedding_shape is not None and self.embedding_shape != shape:
            raise GalleryMismatchError(f"model {self.describe()} gives embeddings {list(shape)}, not the recorded "
                                       f"{list(self.embedding_shape)}")
        return replace(self, embedding_shape=shape)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["embedding_shape"] = None if self.embedding_shape is None else list(self.embedding_shape)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ModelIdentity:
        """Read :meth:`to_dict`'s output.

        Raises:
            ValueError: not a dict, a field missing or malformed.
        """
        if not isinstance(d, dict):
            raise ValueError(f"model identity must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("sha256", "kind", "input_size") if k not in d]
        if missing:
            raise ValueError(f"model identity lacks {missing}")
        return cls(d["sha256"], d["kind"], d["input_size"], d.get("embedding_shape"), d.get("model_name", ""))

    def describe(self) -> str:
        """``'name' (kind, input HxW, embedding [c, p], sha256 0123abcd...)`` for messages."""
        emb = "embedding ?" if self.embedding_shape is None else f"embedding {list(self.embedding_shape)}"
        name = repr(self.model_name) if self.model_name else "<unnamed model>"
        return (f"{name} ({self.kind}, input {self.input_size[0]}x{self.input_size[1]}, {emb}, "
                f"sha256 {self.sha256[:12]}...)")

    def differences(self, other: ModelIdentity) -> list[str]:
        """The compared fields that differ (``embedding_shape`` only when both know it)."""
        out = [k for k in ("sha256", "kind", "input_size") if getattr(self, k) != getattr(other, k)]
        if None not in (self.embedding_shape, other.embedding_shape) and self.embedding_shape != other.embedding_shape:
            out.append("embedding_shape")
        return out


def check_identity(recorded: ModelIdentity | None, model: ModelIdentity, where: str = "gallery") -> str:
    """Whether a gallery recorded as built by ``recorded`` may be used with ``model``.

    Args:
        recorded: the gallery's identity; ``None`` for a gallery written before identities were recorded.
        model: the identity of the model about to embed probes or enroll.
        where: how to name the gallery in the message (e.g. its path).

    Returns:
        ``"match"``, or ``"unknown"`` when ``recorded`` is ``None`` (nothing can be checked; no warning is issued,
        the caller decides whether to trust it).

    Raises:
        GalleryMismatchError: the identities differ in model bytes, kind, input size or embedding shape; the
            message names both models and the differing fields.
    """
    if recorded is None:
        return "unknown"
    diff = model.differences(recorded)
    if diff:
        raise GalleryMismatchError(
            f"{where} was built with model {recorded.describe()}, but it is used with model {model.describe()}: "
            f"they differ in {', '.join(diff)}; embeddings of different models cannot be compared (re-enroll "
            "the gallery with this model)")
    return "match"
