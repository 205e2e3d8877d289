"""Packed store: real CASIA-B import matches the manifest and the pickles; atomicity; corruption detection."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import tracemalloc

import numpy as np
import pytest

from qgait.data.sources import BadSequenceError, SequenceKey
from qgait.data.store import SequenceStore, StoreError, StoreWriter, build_store

from .conftest import REAL_SUBJECTS, random_seq, write_pkl

# ---------------------------------------------------------------------------------------------- real data


def test_real_import_matches_manifest(real_store, manifest):
    dest, summary = real_store
    rows = [r for r in manifest if r["subject"] in REAL_SUBJECTS]
    assert rows, "manifest has no rows for the test subjects"
    store = SequenceStore.open(dest)
    assert summary.n_sequences == len(store) == len(rows)
    assert summary.n_frames == store.n_frames == sum(int(r["frames"]) for r in rows)
    assert summary.n_subjects == 2 and store.subjects == sorted(REAL_SUBJECTS)
    assert summary.skipped == []
    assert store.frame_shape == (64, 64) == summary.frame_shape
    expected = {(r["subject"], r["condition"], r["view"]): int(r["frames"]) for r in rows}
    got = {(r.subject, r.condition, r.view): r.length for r in store.records}
    assert got == expected
    assert [r.key for r in store.records] == sorted(r.key for r in store.records)
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["n_frames"] == store.n_frames and meta["n_sequences"] == len(rows) and meta["n_subjects"] == 2
    assert meta["frame_shape"] == [64, 64] and meta["format_version"] == 1


def test_real_frames_equal_the_pickles_in_the_archive(real_store, manifest, casia_b):
    dest, _ = real_store
    store = SequenceStore.open(dest)
    by_path = {r["path"]: r for r in manifest}
    picks = [store.records[i] for i in np.linspace(0, len(store) - 1, 7).astype(int)]
    wanted = {f"{r.subject}/{r.condition}/{r.view}/{r.view}.pkl": r for r in picks}
    found = 0
    for subject in sorted({r.subject for r in picks}):
        with tarfile.open(casia_b / f"{subject}.tar.xz", "r:xz") as tar:
            for m in tar:
                if m.name in wanted:
                    data = tar.extractfile(m).read()
                    # trusted reference read: checksum against the manifest, then the plain unpickler
                    assert hashlib.sha256(data).hexdigest() == by_path[m.name]["sha256"]
                    ref = pickle.loads(data)
                    rec = wanted[m.name]
                    i = store.records.index(rec)
                    assert np.array_equal(store.frames(i), ref), m.name
                    found += 1
    assert found == len(wanted)


def test_real_store_access(real_store):
    store = SequenceStore.open(real_store[0])
    i = store.select(subjects="076", conditions=["nm-05"], views="090")
    assert len(i) == 1 and store.records[i[0]].key == SequenceKey("076", "nm-05", "090")
    f = store.frames(i[0])
    assert isinstance(f, np.memmap) and not f.flags.writeable and f.dtype == np.uint8
    assert f.shape == (store.records[i[0]].length, 64, 64)
    idx = np.array([3, 0, 3, len(f) - 1])
    assert np.array_equal(store.gather(i[0], idx), np.asarray(f)[idx])
    st = store.stats()
    assert st["sequences"] == len(store) and st["frames"] == store.n_frames
    assert sum(st["conditions"].values()) == len(store) and set(st["conditions"]) == {r.condition for r in store.records}
    lengths = sorted(r.length for r in store.records)
    assert st["frames_per_sequence"]["min"] == lengths[0] and st["frames_per_sequence"]["max"] == lengths[-1]


# ---------------------------------------------------------------------------------------------- synthetic


def test_build_from_folder_round_trips(synth_src, tmp_path):
    root, truth = synth_src
    summary = build_store(root, tmp_path / "st", progress=False)
    store = SequenceStore.open(tmp_path / "st")
    assert len(store) == len(truth) == summary.n_sequences
    for i, r in enumerate(store.records):
        assert np.array_equal(store.frames(i), truth[(r.subject, r.condition, r.view)])
    text = str(summary)
    assert f"{len(truth)} sequences" in text and "3 subjects" in text


def test_select_and_labels(synth_src, tmp_path):
    root, truth = synth_src
    build_store(root, tmp_path / "st", progress=False)
    store = SequenceStore.open(tmp_path / "st")
    sel = store.select(subjects=["010", "002"], conditions="nm-01")
    assert [(store.records[i].subject, store.records[i].condition) for i in sel] == [
        ("002", "nm-01"), ("002", "nm-01"), ("010", "nm-01"), ("010", "nm-01")]
    labels, names = store.labels_for(sel)
    assert names == ["002", "010"] and labels.dtype == np.int64
    assert [names[l] for l in labels] == [store.records[i].subject for i in sel]
    assert store.select(views="180") == []
    with pytest.raises(IndexError):
        store.frames(len(store))
    with pytest.raises(IndexError, match="out of range"):
        store.gather(0, [store.records[0].length])


def test_store_pickles_as_its_path(synth_src, tmp_path):
    root, _ = synth_src
    build_store(root, tmp_path / "st", progress=False)
    store = SequenceStore.open(tmp_path / "st")
    blob = pickle.dumps(store)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert again.records == store.records and np.array_equal(again.frames(3), store.frames(3))


def test_failed_import_leaves_nothing(synth_src, tmp_path):
    root, truth = synth_src
    write_pkl(root / "010" / "nm-01" / "180" / "180.pkl", np.zeros((4, 64, 64)))  # last in order: float64
    dest = tmp_path / "st"
    with pytest.raises(BadSequenceError, match="010/nm-01/180/180.pkl"):
        build_store(root, dest, progress=False)
    assert not dest.exists()
    assert list(tmp_path.glob("st.partial-*")) == []
    with pytest.raises(FileNotFoundError):
        SequenceStore.open(dest)
    summary = build_store(root, dest, skip_bad=True, progress=False)
    assert summary.n_sequences == len(truth)
    assert [o for o, _ in summary.skipped] == ["010/nm-01/180/180.pkl"]
    assert "010/nm-01/180/180.pkl: dtype float64" in str(summary)


def test_crash_mid_import_is_not_a_store_and_is_cleaned(synth_src, tmp_path):
    """A process killed mid-import leaves only <dest>.partial-<pid>; open() refuses it; the next import removes it."""
    root, truth = synth_src
    dest = tmp_path / "st"
    code = ("import os, sys\nfrom qgait.data.store import StoreWriter\nfrom qgait.data.sources import iter_sequences\n"
            f"w = StoreWriter({str(dest)!r})\n"
            f"for s in iter_sequences({str(root)!r}): w.add(s.key, s.frames)\n"
            "os._exit(3)  # dies before close()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    partials = list(tmp_path.glob("st.partial-*"))
    assert len(partials) == 1 and (partials[0] / "frames.u8").stat().st_size > 0
    assert not dest.exists()
    with pytest.raises(StoreError, match="incomplete store"):
        SequenceStore.open(partials[0])
    build_store(root, dest, progress=False)
    assert list(tmp_path.glob("st.partial-*")) == []  # stale partial of a dead process removed
    assert len(SequenceStore.open(dest)) == len(truth)


def test_existing_store_is_refused_unless_overwrite(synth_src, tmp_path):
    root, truth = synth_src
    dest = tmp_path / "st"
    build_store(root, dest, subjects=["001"], progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_store(root, dest, progress=False)
    assert len(SequenceStore.open(dest)) == 4
    build_store(root, dest, progress=False, overwrite=True)
    assert len(SequenceStore.open(dest)) == len(truth)
    other = tmp_path / "notastore"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_store(root, other, progress=False, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_mixed_frame_sizes(tmp_path):
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    write_pkl(root / "001" / "nm-01" / "000" / "000.pkl", random_seq(rng, 3, 64))
    write_pkl(root / "001" / "nm-01" / "018" / "018.pkl", random_seq(rng, 3, 44))
    with pytest.raises(BadSequenceError, match="001/nm-01/018/018.pkl: frame size 64x44 differs"):
        build_store(root, tmp_path / "st", progress=False)
    s = build_store(root, tmp_path / "st", skip_bad=True, progress=False)
    assert s.n_sequences == 1 and s.skipped[0][0] == "001/nm-01/018/018.pkl"


def test_corrupt_stores_are_refused(synth_src, tmp_path):
    root, _ = synth_src
    dest = tmp_path / "st"
    build_store(root, dest, progress=False)
    frames = dest / "frames.u8"
    data = frames.read_bytes()
    frames.write_bytes(data[:-1])
    with pytest.raises(StoreError, match=r"frames\.u8: .* expected"):
        SequenceStore.open(dest)
    frames.write_bytes(data)
    SequenceStore.open(dest)
    index = (dest / "index.json").read_text()
    (dest / "index.json").write_text(index[: len(index) // 2])
    with pytest.raises(StoreError, match=r"index\.json: corrupt"):
        SequenceStore.open(dest)
    doc = json.loads(index)
    doc["records"][1]["start"] += 1
    (dest / "index.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="record 1"):
        SequenceStore.open(dest)
    (dest / "index.json").write_text(index)
    meta = json.loads((dest / "meta.json").read_text())
    meta["format_version"] = 99
    (dest / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format_version"):
        SequenceStore.open(dest)
    (dest / "meta.json").unlink()
    with pytest.raises(StoreError, match="incomplete"):
        SequenceStore.open(dest)
    with pytest.raises(FileNotFoundError):
        SequenceStore.open(tmp_path / "absent")


def test_writer_rejects_duplicates_and_empty(tmp_path):
    w = StoreWriter(tmp_path / "st")
    w.add(SequenceKey("1", "a", "0"), np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="twice"):
        w.add(SequenceKey("1", "a", "0"), np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(BadSequenceError, match="T >= 1"):
        w.add(SequenceKey("1", "a", "1"), np.zeros((0, 64, 64), np.uint8))
    w.abort()
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="no sequences"):
        StoreWriter(tmp_path / "st").close()
    assert not any(tmp_path.iterdir())


def test_import_streams_instead_of_holding_the_dataset(tmp_path):
    """Peak Python/numpy allocation during an import stays far below the dataset size."""
    root = tmp_path / "src"
    rng = np.random.default_rng(1)
    total = 0
    for s in range(4):
        for v in range(10):
            arr = random_seq(rng, 60)
            total += arr.nbytes
            write_pkl(root / f"{s:03d}" / "nm-01" / f"{v:03d}" / f"{v:03d}.pkl", arr)
    tracemalloc.start()
    try:
        build_store(root, tmp_path / "st", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 9_000_000
    assert peak < total / 5, (peak, total)


def test_gather_batch_equals_per_sequence_gather(real_store):
    real_store = SequenceStore.open(real_store[0])
    rng = np.random.default_rng(0)
    seq = np.array([0, 5, 17, len(real_store) - 1])
    pos = np.stack([np.sort(rng.integers(0, real_store.records[i].length, 6)) for i in seq])
    got = real_store.gather_batch(seq, pos)
    assert got.shape == (4, 6, *real_store.frame_shape)
    for j, i in enumerate(seq):
        assert np.array_equal(got[j], real_store.gather(int(i), pos[j]))
    with pytest.raises(IndexError):
        real_store.gather_batch(seq[:1], np.array([[real_store.records[0].length]]))


def test_cut_width_store_holds_the_cut_frames(casia_b, tmp_path):
    from qgait.data.sources import iter_sequences

    summary = build_store(casia_b, tmp_path / "s44", subjects=["075"], progress=False, cut_width=True)
    store = SequenceStore.open(tmp_path / "s44")
    assert store.frame_shape == (64, 44) and summary.n_frames == store.n_frames
    assert store.meta["cut_width"] is True
    for j, seq in enumerate(iter_sequences(casia_b, subjects=["075"])):
        if j in (0, 57):
            i = store.select(subjects=[seq.key.subject], conditions=[seq.key.condition], views=[seq.key.view])[0]
            assert np.array_equal(store.frames(i), seq.frames[:, :, 10:54])


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None),
                    reason="a SIGTERM handler is installed around the tests")
def test_sigterm_inside_the_writer_cleans_up_as_ctrl_c_does(tmp_path):
    """SIGTERM within ``with StoreWriter(...)`` raises Interrupted there, so the partial folder goes (issue 16)."""
    from qgait.data.errors import Interrupted

    with pytest.raises(Interrupted):
        with StoreWriter(tmp_path / "st") as w:
            w.add(SequenceKey("1", "a", "0"), np.zeros((2, 64, 64), np.uint8))
            assert list(tmp_path.glob("st.partial-*"))
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000_000):  # the handler runs at the next bytecode boundary
                pass
    assert not any(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_existing_store_message_names_the_flag(synth_src, tmp_path):
    root, _ = synth_src
    build_store(root, tmp_path / "st", subjects=["001"], progress=False)
    with pytest.raises(FileExistsError, match="add --overwrite to replace it") as e:
        build_store(root, tmp_path / "st", progress=False)
    assert "overwrite=True" not in str(e.value)
