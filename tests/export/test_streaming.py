"""Streaming embedding (issue 17): frame-by-frame updates equal the whole-sequence embedding, for the exported
FP32 and int8 graphs and for PyTorch models; non-streamable models and bad pushes are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from qgait.runtime import GaitEmbedder, ModelLoadError
from qgait.runtime.streaming import StreamingEmbedder, TemporalSplitError, split_at_temporal_pool

from .conftest import SIZE


def _path(report) -> str:
    return report.path


@pytest.mark.parametrize("kind", ["fp32", "w8a8", "w4a4"])
def test_onnx_stream_equals_the_whole_sequence(exports, probes, kind):
    path = exports[kind].path
    whole = GaitEmbedder(path)
    s = StreamingEmbedder.from_onnx(path)
    seq = probes[1][0]  # [17, h, w]
    for t in range(seq.shape[0]):
        assert s.push(seq[t]) == t + 1
        if t in (0, 5, seq.shape[0] - 1):
            ref = whole.embed(seq[: t + 1])
            np.testing.assert_allclose(s.embedding(), ref, rtol=1e-5, atol=1e-5)
    # several frames per push, then a reset starts a new sequence
    s.reset()
    s.push(seq[:4])
    s.push(seq[4:])
    np.testing.assert_allclose(s.embedding(), whole.embed(seq), rtol=1e-5, atol=1e-5)
    s.reset()
    s.push(seq[:3])
    np.testing.assert_allclose(s.embedding(), whole.embed(seq[:3]), rtol=1e-5, atol=1e-5)
    assert s.frames == 3


def test_the_int8_stream_differs_from_fp32(exports, probes):
    """Guards the test above: the streams really run different graphs."""
    seq = probes[0][0]
    a, b = StreamingEmbedder.from_onnx(_path(exports["fp32"])), StreamingEmbedder.from_onnx(_path(exports["w4a4"]))
    a.push(seq), b.push(seq)
    assert np.abs(a.embedding() - b.embedding()).max() > 1e-3


@pytest.mark.parametrize("which", ["fp", "w4a4"])
def test_torch_stream_equals_the_model(fp_model, w4a4, probes, which):
    model = fp_model if which == "fp" else w4a4[0]
    s = StreamingEmbedder.from_torch(model, SIZE)
    seq = probes[1][0]
    for t in range(seq.shape[0]):
        s.push(seq[t])
    with torch.no_grad():
        ref = model(seq[None]).numpy()
    np.testing.assert_allclose(s.embedding(), ref, rtol=1e-5, atol=1e-5)


def test_several_streams_at_once(exports, probes):
    batch = probes[2]  # [2, 9, h, w]
    whole = GaitEmbedder(_path(exports["w8a8"]))
    s = StreamingEmbedder.from_onnx(_path(exports["w8a8"]))
    for t in range(batch.shape[1]):
        s.push(batch[:, t : t + 1])
    np.testing.assert_allclose(s.embedding(), whole.embed(batch), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stream"):
        s.push(batch[:1, :1])


def test_raw_uint8_frames_are_prepared_as_whole_sequences(exports):
    rng = np.random.default_rng(0)
    raw = (rng.random((6, 64, 64)) > 0.6).astype(np.uint8) * 255
    whole = GaitEmbedder(_path(exports["fp32"]))
    s = StreamingEmbedder.from_onnx(_path(exports["fp32"]))
    for f in raw:
        s.push(f)
    np.testing.assert_allclose(s.embedding(), whole.embed(raw), rtol=1e-5, atol=1e-5)


def test_bad_use_is_refused(exports, tmp_path):
    s = StreamingEmbedder.from_onnx(_path(exports["fp32"]))
    with pytest.raises(ValueError, match="no frames"):
        s.embedding()
    with pytest.raises(ValueError, match="input size"):
        s.push(np.zeros((10, 10), np.float32))
    with pytest.raises(ModelLoadError, match="not found"):
        StreamingEmbedder.from_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        StreamingEmbedder.from_onnx(bad)


def test_models_without_a_temporal_max_are_refused(exports, tmp_path):
    m = onnx.load(_path(exports["fp32"]))
    for node in m.graph.node:  # the temporal max becomes a mean: no longer streamable by a running max
        if node.op_type == "ReduceMax":
            node.op_type = "ReduceMean"
            break
    with pytest.raises(TemporalSplitError, match="max over the frame axis"):
        split_at_temporal_pool(m)
    with pytest.raises(TemporalSplitError, match="cannot be streamed"):
        StreamingEmbedder.from_torch(torch.nn.Conv2d(1, 1, 1), SIZE)


def test_the_split_graphs_have_the_expected_shapes(exports):
    frames, head = split_at_temporal_pool(onnx.load(_path(exports["w4a4"])))
    f_out = [d.dim_value or d.dim_param for d in frames.graph.output[0].type.tensor_type.shape.dim]
    h_in = [d.dim_value or d.dim_param for d in head.graph.input[0].type.tensor_type.shape.dim]
    assert len(f_out) == 5 and len(h_in) == 4 and f_out[2:] == h_in[1:]
    assert any(n.op_type in ("QLinearConv", "ConvInteger", "QuantizeLinear") for n in frames.graph.node)


def test_models_that_mix_frames_are_refused(tmp_path):
    """DeepGaitV2's 3D blocks mix neighbouring frames before the temporal max: a running max of single frames
    would give another embedding, so the split refuses it (the PyTorch path too: it has no per-frame backbone)."""
    from qgait.export import export_onnx
    from qgait.models import build_model

    m = build_model("deepgaitv2", width=0.125, bins=[8], embed_dim=16).eval()
    path = export_onnx(m, tmp_path / "dg2.onnx", SIZE).path
    with pytest.raises(TemporalSplitError, match="mixes frames"):
        StreamingEmbedder.from_onnx(path)
    with pytest.raises(TemporalSplitError, match="cannot be streamed"):
        StreamingEmbedder.from_torch(m, SIZE)
