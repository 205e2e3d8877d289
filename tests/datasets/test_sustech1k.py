"""SUSTech1K's released pickles: 16 modality pickles per view folder, of which the import takes the aligned camera
silhouettes ``06-<view>-Camera-Sils_aligned.pkl`` (what OpenGait's silhouette recipes read), from folders and from
archives; a folder without them is a bad item that says what it holds."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest

from qgait.data.sources import BadSequenceError, SequenceKey, choose_pickle, iter_sequences
from qgait.data.store import SequenceStore, build_store

from .standins import SUSTECH1K_MODALITIES, silhouettes, write_sustech1k, write_sustech1k_view


def test_the_names_opengait_writes_and_the_choice():
    names = sorted([f"{n:02d}-090-{m}.pkl" for n, m in enumerate(SUSTECH1K_MODALITIES)]
                   + [f"{n + 8:02d}-sync-090-{m}.pkl" for n, m in enumerate(SUSTECH1K_MODALITIES)])
    assert len(names) == 16 and names[6] == "06-090-Camera-Sils_aligned.pkl"  # OpenGait's data_in_use index 6
    choice = choose_pickle(names)
    assert choice.index == 6 and choice.ignored == {} and choice.reason is None
    plain = choose_pickle(["090-aligned-sils.pkl", "090-ratios.pkl"])  # e.g. CCPG: the first, the other noted
    assert plain.index == 0 and list(plain.ignored) == [1] and "used the first" in plain.ignored[1]


def test_folder_import_takes_the_aligned_camera_silhouettes(tmp_path):
    fake = write_sustech1k(tmp_path / "SUSTech1K")
    skipped: list[tuple[str, str]] = []
    seqs = list(iter_sequences(fake["src"], skipped=skipped))
    assert skipped == []  # the other 15 modality pickles are expected: not reported
    assert len(seqs) == len(fake["silhouettes"]) == 6 * 5 * 2
    for seq in seqs:
        k = seq.key
        assert seq.origin == f"{k.subject}/{k.condition}/{k.view}/06-{k.view}-Camera-Sils_aligned.pkl"
        assert np.array_equal(seq.frames, fake["silhouettes"][(k.subject, k.condition, k.view)])


def test_archive_import_takes_the_same_pickle(tmp_path):
    fake = write_sustech1k(tmp_path / "SUSTech1K")
    arch = tmp_path / "archives"
    arch.mkdir()
    with tarfile.open(arch / "0001.tar.xz", "w:xz") as tar:
        tar.add(fake["src"] / "0001", arcname="0001")
    skipped: list[tuple[str, str]] = []
    seqs = list(iter_sequences(arch, skipped=skipped))
    assert skipped == [] and len(seqs) == 5 * 2
    for seq in seqs:
        assert seq.origin.startswith("0001.tar.xz:0001/") and seq.origin.endswith("-Camera-Sils_aligned.pkl")
        assert np.array_equal(seq.frames, fake["silhouettes"][("0001", seq.key.condition, seq.key.view)])


def test_a_folder_without_the_silhouettes_is_a_bad_item_naming_what_it_holds(tmp_path):
    fake = write_sustech1k(tmp_path / "S")
    lidar_only = tmp_path / "S" / "0003" / "02-bg" / "090"
    for f in lidar_only.iterdir():
        f.unlink()
    write_sustech1k_view(lidar_only, silhouettes(3, 4), modalities=("LiDAR-PCDs", "LiDAR-PCDs_sils"))
    with pytest.raises(BadSequenceError, match=r"0003/02-bg/090: SUSTech1K view folder without the camera "
                                               r"silhouettes NN-<view>-Camera-Sils_aligned\.pkl \(holds 00-090-LiDAR"):
        list(iter_sequences(fake["src"]))
    summary = build_store(fake["src"], tmp_path / "store", skip_bad=True, progress=False)
    assert [o for o, _ in summary.skipped] == ["0003/02-bg/090"] and summary.n_sequences == 59
    assert SequenceKey("0003", "02-bg", "090") not in {r.key for r in SequenceStore.open(tmp_path / "store").records}


def test_other_files_beside_the_modalities_are_noted(tmp_path):
    fake = write_sustech1k(tmp_path / "S")
    with open(fake["src"] / "0000" / "00-nm" / "000" / "my-notes.pkl", "wb") as f:
        pickle.dump(np.zeros((2, 64, 64), np.uint8), f)
    skipped: list[tuple[str, str]] = []
    seqs = list(iter_sequences(fake["src"], subjects=["0000"], skipped=skipped))
    assert len(seqs) == 10
    assert skipped == [("0000/00-nm/000/my-notes.pkl",
                        "ignored: not one of SUSTech1K's modality pickles; used 06-000-Camera-Sils_aligned.pkl")]
