"""The restricted unpickler: numpy arrays load; everything else is refused without running."""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qgait.data.errors import BadSequenceError
from qgait.data.safe_pickle import UnsafePickleError, load_array


class _OpenFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _System:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Popen:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.path],))


class _Eval:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.eval, (f"open({self.path!r}, 'w')",))


_ROUND_TRIP = [np.arange(24).astype(t).reshape(2, 3, 4) for t in ("u1", "i1", "u2", ">i4", "<i8", "f2", ">f4",
                                                                    "f8", "c8", ">c16", "?")] + [
    np.array(5, np.uint8), np.zeros((0, 64, 64), np.uint8), np.asfortranarray(np.ones((3, 4), ">i2")),
    np.arange(60, dtype="f4").reshape(3, 4, 5).transpose(2, 0, 1), np.arange(10, dtype="u1")[::2],
    np.random.default_rng(0).integers(0, 256, (7, 64, 44)).astype(np.uint8),
]


@pytest.mark.parametrize("protocol", range(6))
def test_arrays_round_trip_like_the_plain_unpickler(protocol):
    for arr in _ROUND_TRIP:
        data = pickle.dumps(arr, protocol=protocol)
        out, ref = load_array(data), pickle.loads(data)  # numpy itself makes some dtypes native-endian
        assert type(out) is np.ndarray and out.flags.writeable
        assert out.dtype == ref.dtype and out.shape == arr.shape
        assert np.array_equal(out, arr)


@pytest.mark.parametrize("evil_cls, refused", [
    (_OpenFile, "open"), (_System, "system"), (_Popen, "Popen"), (_Eval, "eval")])
def test_malicious_pickle_refused_and_never_runs(tmp_path, evil_cls, refused):
    target = tmp_path / "pwned"
    payload = pickle.dumps(evil_cls(target))
    # sanity: the payload is truly dangerous under the plain unpickler (run it on a different target)
    if evil_cls is _OpenFile:
        probe = tmp_path / "probe"
        pickle.loads(pickle.dumps(_OpenFile(probe))).close()
        assert probe.exists()
    with pytest.raises(UnsafePickleError) as info:
        load_array(payload, origin="evil/nm-01/000/000.pkl")
    assert "evil/nm-01/000/000.pkl" in str(info.value)
    assert refused in str(info.value)
    assert not target.exists()


def test_malicious_object_inside_a_container_with_arrays_is_refused(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps([np.zeros((2, 64, 64), np.uint8), _System(target)])
    with pytest.raises(UnsafePickleError):
        load_array(payload, origin="x.pkl")
    assert not target.exists()


@pytest.mark.parametrize("obj", [{"a": np.zeros(3)}, [np.zeros(3)], 42, "text", None, np.dtype("u1"), b"raw"])
def test_non_array_results_are_refused(obj):
    with pytest.raises(UnsafePickleError, match="s.pkl"):
        load_array(pickle.dumps(obj), origin="s.pkl")


def test_numpy_scalar_loads_as_a_0d_array():
    out = load_array(pickle.dumps(np.float32(2.5)))
    assert type(out) is np.ndarray and out.shape == () and out.dtype == np.float32 and out == 2.5


def test_truncated_pickle_is_a_bad_sequence_naming_origin():
    data = pickle.dumps(np.zeros((10, 64, 64), np.uint8))
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(BadSequenceError) as info:
            load_array(data[:cut], origin="075/nm-01/000/000.pkl")
        assert not isinstance(info.value, UnsafePickleError)
        assert info.value.origin == "075/nm-01/000/000.pkl"
        assert str(info.value).startswith("075/nm-01/000/000.pkl: ")


def test_garbage_and_empty_files(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"this is not a pickle at all")
    with pytest.raises(BadSequenceError, match="bad.pkl"):
        load_array(bad)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(BadSequenceError, match="empty.pkl: empty file"):
        load_array(empty)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_array(tmp_path / "missing.pkl")


def test_path_source_uses_path_as_origin(tmp_path):
    p = tmp_path / "a.pkl"
    p.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(UnsafePickleError, match=str(p)):
        load_array(p)


_VALID = pickle.dumps(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), protocol=4)


_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a regression must not exhaust the machine
from qgait.data.errors import BadSequenceError
from qgait.data.safe_pickle import load_array
try:
    load_array(bytes.fromhex(sys.argv[1]), origin="child")
except BadSequenceError as exc:
    print(type(exc).__name__, exc)
"""


def _load_in_child(data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, data.hex()], capture_output=True, text=True, timeout=60)


def test_malformed_dtype_state_does_not_crash():
    """Found by fuzzing: numpy's dtype.__setstate__ segfaults on this state (an int as the subarray)."""
    # a protocol-2 pickle of np.arange(24, dtype=uint8).reshape(2, 3, 4) with byte 167 set to 74 (BININT): the
    # dtype state becomes (3, '|', 1313754639, -1, -1, 0)
    data = bytes.fromhex(
        "8002636e756d70792e5f636f72652e6d756c746961727261790a5f7265636f6e7374727563740a7100636e756d70790a6e646172"
        "7261790a71014b00857102635f636f646563730a656e636f64650a7103580100000062710458060000006c6174696e3171058671"
        "06527107877108527109284b014b024b034b0487710a636e756d70790a64747970650a710b58020000007531710c898887710d52"
        "710e284b0358010000007c4a0f4e4e4e4affffffff4affffffff4b00747110628968035818000000000102030405060708090a0b"
        "0c0d0e0f101112131415161771116805867112527113747114622e")
    proc = _load_in_child(bytes(data))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("UnsafePickleError child: refused ") and "dtype state" in proc.stdout, proc.stdout


def test_memo_bomb_is_refused_without_allocating():
    """LONG_BINPUT 0xFFFFFFF0 in a 10-byte pickle: the C unpickler would size its memo table to ~32 GB."""
    data = b"\x80\x04N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b"."
    proc = _load_in_child(data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("UnsafePickleError child: refused memo index 4294967280"), proc.stdout


def test_frame_not_ending_on_an_opcode_is_corrupt():
    """Found by fuzzing: a protocol-5 FRAME shortened to end inside the BYTEARRAY8 payload."""
    data = bytearray(pickle.dumps(np.ones(3, ">f4"), protocol=5))
    assert [op.name for op, _, pos in pickletools.genops(bytes(data)) if pos == 2] == ["FRAME"]
    data[3] = 41  # frame length (little-endian uint64 at bytes 3..10) was the whole body
    with pytest.raises(BadSequenceError, match="frame at byte 2 of 41 bytes"):
        load_array(bytes(data), origin="f")


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_pickles_only_load_or_raise_bad_sequence(edits):
    data = bytearray(_VALID)
    for pos, val in edits:
        data[pos] = val
    try:
        out = load_array(bytes(data), origin="fuzz")
    except BadSequenceError as exc:
        assert exc.origin == "fuzz"
    else:
        assert isinstance(out, np.ndarray) and not out.dtype.hasobject


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_random_bytes_only_load_or_raise_bad_sequence(data):
    try:
        out = load_array(b"\x80\x04" + data, origin="fuzz")
    except BadSequenceError:
        pass
    else:
        assert isinstance(out, np.ndarray)
