"""Load numpy arrays from pickle files without letting the pickle run code or crash the process.

A pickle is a small program: any global it names is imported and may be called while unpickling. OpenGait
stores every sequence as a pickled numpy array, so we unpickle with an allow-list: the few globals a numpy array
pickle names (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, ``scalar``,
``_frombuffer``, and ``_codecs.encode`` / ``bytes`` for protocols 0-2) map to checked stand-ins defined here;
nothing named in the file is ever imported, and everything else is refused with :class:`UnsafePickleError`.

Refusing globals is not enough: numpy's C ``__setstate__`` methods trust their input (a malformed dtype state
segfaults numpy 2.x) and CPython's unpickler sizes its memo table from a 4-byte index in the file. So the opcode
stream is pre-scanned for memo indices larger than the file, dtypes are rebuilt from a checked type string
(plain numeric dtypes only), and array states are validated (shape, dtype, data length) before numpy sees them.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from pathlib import Path

import numpy as np

from .errors import BadSequenceError

__all__ = ["UnsafePickleError", "load_array"]

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]


class UnsafePickleError(BadSequenceError):
    """A pickle names a global outside the numpy-array allow-list, asks for resources out of proportion to its
    size, or does not hold a plain numpy array.

    A subclass of :class:`~qgait.data.errors.BadSequenceError` (hence of ``ValueError``), so callers that skip
    bad sequences skip these too. ``origin`` names the file, ``reason`` the refused global or object.
    Raised before the refused object is ever imported or called.
    """


class _Refused(Exception):
    """Raised inside the unpickler's callables; turned into UnsafePickleError with the origin."""


# numpy's C-level __setstate__ methods trust their input (a malformed dtype state segfaults numpy 2.x), so no
# state from the file reaches them unchecked: dtypes are rebuilt from a checked type string, and every array
# the pickle can touch is a _StagingArray whose __setstate__ validates shape, dtype and data length first.

_TYPESTR = re.compile(r"[<>|=]?[biufc][0-9]{1,2}")  # plain numeric dtypes: bool, (u)int, float, complex


def _as_bytes(data: object) -> object:
    # numpy must never hold a buffer exported by a bytearray (a malformed state can leak the export)
    if isinstance(data, (bytearray, memoryview, pickle.PickleBuffer)):
        return bytes(data)
    return data


