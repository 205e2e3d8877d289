"""Pretreatment of raw silhouettes (synthetic PNGs: an off-centre 'person' on a large canvas)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from qgait.data.errors import BadSequenceError
from qgait.data.pretreat import pretreat_folder, pretreat_sequence
from qgait.data.store import SequenceStore


def person(cx: int, top: int = 40, height: int = 160, width: int = 60, arm: int = 0,
           canvas=(240, 320)) -> np.ndarray:
    """A uint8 silhouette: ellipse body (+ optional arm block to its right) on a black canvas [H, W]."""
    im = Image.new("L", (canvas[1], canvas[0]), 0)
    d = ImageDraw.Draw(im)
    d.ellipse([cx - width // 2, top, cx + width // 2, top + height], fill=255)
    if arm:
        d.rectangle([cx + width // 2, top + height // 3, cx + width // 2 + arm, top + height // 3 + 10], fill=255)
    return np.asarray(im, dtype=np.uint8)


def mass_centre_col(img: np.ndarray) -> float:
    m = img.astype(np.float64).sum(axis=0)
    cum = np.cumsum(m)
    return float(np.searchsorted(cum, cum[-1] / 2))


def test_output_shape_centring_and_height_fill():
    frames = [person(cx) for cx in (40, 50, 120, 200, 287)]  # the person walks across the canvas, to its edges
    out = pretreat_sequence(frames, origin="s")
    assert out.dtype == np.uint8 and out.shape == (5, 64, 64)
    for f in out:
        rows = np.flatnonzero(f.any(axis=1))
        assert rows[0] == 0 and rows[-1] == 63  # height filled
        assert abs(mass_centre_col(f) - 32) <= 1
    # the same person gives (nearly: the resampling phase depends on its position) the same frame anywhere
    masks = out > 127
    for m in masks[1:]:
        assert (m & masks[0]).sum() / (m | masks[0]).sum() > 0.9


def test_aspect_ratio_is_kept():
    out = pretreat_sequence([person(160, height=160, width=60)] * 5)
    cols = np.flatnonzero(out[0].max(axis=0) > 127)
    width = cols[-1] - cols[0] + 1
    assert abs(width - 64 * 61 / 161) <= 2  # ellipse 61 px wide, 161 high -> ~24 px at height 64


def test_centre_is_the_half_mass_column_not_the_bbox_centre():
    out = pretreat_sequence([person(160, arm=40)] * 5)[0]
    cols = np.flatnonzero(out.any(axis=0))
    bbox_centre = (cols[0] + cols[-1]) / 2
    assert abs(mass_centre_col(out) - 32) <= 1
    assert bbox_centre > 33  # the arm sticks out to the right of the mass centre


def test_near_empty_frames_are_dropped_in_order():
    blank = np.zeros((240, 320), np.uint8)
    speck = blank.copy()
    speck[100:106, 100:106] = 255  # 36 px * 255 = 9180 <= 10000
    frames = [blank, person(100, height=150), speck, person(150, height=100), blank, person(200, height=120),
              person(210), person(220)]
    out = pretreat_sequence(frames)
    assert len(out) == 5
    big = pretreat_sequence([person(100, height=150)] * 5)[0]
    assert np.array_equal(out[0], big)
    assert len(pretreat_sequence(frames, min_mass=0)) == 6  # the speck is kept with a lower threshold


def test_few_frames_warn_and_none_raise():
    with pytest.warns(UserWarning, match="only 2 of 3 frames"):
        pretreat_sequence([person(100), person(120), np.zeros((240, 320), np.uint8)], origin="seq-x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretreat_sequence([person(100)] * 5)
    with pytest.raises(BadSequenceError, match="seq-x: no frames left"):
        pretreat_sequence([np.zeros((50, 50), np.uint8)] * 3, origin="seq-x")
    with pytest.raises(BadSequenceError, match="frame 0"):
        pretreat_sequence([person(100).astype(np.float32)], origin="seq-x")


def _save(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def test_pretreat_folder_builds_a_store(tmp_path):
    src = tmp_path / "raw"
    heights = list(range(100, 190, 8))  # 12 frames, each person a different height
    for v in ("000", "090"):
        for j, h in enumerate(heights):
            _save(src / "001" / "nm-01" / v / f"{j + 1}.png", person(100 + 5 * j, height=h))  # unpadded names
    _save(src / "001" / "nm-01" / "018" / "001.png", np.zeros((240, 320), np.uint8))  # empty sequence
    _save(src / "002" / "cl-01" / "stray.png", person(100))  # misplaced
    with pytest.raises(BadSequenceError, match="001/nm-01/018"):
        pretreat_folder(src, tmp_path / "st", progress=False)
    assert not (tmp_path / "st").exists()
    summary = pretreat_folder(src, tmp_path / "st", skip_bad=True, progress=False)
    assert {o for o, _ in summary.skipped} == {"001/nm-01/018", "002/cl-01/stray.png"}
    store = SequenceStore.open(tmp_path / "st")
    assert [(r.subject, r.condition, r.view, r.length) for r in store.records] == [
        ("001", "nm-01", "000", 12), ("001", "nm-01", "090", 12)]
    assert store.frame_shape == (64, 64)
    # natural frame order: 2.png before 10.png; person width (at height 64) shrinks as height grows
    widths = [np.count_nonzero(f[32] > 127) for f in store.frames(0)]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    expected = pretreat_sequence([person(100 + 5 * j, height=h) for j, h in enumerate(heights)])
    assert np.array_equal(store.frames(0), expected)
