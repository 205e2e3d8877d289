"""iter_sequences / validate_frames on synthetic folders and archives (bad items named, skipped, listed)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from qgait.data.safe_pickle import UnsafePickleError
from qgait.data.sources import BadSequenceError, SequenceKey, iter_sequences, validate_frames

from .conftest import make_tar_xz, random_seq, write_pkl


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


# ---------------------------------------------------------------------------------------------- validate_frames

def test_validate_frames_accepts_both_widths_and_makes_contiguous():
    a = np.zeros((3, 64, 64), np.uint8)
    assert validate_frames(a, "x") is a
    b = np.zeros((64, 44, 3), np.uint8).transpose(2, 0, 1)  # non-contiguous [3, 64, 44]
    out = validate_frames(b, "x")
    assert out.flags.c_contiguous and np.array_equal(out, b)


@pytest.mark.parametrize("arr, reason", [
    (np.zeros((3, 64, 64), np.float64), "dtype float64, expected uint8"),
    (np.zeros((3, 64, 64), bool), "dtype bool, expected uint8"),
    (np.zeros((0, 64, 64), np.uint8), "empty sequence (0 frames)"),
    (np.zeros((3, 32, 32), np.uint8), "frame size 32x32"),
    (np.zeros((3, 64, 50), np.uint8), "frame size 64x50"),
    (np.zeros((64, 64), np.uint8), "2 dimensions"),
    ([1, 2], "holds a list"),
])
def test_validate_frames_rejects(arr, reason):
    with pytest.raises(BadSequenceError) as info:
        validate_frames(arr, "001/nm-01/000/000.pkl")
    assert info.value.origin == "001/nm-01/000/000.pkl"
    assert reason in info.value.reason


# ---------------------------------------------------------------------------------------------- folders

def test_clean_folder_yields_everything_sorted_and_exact(synth_src):
    root, truth = synth_src
    seqs = list(iter_sequences(root))
    keys = [(s.key.subject, s.key.condition, s.key.view) for s in seqs]
    assert keys == sorted(truth)
    for s in seqs:
        assert np.array_equal(s.frames, truth[(s.key.subject, s.key.condition, s.key.view)])
        assert s.origin == f"{s.key.subject}/{s.key.condition}/{s.key.view}/{s.key.view}.pkl"


def test_subject_filter(synth_src):
    root, truth = synth_src
    got = {s.key.subject for s in iter_sequences(root, subjects=["010", "001"])}
    assert got == {"001", "010"}
    with pytest.raises(ValueError, match="999"):
        list(iter_sequences(root, subjects=["001", "999"]))


def _add_bad_items(root, tmp_path):
    """One bad item of each kind; returns {relative origin: expected reason fragment}."""
    write_pkl(root / "001" / "cl-01" / "000" / "000.pkl", np.zeros((5, 64, 64)))  # float64
    (root / "001" / "cl-01" / "018").mkdir(parents=True)
    (root / "001" / "cl-01" / "018" / "018.pkl").write_bytes(pickle.dumps(random_seq(np.random.default_rng(1), 5))[:300])
    write_pkl(root / "002" / "cl-01" / "000" / "000.pkl", np.zeros((0, 64, 64), np.uint8))
    write_pkl(root / "002" / "cl-01" / "018" / "018.pkl", np.zeros((5, 128, 88), np.uint8))
    write_pkl(root / "002" / "nm-01" / "stray.pkl", np.zeros((5, 64, 64), np.uint8))  # depth 3
    write_pkl(root / "010" / "nm-01" / "000" / "deeper" / "x.pkl", np.zeros((5, 64, 64), np.uint8))  # depth 5
    write_pkl(root / "010" / "cl-01" / "000" / "000.pkl", _Touch(tmp_path / "pwned"))
    return {
        "001/cl-01/000/000.pkl": "dtype float64, expected uint8",
        "001/cl-01/018/018.pkl": "truncated",
        "002/cl-01/000/000.pkl": "empty sequence (0 frames)",
        "002/cl-01/018/018.pkl": "frame size 128x88",
        "002/nm-01/stray.pkl": "outside the expected layout",
        "010/cl-01/000/000.pkl": "refused global",
        "010/nm-01/000/deeper/x.pkl": "outside the expected layout",
    }


def test_bad_items_raise_naming_the_first_file(synth_src, tmp_path):
    root, truth = synth_src
    bad = _add_bad_items(root, tmp_path)
    with pytest.raises(BadSequenceError) as info:
        list(iter_sequences(root))
    first = sorted(bad, key=lambda o: o.split("/"))[0]
    assert info.value.origin == first
    assert bad[first] in info.value.reason
    assert str(info.value).startswith(first + ": ")


def test_skip_bad_lists_every_bad_item_with_reason_and_keeps_the_rest(synth_src, tmp_path):
    root, truth = synth_src
    bad = _add_bad_items(root, tmp_path)
    skipped: list[tuple[str, str]] = []
    seqs = list(iter_sequences(root, skip_bad=True, skipped=skipped))
    assert sorted((s.key.subject, s.key.condition, s.key.view) for s in seqs) == sorted(truth)
    assert {o for o, _ in skipped} == set(bad)
    for origin, reason in skipped:
        assert bad[origin] in reason, (origin, reason)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["corrupt", "float64", "empty", "shape", "misplaced", "unsafe"])
def test_each_bad_kind_alone_names_its_file(tmp_path, kind):
    root = tmp_path / "one"
    write_pkl(root / "001" / "nm-01" / "000" / "000.pkl", np.zeros((3, 64, 64), np.uint8))
    target = root / "001" / "nm-01" / "018" / "018.pkl"
    if kind == "corrupt":
        target.parent.mkdir(parents=True)
        target.write_bytes(b"\x80\x04garbage")
    elif kind == "float64":
        write_pkl(target, np.zeros((3, 64, 64)))
    elif kind == "empty":
        write_pkl(target, np.zeros((0, 64, 64), np.uint8))
    elif kind == "shape":
        write_pkl(target, np.zeros((3, 64, 32), np.uint8))
    elif kind == "misplaced":
        target = write_pkl(root / "001" / "nm-01" / "018.pkl", np.zeros((3, 64, 64), np.uint8))
    else:
        write_pkl(target, _Touch(tmp_path / "pwned"))
    rel = target.relative_to(root).as_posix()
    with pytest.raises(BadSequenceError, match=rel):
        list(iter_sequences(root))
    skipped: list[tuple[str, str]] = []
    assert len(list(iter_sequences(root, skip_bad=True, skipped=skipped))) == 1
    assert [o for o, _ in skipped] == [rel]
    if kind == "unsafe":
        with pytest.raises(UnsafePickleError):
            list(iter_sequences(root))
    assert not (tmp_path / "pwned").exists()


def test_several_pickles_in_a_view_use_the_first_and_note_the_rest(tmp_path):
    root = tmp_path / "multi"
    a = np.full((2, 64, 64), 1, np.uint8)
    write_pkl(root / "001" / "nm-01" / "000" / "a-sils.pkl", a)
    write_pkl(root / "001" / "nm-01" / "000" / "b-other.pkl", np.full((4, 64, 64), 2, np.uint8))
    skipped: list[tuple[str, str]] = []
    seqs = list(iter_sequences(root, skipped=skipped))  # not an error, even without skip_bad
    assert len(seqs) == 1 and np.array_equal(seqs[0].frames, a)
    assert skipped == [("001/nm-01/000/b-other.pkl", skipped[0][1])]
    assert "a-sils.pkl" in skipped[0][1]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_sequences(tmp_path / "nowhere"))
    (tmp_path / "empty" / "001" / "nm-01").mkdir(parents=True)
    with pytest.raises(ValueError, match="no sequences found"):
        list(iter_sequences(tmp_path / "empty"))
    all_bad = tmp_path / "bad"
    write_pkl(all_bad / "001" / "nm-01" / "000" / "000.pkl", {"not": "an array"})
    skipped: list[tuple[str, str]] = []
    with pytest.raises(ValueError, match="no sequences found"):
        list(iter_sequences(all_bad, skip_bad=True, skipped=skipped))
    assert len(skipped) == 1


# ---------------------------------------------------------------------------------------------- archives

def _archive_members(subject: str, rng, truth: dict) -> dict[str, bytes]:
    members = {}
    for c in ("nm-01", "bg-01", "cl-01"):
        for v in ("090", "000"):
            arr = random_seq(rng, int(rng.integers(2, 6)))
            truth[(subject, c, v)] = arr
            members[f"{subject}/{c}/{v}/{v}.pkl"] = pickle.dumps(arr)
    return members


def test_archive_folder_sorted_exact_and_member_order_irrelevant(tmp_path):
    rng = np.random.default_rng(3)
    truth: dict = {}
    root = tmp_path / "arch"
    root.mkdir()
    for s in ("002", "001"):
        members = list(_archive_members(s, rng, truth).items())
        random.Random(int(s)).shuffle(members)  # archive order is not sorted
        make_tar_xz(root / f"{s}.tar.xz", dict(members))
    (root / "README.txt").write_text("not data")
    seqs = list(iter_sequences(root))
    assert [(s.key.subject, s.key.condition, s.key.view) for s in seqs] == sorted(truth)
    for s in seqs:
        assert np.array_equal(s.frames, truth[(s.key.subject, s.key.condition, s.key.view)])
    assert seqs[0].origin == "001.tar.xz:001/bg-01/000/000.pkl"


def test_archive_subject_filter_does_not_open_other_archives(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "arch"
    root.mkdir()
    make_tar_xz(root / "001.tar.xz", _archive_members("001", rng, {}))
    (root / "002.tar.xz").write_bytes(b"definitely not xz")  # would fail if opened
    assert {s.key.subject for s in iter_sequences(root, subjects=["001"])} == {"001"}
    with pytest.raises(BadSequenceError, match="002.tar.xz"):
        list(iter_sequences(root))
    with pytest.raises(ValueError, match="003"):
        list(iter_sequences(root, subjects=["003"]))


def test_archive_bad_members_are_named_with_the_archive(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "arch"
    root.mkdir()
    members = _archive_members("001", rng, {})
    bad = {
        "../001/nm-01/000/evil.pkl": "'..'",
        "/abs/001/nm-01/000/000.pkl": "absolute",
        "001/nm-01/000.pkl": "outside the expected layout",
        "002/nm-01/000/000.pkl": "inside the archive of subject '001'",
        "001/nm-02/000/000.pkl": "dtype float64",
    }
    for name in bad:
        members[name] = pickle.dumps(np.zeros((2, 64, 64)) if "nm-02" in name else np.zeros((2, 64, 64), np.uint8))
    make_tar_xz(root / "001.tar.xz", members)
    with pytest.raises(BadSequenceError, match=r"001\.tar\.xz:"):
        list(iter_sequences(root))
    skipped: list[tuple[str, str]] = []
    seqs = list(iter_sequences(root, skip_bad=True, skipped=skipped))
    assert len(seqs) == 6
    got = dict(skipped)
    assert set(got) == {f"001.tar.xz:{n}" for n in bad}
    for name, frag in bad.items():
        assert frag in got[f"001.tar.xz:{name}"]


def test_single_archive_with_several_subjects(tmp_path):
    rng = np.random.default_rng(6)
    truth: dict = {}
    members = {**_archive_members("001", rng, truth), **_archive_members("003", rng, truth)}
    path = make_tar_xz(tmp_path / "casia-mini.tar.xz", members)
    seqs = list(iter_sequences(path))
    assert [(s.key.subject, s.key.condition, s.key.view) for s in seqs] == sorted(truth)
    assert [s.key for s in iter_sequences(path, subjects=["003"])] == [
        SequenceKey(*k) for k in sorted(truth) if k[0] == "003"]
    assert seqs[0].origin.startswith("casia-mini.tar.xz:001/")


def test_truncated_archive_is_named(tmp_path):
    rng = np.random.default_rng(7)
    good = make_tar_xz(tmp_path / "001.tar.xz", _archive_members("001", rng, {}))
    data = good.read_bytes()
    root = tmp_path / "t"
    root.mkdir()
    (root / "001.tar.xz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSequenceError, match="001.tar.xz"):
        list(iter_sequences(root))
    make_tar_xz(root / "002.tar.xz", _archive_members("002", rng, {}))
    skipped: list[tuple[str, str]] = []
    seqs = list(iter_sequences(root, skip_bad=True, skipped=skipped))
    assert {s.key.subject for s in seqs} == {"002"}
    assert [o for o, _ in skipped] == ["001.tar.xz"] and "truncated" in skipped[0][1]
