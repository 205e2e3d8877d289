"""Packed 4-bit weights: exact round trips (hypothesis), and the packed model file restores the ONNX model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import numpy_helper

from qgait.export.int4 import PackedModelError, load_packed, pack_int4, save_packed, unpack_int4
from qgait.runtime import GaitEmbedder, ModelLoadError

from .conftest import cosines


@settings(max_examples=200, deadline=None)
@given(arrays(np.int8, st.tuples(st.integers(0, 5), st.integers(1, 7)), elements=st.integers(-8, 7)))
def test_pack_unpack_round_trip(values):
    data = pack_int4(values)
    assert len(data) == (values.size + 1) // 2
    back = unpack_int4(data, values.shape)
    assert back.dtype == np.int8 and back.shape == values.shape
    np.testing.assert_array_equal(back, values)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=1, max_size=33))
def test_pack_accepts_torch_and_lists_of_any_length(vals):
    t = torch.tensor(vals, dtype=torch.int8)
    assert unpack_int4(pack_int4(t), len(vals)).tolist() == vals


def test_nibble_layout_and_errors():
    assert pack_int4(np.array([1, -1, 7], np.int8)) == bytes([0xF1, 0x07])  # low nibble first, two's complement
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(np.array([8]))
    with pytest.raises(TypeError):
        pack_int4(np.array([0.5]))
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_int4(b"\x00\x00", 5)


def test_packed_model_round_trip(exports, probes, tmp_path):
    src = exports["w4a4"].path
    info = save_packed(src, tmp_path / "w4a4.qgpack")
    assert info["packed_initializers"] == 13
    # the bias matching stored some channels as w_int * k: packed divided by k, restored exactly (below)
    raw = (tmp_path / "w4a4.qgpack").read_bytes()
    header = json.loads(raw[16: 16 + int.from_bytes(raw[8:16], "little")])
    assert any(e["multipliers"] for e in header["tensors"])
    assert info["bytes"] < info["onnx_bytes"]
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(src).graph.initializer}
    restored = load_packed(tmp_path / "w4a4.qgpack")
    onnx.checker.check_model(restored)
    got = {i.name: numpy_helper.to_array(i) for i in restored.graph.initializer}
    assert got.keys() == original.keys()
    for k, v in original.items():
        np.testing.assert_array_equal(got[k], v)
    # the runtime loads the packed file directly and gives the same embeddings
    a, b = GaitEmbedder(src), GaitEmbedder(tmp_path / "w4a4.qgpack")
    np.testing.assert_array_equal(a.embed(probes[0]), b.embed(probes[0]))
    assert float(cosines(a.embed(probes[2]), b.embed(probes[2])).min()) == pytest.approx(1.0)


def test_packed_file_errors(exports, tmp_path):
    with pytest.raises(ValueError, match="no <= 4-bit"):
        save_packed(exports["w8a8"].path, tmp_path / "x.qgpack")
    path = tmp_path / "w4.qgpack"
    save_packed(exports["w4a4"].path, path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "corrupt.qgpack"
    bad.write_bytes(bytes(data))
    with pytest.raises(PackedModelError, match="corrupt.qgpack.*CRC"):
        load_packed(bad)
    with pytest.raises(ModelLoadError, match="corrupt.qgpack"):
        GaitEmbedder(bad)
    short = tmp_path / "short.qgpack"
    short.write_bytes(bytes(data[:-100]))
    with pytest.raises(PackedModelError, match="truncated"):
        load_packed(short)
    with pytest.raises(PackedModelError, match="not found"):
        load_packed(tmp_path / "missing.qgpack")
