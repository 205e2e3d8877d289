"""The restricted unpickler: numpy arrays load; everything else is refused without running."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess

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


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("order", ["C", "F"])
def test_arrays_round_trip(protocol, order):
    arr = np.asarray(np.random.default_rng(protocol).integers(0, 256, (7, 64, 44)), dtype=np.uint8, order=order)
    out = load_array(pickle.dumps(arr, protocol=protocol))
    assert out.dtype == np.uint8 and out.shape == arr.shape
    assert np.array_equal(out, arr)


def test_other_numeric_arrays_load_unchanged():
    for arr in (np.linspace(0, 1, 12).reshape(3, 4), np.arange(5, dtype=np.int16), np.array(True)):
        assert np.array_equal(load_array(pickle.dumps(arr)), arr)


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


@pytest.mark.parametrize("obj", [{"a": np.zeros(3)}, [np.zeros(3)], 42, "text", None,
                                 np.array([1, "a"], dtype=object)])
def test_non_array_results_are_refused(obj):
    with pytest.raises(UnsafePickleError, match="s.pkl"):
        load_array(pickle.dumps(obj), origin="s.pkl")


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


def test_malformed_dtype_state_is_a_bad_sequence():
    data = bytearray(_VALID)
    data[125] = 125  # found by the fuzz test below: numpy raised SystemError from dtype.__setstate__
    with pytest.raises(BadSequenceError, match="fuzz: corrupt pickle"):
        load_array(bytes(data), origin="fuzz")


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
