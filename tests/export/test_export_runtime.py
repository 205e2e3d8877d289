"""Runtime API (GaitEmbedder, Gallery, identify), parity and ONNX evaluation workflows, and bad inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from qgait.data.transforms import to_model_input
from qgait.engine.checkpoint import save_inference_model
from qgait.runtime import GaitEmbedder, Gallery, ModelLoadError, identify, identify_many

from .conftest import ARGS, SIZE


@pytest.fixture(scope="module")
def fp_embedder(exports):
    return GaitEmbedder(exports["fp32"].path, threads=1)


@pytest.fixture(scope="module")
def raw_frames(small_store):
    i = small_store.select(subjects=["075"], conditions=["nm-05"], views=["090"])[0]
    return np.array(small_store.frames(i)[:20])  # uint8 [20, 64, 64]


def test_embed_raw_and_float_inputs_agree(fp_embedder, fp_model, raw_frames):
    assert fp_embedder.input_size == SIZE and fp_embedder.meta["kind"] == "fp32"
    e64 = fp_embedder.embed(raw_frames)  # [T, 64, 64] uint8: cut and resized like training
    e44 = fp_embedder.embed(raw_frames[:, :, 10:54])  # already cut [T, 64, 44]
    x = to_model_input(torch.from_numpy(raw_frames), SIZE)
    ef = fp_embedder.embed(x.unsqueeze(0).numpy())  # float [1, T, h, w]
    et = fp_embedder.embed(torch.from_numpy(raw_frames))  # torch uint8
    assert e64.shape == (1, 32, 8)
    np.testing.assert_array_equal(e64, e44)
    np.testing.assert_array_equal(e64, et)
    np.testing.assert_allclose(ef, e64, atol=1e-6)
    np.testing.assert_allclose(e64, fp_model(x.unsqueeze(0)).detach().numpy(), atol=1e-4)
    batch = fp_embedder.embed(np.stack([raw_frames, raw_frames]))  # [n, T, 64, 64]
    assert batch.shape == (2, 32, 8)
    assert fp_embedder(x.unsqueeze(0)).shape == (1, 32, 8)  # tensor callable for evaluate_on_store


@pytest.mark.parametrize("bad, match", [
    (np.zeros((5, 32, 32), np.uint8), "64x64 or 64x44"),
    (np.zeros((5, 64, 64), np.int64), "unsupported silhouette dtype int64"),
    (np.zeros((1, 5, 64, 44), np.float32), "model input size 32x22"),
    (np.full((5, 32, 22), 255.0, np.float32), r"in \[0, 1\]"),
    (np.full((5, 32, 22), np.nan, np.float32), "NaN"),
    (np.zeros((64, 64), np.uint8), r"\[T, H, W\] or \[n, T, H, W\]"),
    (np.zeros((0, 64, 64), np.uint8), "empty"),
    ([[0, 1]], "numpy array or torch tensor"),
])
def test_bad_probe_input(fp_embedder, bad, match):
    with pytest.raises(ValueError, match=match):
        fp_embedder.embed(bad)


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.onnx: model file not found"):
        GaitEmbedder(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelLoadError, match="corrupt.onnx: not a readable ONNX model"):
        GaitEmbedder(corrupt)
    # a valid ONNX model that is not a silhouette-sequence model
    inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 10])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["features"], ["y"])], "g", [inp], [out]),
                          opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(m, tmp_path / "other.onnx")
    with pytest.raises(ModelLoadError, match="other.onnx: input 'features'.*silhouette sequence"):
        GaitEmbedder(tmp_path / "other.onnx")
    inp4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "T", "h", "w"])
    m4 = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [inp4],
                                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
                           opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(m4, tmp_path / "free.onnx")
    with pytest.raises(ModelLoadError, match="no fixed frame size"):
        GaitEmbedder(tmp_path / "free.onnx")


def test_gallery_and_identify_errors(tmp_path):
    with pytest.raises(ValueError, match="empty gallery"):
        Gallery(np.zeros((0, 4, 2), np.float32), [])
    with pytest.raises(ValueError, match="2 embeddings but 1 labels"):
        Gallery(np.zeros((2, 4, 2), np.float32), ["a"])
    g = Gallery(np.stack([np.zeros((4, 2)), np.ones((4, 2)), 2 * np.ones((4, 2))]), ["a", "b", "a"])
    expected = [("b", pytest.approx(0.2, abs=1e-4)), ("a", pytest.approx(1.8, abs=1e-4))]
    assert identify(np.full((4, 2), 0.9), g, top_k=5) == expected
    with pytest.raises(ValueError, match=r"does not match the gallery's \[4, 2\]"):
        identify(np.zeros((3, 2)), g)
    with pytest.raises(ValueError, match="one probe"):
        identify(np.zeros((2, 4, 2)), g)
    with pytest.raises(ValueError, match="top_k"):
        identify(np.zeros((4, 2)), g, top_k=0)
    assert len(identify_many(np.zeros((3, 4, 2)), g, top_k=1)) == 3
    g.save(tmp_path / "g.npz")
    back = Gallery.load(tmp_path / "g.npz")
    assert back.labels == g.labels and np.array_equal(back.embeddings, g.embeddings)
    with pytest.raises(ValueError, match="missing.npz: gallery file not found"):
        Gallery.load(tmp_path / "missing.npz")


def test_export_checkpoint_and_parity(w8a8, small_store, tmp_path):
    """The workflow: a quantized model.pt -> int8 QDQ ONNX -> parity (cosine, CASIA-B rank-1 of both)."""
    from qgait.workflows.deploy import export_checkpoint, parity_check

    model, cfg = w8a8
    ckpt = save_inference_model(tmp_path / "model.pt", model, "gaitbase", ARGS, SIZE,
                                quant_config=cfg.model_dump(mode="json"))
    rep = export_checkpoint(ckpt, calib_store=small_store.path, calib_sequences=3, calib_frames=10)
    assert rep["output"] == str(tmp_path / "model.int8.onnx") and rep["kind"] == "int8-qdq"
    assert rep["requantized"] > 0 and rep["bytes"] < rep["checkpoint_bytes"]
    par = parity_check(ckpt, rep["output"], small_store, ["075", "076"], max_frames=12)
    assert par["sequences"] == 220  # 2 subjects x 10 conditions x 11 views
    assert par["cosine_mean"] >= 0.999, par
    for res in (par["torch"], par["onnx"]):
        assert set(res) == {"NM", "BG", "CL", "mean"}
    assert abs(par["rank1_delta_mean"]) <= 5.0


def test_evaluate_onnx_with_store_and_subjects(exports, small_store, capsys):
    from qgait.workflows.deploy import evaluate_onnx

    res = evaluate_onnx(exports["fp32"].path, store=small_store, subjects=["075", "076"], max_frames=8,
                        progress=False)
    assert set(res["sets"]) == {"NM", "BG", "CL"} and "NM" in capsys.readouterr().out
    with pytest.raises(ValueError, match="takes 32x22 frames"):
        evaluate_onnx(exports["fp32"].path, store=small_store, subjects=["075"], size=(64, 44), progress=False)


def test_export_checkpoint_w4a4_defaults_and_parity(w4a4, small_store, tmp_path):
    """A W4A4 model.pt at 32x22: the defaults requantize the residual convs on the calibration store (every conv
    on int8 kernels), keep the first input float and match the int32 biases; the export agrees closely with the
    fake-quant checkpoint, and exactly without requantization (requant off)."""
    from qgait.workflows.deploy import export_checkpoint, parity_check

    model, cfg = w4a4
    ckpt = save_inference_model(tmp_path / "w4.pt", model, "gaitbase", ARGS, SIZE,
                                quant_config=cfg.model_dump(mode="json"))
    rep = export_checkpoint(ckpt, calib_store=small_store.path, calib_sequences=2, calib_frames=8, pack_int4=True)
    assert rep["requantized"] == 7 and rep["packed"]["bytes"] < rep["bytes"]
    par = parity_check(ckpt, rep["packed"]["path"], small_store, ["075", "076"], max_frames=12, evaluate=False,
                       max_sequences=24)
    assert par["sequences"] == 24 and par["cosine_mean"] >= 0.98, par
    exact = export_checkpoint(ckpt, tmp_path / "w4_exact.onnx", calib_store=small_store.path, calib_sequences=2,
                              calib_frames=8, requant=False)
    assert exact["requantized"] == 0
    par_exact = parity_check(ckpt, exact["output"], small_store, ["075", "076"], max_frames=12, evaluate=False,
                             max_sequences=24)
    assert par_exact["cosine_mean"] >= 0.999 and par_exact["cosine_mean"] > par["cosine_mean"], par_exact