def _n_elements(shape: object) -> int:
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(
            type(d) is int and 0 <= d < 2**62 for d in shape):
        raise _Refused(f"invalid array shape {shape!r}")
    n = 1
    for d in shape:
        n *= d
    return n


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` (only ever passed to ``_reconstruct``; calling it is refused)."""

    def __call__(self, *args, **kwargs):
        raise _Refused("direct call of numpy.ndarray")


_NDARRAY = _NdarrayToken()


class _DtypeSpec:
    """Stands for ``numpy.dtype(typestr, align, copy)`` plus its pickled state; see :meth:`resolve`."""

    def __init__(self, typestr=None, align=False, copy=True):
        if not isinstance(typestr, str) or not _TYPESTR.fullmatch(typestr):
            raise _Refused(f"dtype {typestr!r} (only plain numeric dtypes such as 'u1', 'f8')")
        try:
            self.base = np.dtype(typestr)
        except TypeError:
            raise _Refused(f"dtype {typestr!r}") from None
        self.byteorder = "="

    def __setstate__(self, state):
        # numpy writes (3, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise _Refused("malformed dtype state")
        byteorder, subarray, names, fields = state[1:5]
        if byteorder not in ("<", ">", "|", "=") or (subarray, names, fields) != (None, None, None):
            raise _Refused("dtype state other than a plain numeric dtype")
        if state[5] not in (-1, self.base.itemsize) or state[6] not in (-1, self.base.alignment):
            raise _Refused("dtype state with an inconsistent item size")
        self.byteorder = byteorder

    def resolve(self) -> np.dtype:
        """The real dtype."""
        if self.byteorder in ("<", ">") and self.base.itemsize > 1:
            return self.base.newbyteorder(self.byteorder)
        return self.base


def _dtype_of(obj: object) -> np.dtype:
    if not isinstance(obj, _DtypeSpec):
        raise _Refused(f"dtype given as {type(obj).__name__}")
    return obj.resolve()


class _StagingArray(np.ndarray):
    """The only array type the unpickler hands out; ``__setstate__`` checks the state before numpy sees it."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("malformed ndarray state")
        if len(state) == 5 and type(state[0]) is not int:
            raise _Refused("malformed ndarray state version")
        shape, dtype, fortran, data = state[-4:]
        dtype = _dtype_of(dtype)
        if not isinstance(fortran, bool):
            raise _Refused("malformed ndarray state (order flag)")
        data = _as_bytes(data)
        if not isinstance(data, bytes):
            raise _Refused(f"ndarray data of type {type(data).__name__}, expected bytes")
        if _n_elements(shape) * dtype.itemsize != len(data):
            raise _Refused(f"ndarray of shape {shape} and dtype {dtype} with {len(data)} data bytes")
        super().__setstate__((shape, dtype, fortran, data))


def _reconstruct(subtype, shape, typecode):
    """``numpy.core.multiarray._reconstruct``: numpy pickles an empty int8 placeholder, then sets its state."""
    if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise _Refused("_reconstruct other than numpy's empty placeholder")
    return _multiarray._reconstruct(_StagingArray, (0,), b"b")


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    """``numpy.core.numeric._frombuffer`` (pickle protocol 5), on an immutable copy, returning a writable array."""
    buf = _as_bytes(buf)
    dtype = _dtype_of(dtype)
    if not isinstance(buf, bytes) or order not in ("C", "F", "K", "A"):
        raise _Refused("malformed _frombuffer call")
    if _n_elements(shape) * dtype.itemsize != len(buf):
        raise _Refused(f"_frombuffer of shape {shape} and dtype {dtype} with {len(buf)} bytes")
    flat = np.frombuffer(buf, dtype=dtype)
    if order == "K" and axis_order is not None:
        if not isinstance(axis_order, tuple) or sorted(axis_order) != list(range(len(shape))):
            raise _Refused("malformed _frombuffer axis order")
        out = flat.reshape(shape, order="C").transpose(axis_order)
    else:
        out = flat.reshape(shape, order=order)
    return out.copy(order="K").view(_StagingArray)


def _scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numpy scalar from its raw bytes, returned as a 0-d array."""
    dtype = _dtype_of(dtype)
    data = _as_bytes(data)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype).reshape(()).copy().view(_StagingArray)


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode``, which pickle protocol 2 uses to write ``bytes`` (the array data) as
    ``encode(text, "latin1")``. Only that codec is admitted: codec names can import modules."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise _Refused(f"_codecs.encode with codec {encoding!r} (only latin1, as pickle protocol 2 writes bytes)")
    return obj.encode("latin1")


def _empty_bytes(*args):
    """``bytes()``: protocols 0-2 write empty array data as a call of ``bytes`` without arguments. Only that
    form is admitted (``bytes(n)`` would allocate ``n`` bytes)."""
    if args:
        raise _Refused("bytes() with arguments")
    return b""


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DtypeSpec,
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }
    # numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*: both map to our checked stand-ins; nothing named
    # in the file is ever imported.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = _frombuffer  # pickle protocol 5
    return allowed


_ALLOWED = _allowed_globals()
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allow-listed numpy globals."""

    def __init__(self, file, origin: str) -> None:
        super().__init__(file)
        self._origin = origin

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                self._origin, f"refused global {module}.{name} (only numpy arrays may be unpickled)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(self._origin, "refused persistent id (only numpy arrays may be unpickled)")


def _prescan(data: bytes, origin: str) -> None:
    """Check the opcode stream before the C unpickler runs.

    * Memo indices larger than the pickle are refused: CPython's unpickler sizes (and zeroes) its memo table to
      the largest index, so a 4-byte LONG_BINPUT index in a tiny file would take tens of GB. A normal pickler
      numbers memo entries one by one, so its indices never exceed the number of bytes.
    * Every protocol-4/5 FRAME must end on an opcode boundary within the data (CPython's error path for an
      opcode read across a frame end leaks a buffer export).
    """
    try:
        ops = list(pickletools.genops(data))
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError, struct.error, ... on garbage
        raise BadSequenceError(origin, f"corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
    boundaries = {pos for _, _, pos in ops}
    boundaries.add(ops[-1][2] + 1)  # just after STOP
    for op, arg, pos in ops:
        if op.name in _PUT_OPS and int(arg) > len(data):
            raise UnsafePickleError(origin, f"refused memo index {arg} at byte {pos} in a pickle of "
                                            f"{len(data)} bytes (would exhaust memory)")
        if op.name == "FRAME" and pos + 9 + int(arg) not in boundaries:
            raise BadSequenceError(origin, f"corrupt pickle (frame at byte {pos} of {arg} bytes does not end "
                                           f"on an opcode boundary)")


def load_array(source: bytes | bytearray | memoryview | str | Path, origin: str | None = None) -> np.ndarray:
    """Unpickle one numpy array, refusing anything that is not a numpy array.

    Args:
        source: the pickle itself (``bytes``-like) or the path of a pickle file.
        origin: the name used in error messages; defaults to the path, or ``"<bytes>"``.

    Returns:
        A writable ``np.ndarray`` with the pickled values (any shape; plain numeric dtypes only: bool, integers,
        floats, complex; a pickled numpy scalar comes back as a 0-d array; like numpy itself, protocols < 5
        give native byte order). See :func:`qgait.data.sources.validate_frames` for the sequence checks.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UnsafePickleError: the pickle names a global other than the numpy array machinery (``os.system``,
            ``builtins.eval``, ...; refused before anything is imported or called); it holds something else
            than a numpy array (a dict, a list, ...) or an array of another dtype (object, string, structured);
            or it asks for resources out of proportion to its size (huge memo indices), or feeds numpy a
            malformed array / dtype state (numpy's own unpickling code would crash on some).
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
    _prescan(data, origin)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), origin).load()
    except UnsafePickleError:
        raise
    except _Refused as exc:
        raise UnsafePickleError(origin, f"refused {exc}") from None
    except (pickle.UnpicklingError, EOFError) as exc:
        raise BadSequenceError(origin, f"corrupt or truncated pickle ({exc or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the restricted unpickler means corrupt data
        # (numpy's own reconstructors raise ValueError, TypeError, even SystemError on malformed states)
        raise BadSequenceError(origin, f"corrupt pickle ({type(exc).__name__}: {exc})") from None

    if not isinstance(obj, _StagingArray):
        kind = "numpy.dtype" if isinstance(obj, _DtypeSpec) else type(obj).__name__
        raise UnsafePickleError(origin, f"pickle holds a {kind}, expected a numpy array")
    return obj.view(np.ndarray)
