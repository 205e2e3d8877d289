"""Released PNG layouts (Gait3D, GREW): keys as OpenGait's pickles, odd layouts named, ``--skip-bad`` reporting."""

from __future__ import annotations

import pytest

from qgait.cli import main
from qgait.data.errors import BadSequenceError
from qgait.data.layouts import LayoutError, scan_gait3d, scan_grew, scan_layout
from qgait.data.pretreat import pretreat_folder
from qgait.data.sources import SequenceKey
from qgait.data.store import SequenceStore

from .standins import _write_pngs, silhouettes, write_gait3d, write_grew


def test_grew_keys_follow_opengait_rearrangement(tmp_path):
    write_grew(tmp_path)
    keys = {it.key for it in scan_grew(tmp_path) if it.key is not None}
    assert SequenceKey("00001train", "00", "tr1s0") in keys
    assert SequenceKey("00001", "01", "ga1s0") in keys and SequenceKey("00001", "02", "ga1s1") in keys
    assert SequenceKey("probe", "03", "pAbC1") in keys
    assert not any(k.subject.startswith("d") or k.view == "d1" for k in keys)  # distractor/ not imported
    assert len(keys) == 9 + 20 + 3


def test_grew_odd_layouts_are_named(tmp_path):
    (tmp_path / "frames").mkdir()
    with pytest.raises(LayoutError, match="not GREW's layout.*train/<subject>/<sequence>"):
        scan_grew(tmp_path)
    (tmp_path / "test" / "other").mkdir(parents=True)
    with pytest.raises(LayoutError, match="gallery/ and probe/"):
        scan_grew(tmp_path)
    with pytest.raises(ValueError, match="unknown layout 'casia'"):
        scan_layout(tmp_path, "casia")


def test_grew_stray_frames_fail_or_are_reported_with_skip_bad(tmp_path):
    write_grew(tmp_path / "g")
    _write_pngs(tmp_path / "g" / "test" / "gallery" / "00003", silhouettes(3, 1, h=80, w=60))  # frame at subject level
    with pytest.raises(BadSequenceError, match="test/gallery/00003/000.png.*outside the expected layout"):
        pretreat_folder(tmp_path / "g", tmp_path / "store", layout="grew", progress=False)
    assert not (tmp_path / "store").exists()
    summary = pretreat_folder(tmp_path / "g", tmp_path / "store", layout="grew", skip_bad=True, progress=False)
    assert [o for o, _ in summary.skipped] == ["test/gallery/00003/000.png"]
    assert len(SequenceStore.open(tmp_path / "store")) == 32


def test_gait3d_misnamed_sequences(tmp_path):
    write_gait3d(tmp_path)
    _write_pngs(tmp_path / "2D_Silhouettes" / "0000" / "cam1" / "seq0", silhouettes(0, 3, h=96, w=64))
    with pytest.raises(BadSequenceError, match="not a Gait3D name: camera/video 'cam1'"):
        pretreat_folder(tmp_path, tmp_path / "store", layout="gait3d", progress=False)
    summary = pretreat_folder(tmp_path / "2D_Silhouettes", tmp_path / "store", layout="gait3d", skip_bad=True,
                              progress=False)
    assert [o for o, _ in summary.skipped] == ["0000/cam1/seq0"] and summary.n_sequences == 21


def test_gait3d_without_gait3d_names_is_a_layout_error(tmp_path):
    _write_pngs(tmp_path / "001" / "nm-01" / "000", silhouettes(0, 3))
    with pytest.raises(LayoutError, match="no Gait3D sequence found"):
        scan_gait3d(tmp_path)


def test_cli_pretreat_layout(tmp_path, capsys):
    write_grew(tmp_path / "g")
    assert main(["data", "pretreat", str(tmp_path / "g"), str(tmp_path / "store"), "--layout", "grew", "--quiet"]) == 0
    store = SequenceStore.open(tmp_path / "store")
    assert "probe" in store.subjects and "00001train" in store.subjects
