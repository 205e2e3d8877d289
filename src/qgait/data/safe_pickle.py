"""Load numpy arrays from pickle files without letting the pickle run code.

A pickle is a small program: any global it names is imported and may be called while unpickling. OpenGait
stores every sequence as a pickled numpy array, so we unpickle with an allow-list that maps the few globals a
numpy array needs to the objects themselves (nothing named in the file is ever imported) and refuse everything
else with :class:`UnsafePickleError`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .errors import BadSequenceError

__all__ = ["UnsafePickleError", "load_array"]

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # numpy 1.x writes numpy.core.*, numpy 2.x writes numpy._core.*; both resolve to the installed objects.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        # pickle protocol 5 rebuilds contiguous arrays with _frombuffer (np.frombuffer + reshape).
        # (protocol 2 also needs _codecs.encode for bytes: see _NumpyOnlyUnpickler._latin1_encode)
        if hasattr(_numeric, "_frombuffer"):
            allowed[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class UnsafePickleError(BadSequenceError):
    """A pickle names a global outside the numpy-array allow-list, or does not hold a plain numpy array.

    A subclass of :class:`~qgait.data.errors.BadSequenceError` (hence of ``ValueError``), so callers that skip
    bad sequences skip these too. ``origin`` names the file, ``reason`` the refused global or object.
    Raised before the refused object is ever imported or called.
    """


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allow-listed numpy globals."""

    def __init__(self, file, origin: str) -> None:
        super().__init__(file)
        self._origin = origin

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                self._origin, f"refused global {module}.{name} (only numpy arrays may be unpickled)"
            ) from None

    def _latin1_encode(self, obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """Stand-in for ``_codecs.encode``, which pickle protocol 2 uses to rebuild ``bytes`` (the array data)
        as ``encode(text, "latin1")``. Only that codec is admitted: codec names can import modules."""
        if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
            raise UnsafePickleError(self._origin, f"refused _codecs.encode with codec {encoding!r} "
                                                  f"(only latin1, as pickle protocol 2 writes bytes)")
        return obj.encode("latin1", errors="strict")

    def persistent_load(self, pid):  # pragma: no cover - defensive
        raise UnsafePickleError(self._origin, "refused persistent id (only numpy arrays may be unpickled)")


def load_array(source: bytes | bytearray | memoryview | str | Path, origin: str | None = None) -> np.ndarray:
    """Unpickle one numpy array, refusing anything that is not a numpy array.

    Args:
        source: the pickle itself (``bytes``-like) or the path of a pickle file.
        origin: the name used in error messages; defaults to the path, or ``"<bytes>"``.

    Returns:
        The array exactly as pickled (any shape and dtype; see
        :func:`qgait.data.sources.validate_frames` for the sequence checks).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UnsafePickleError: the pickle names a global other than the numpy array machinery (``os.system``,
            ``builtins.eval``, ...; refused before anything is imported or called), or its result is not
            an ``np.ndarray`` (a dict, a list, ...) or is an object array.
        BadSequenceError: the data is truncated or is not a valid pickle.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        origin = "<bytes>" if origin is None else origin
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        origin = str(source) if origin is None else origin
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{origin}: no such file") from None
        except IsADirectoryError:
            raise BadSequenceError(origin, "is a directory, expected a pickle file") from None
    else:
        raise TypeError(f"load_array: source must be bytes or a path, got {type(source).__name__}")

    if not data:
        raise BadSequenceError(origin, "empty file (0 bytes), expected a pickled numpy array")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), origin).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError) as exc:
        raise BadSequenceError(origin, f"corrupt or truncated pickle ({exc or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the restricted unpickler means corrupt data
        # (numpy's own reconstructors raise ValueError, TypeError, even SystemError on malformed states)
        raise BadSequenceError(origin, f"corrupt pickle ({type(exc).__name__}: {exc})") from None

    if not isinstance(obj, np.ndarray):
        raise UnsafePickleError(origin, f"pickle holds a {type(obj).__name__}, expected a numpy array")
    if obj.dtype.hasobject:
        raise UnsafePickleError(origin, f"pickle holds an object array (dtype {obj.dtype}), expected numbers")
    return obj
