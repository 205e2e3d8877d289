"""Export of a mixed-precision model (issue 15): a ``bit_map`` with 8-bit and 2- to 4-bit layers exports as one int8
QDQ graph that matches the PyTorch model, records each layer's bits, and its ``.qgpack`` packs exactly the <= 4-bit
layers (the 8-bit ones stay int8); ``qgait export --pack-int4`` does the same from a saved checkpoint.

The parity tests use the tiny GaitBase with its real BN statistics and positive BN scales, and the shared fixture's
negated BN scales (``fp_model``: a quarter of the channels). The BN fold negates the integer weights of those
channels (``qgait.export.fold``); an 8-bit weight at ``-128`` would negate to ``+128``, which int8 cannot hold (it
was clamped to 127, and the 4-bit activation grids after an 8-bit layer amplified the one-level error: cosine
0.998). 8-bit weights are therefore quantized on the narrow grid ``[-127, 127]`` (``QuantConfig.
narrow_8bit_weights``, default on), whose negation is exact: no overflow, full parity. With the option off the
clamping comes back, counted."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qgait.export import export_qdq
from qgait.export.int4 import load_packed, packable_initializers, save_packed
from qgait.export.onnx_graph import read_qgait_metadata
from qgait.runtime import GaitEmbedder

from .conftest import ARGS, SIZE, cosines, ort_run

# 8-bit layers (a residual pair tied as the search ties it, and the part FC) among 4-, 3- and 2-bit ones; the stem
# keeps its exact input (weights only)
BIT_MAP = {
    "backbone.module.0": {"weight": 8},
    "backbone.module.3.conv1": {"weight": 3, "act": 4},
    "backbone.module.4.conv2": {"weight": 8, "act": 8},
    "backbone.module.4.downsample.0": {"weight": 8, "act": 8},
    "backbone.module.5.conv1": {"weight": 2, "act": 8},
    "backbone.module.6.conv2": {"weight": 3, "act": 3},
    "fcs.fc": {"weight": 8, "act": 8},
}


@pytest.fixture(scope="module")
def plain_fp(calib):
    """The export fixtures' tiny GaitBase with real BN statistics, BN scales left positive."""
    from qgait.models import build_model

    torch.manual_seed(0)
    m = build_model("gaitbase", **ARGS).train()
    with torch.no_grad():
        for x in calib:
            m(x)
    return m.eval()


def _mixed(fp, calib):
    from qgait.quant import QuantConfig, calibrate_, quant_layers, quantize_

    m = copy.deepcopy(fp)
    cfg = QuantConfig(weight_bits=4, act_bits=4, lsq_init="mse", bit_map=BIT_MAP)
    quantize_(m, cfg)
    calibrate_(m, calib, method="percentile", max_samples=2**15)
    bits = {n: (q.weight_quantizer.bits, None if q.input_quantizer is None else q.input_quantizer.bits)
            for n, q in quant_layers(m)}
    for name, spec in BIT_MAP.items():
        assert bits[name] == (spec["weight"], spec.get("act")), name
    assert sorted({w for w, _ in bits.values()}) == [2, 3, 4, 8]  # mixed indeed
    return m.eval(), cfg, bits


@pytest.fixture(scope="module")
def mixed_model(plain_fp, calib):
    return _mixed(plain_fp, calib)


@pytest.fixture(scope="module")
def mixed_export(mixed_model, calib, tmp_path_factory):
    # requant=False: the bit-faithful graph (the default requantizes the residual convs: test below)
    return export_qdq(mixed_model[0], tmp_path_factory.mktemp("mixed") / "mixed.onnx", SIZE, calib=calib,
                      requant=False)


def test_mixed_export_records_each_layers_bits_and_matches_pytorch(mixed_model, mixed_export, probes):
    model, _, bits = mixed_model
    meta = read_qgait_metadata(onnx.load(mixed_export.path))
    rows = {r["name"]: r for r in meta["layers"] if r["quantized"]}
    assert {n: (r["weight_bits"], r.get("act_bits")) for n, r in rows.items()} == bits
    assert meta["overflow"] == 0
    assert meta["requant"] is False  # as asked: residual convs float, exact semantics
    cos = torch.cat([cosines(ort_run(mixed_export.path, x), model(x).detach()) for x in probes])
    assert float(cos.mean()) >= 0.999 and float(cos.min()) >= 0.998, cos


def test_mixed_default_export_runs_every_backbone_conv_on_int8_kernels(mixed_model, calib, probes, tmp_path):
    """The default (requant "auto"): the residual convs' outputs requantized on calibrated uint8 grids, so ONNX
    Runtime fuses every backbone conv into QLinearConv; not bit-faithful below 8 bits, but close."""
    from .test_export_onnx import _optimized_ops

    model = mixed_model[0]
    r = export_qdq(model, tmp_path / "mixed_default.onnx", SIZE, calib=calib)
    assert r.details["requant"] is True and len(r.details["requantized"]) == 7  # 4 conv2 + 3 downsample
    ops = _optimized_ops(r.path, tmp_path)
    assert ops.count("QLinearConv") == 11 + (r.details["first_input"] == "uint8")  # every conv after the stem
    cos = torch.cat([cosines(ort_run(r.path, x), model(x).detach()) for x in probes])
    assert float(cos.mean()) >= 0.98, cos


def test_mixed_qgpack_packs_only_the_low_bit_layers(mixed_model, mixed_export, probes, tmp_path):
    _, _, bits = mixed_model
    src = onnx.load(mixed_export.path)
    low = sorted(f"{n}.w_int" for n, (w, _) in bits.items() if w <= 4)
    high = sorted(f"{n}.w_int" for n, (w, _) in bits.items() if w > 4)
    assert sorted(packable_initializers(src)) == low and len(high) == 4
    info = save_packed(src, tmp_path / "mixed.qgpack")
    assert info["packed_initializers"] == len(low) and info["bytes"] < info["onnx_bytes"]
    raw = (tmp_path / "mixed.qgpack").read_bytes()
    header = json.loads(raw[16: 16 + int.from_bytes(raw[8:16], "little")])
    assert sorted(e["name"] for e in header["tensors"]) == low  # the 8-bit weights are not in the packed table
    inits = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer}
    assert all(inits[n].dtype == np.int8 and np.abs(inits[n]).max() > 8 for n in high)  # really 8-bit weights
    restored = {i.name: numpy_helper.to_array(i) for i in load_packed(tmp_path / "mixed.qgpack").graph.initializer}
    assert restored.keys() == inits.keys()
    for k, v in inits.items():
        np.testing.assert_array_equal(restored[k], v)
    a, b = GaitEmbedder(mixed_export.path), GaitEmbedder(tmp_path / "mixed.qgpack")
    np.testing.assert_array_equal(a.embed(probes[0]), b.embed(probes[0]))


def test_export_command_packs_a_mixed_checkpoint(mixed_model, small_store, tmp_path, capsys):
    from qgait.cli import main
    from qgait.engine.checkpoint import save_inference_model

    model, cfg, bits = mixed_model
    q = save_inference_model(tmp_path / "mixed.pt", model, "gaitbase", ARGS, SIZE,
                             quant_config=cfg.model_dump(mode="json"))
    rc = main([str(a) for a in ["export", q, "--pack-int4", "--calib-store", small_store.path,
                                "--calib-sequences", "2", "--calib-frames", "8", "--report", tmp_path / "r.json",
                                "--quiet"]])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["kind"] == "int8-qdq"
    assert rep["packed"]["packed_initializers"] == sum(w <= 4 for w, _ in bits.values())
    assert rep["packed"]["bytes"] < rep["bytes"]


@pytest.fixture(scope="module")
def negated_export(fp_model, calib, tmp_path_factory):
    model = _mixed(fp_model, calib)[0]
    return model, export_qdq(model, tmp_path_factory.mktemp("negated") / "mixed.onnx", SIZE, calib=calib,
                             requant=False)  # the bit-faithful graph: parity shows the negation is exact


def test_negated_bn_channels_do_not_overflow_on_the_narrow_8_bit_grid(negated_export):
    model, rep = negated_export
    from qgait.quant import quant_layers

    for _, q in quant_layers(model):
        wq = q.weight_quantizer
        assert wq.narrow == (wq.bits == 8) and (wq.q_n, wq.q_p) == ((127, 127) if wq.bits == 8 else (wq.q_n, wq.q_p))
    meta = read_qgait_metadata(onnx.load(rep.path))
    assert rep.details["overflow"] == 0 and all(r["overflow"] == 0 for r in meta["layers"] if r["quantized"])
    assert sum(r.get("negated_channels", 0) for r in meta["layers"] if r["quantized"]) > 0  # the case is exercised


def test_negated_bn_channels_mixed_parity(negated_export, probes):
    model, rep = negated_export
    cos = torch.cat([cosines(ort_run(rep.path, x), model(x).detach()) for x in probes])
    assert float(cos.mean()) >= 0.999, cos


def test_full_8_bit_grid_still_clamps_and_counts(fp_model, calib, tmp_path):
    from qgait.quant import QuantConfig, calibrate_, quantize_

    m = copy.deepcopy(fp_model)
    quantize_(m, QuantConfig(weight_bits=4, act_bits=4, lsq_init="mse", bit_map=BIT_MAP, narrow_8bit_weights=False))
    calibrate_(m, calib, method="percentile", max_samples=2**15)
    rep = export_qdq(m.eval(), tmp_path / "full.onnx", SIZE, calib=calib)
    rows = [r for r in read_qgait_metadata(onnx.load(rep.path))["layers"] if r["quantized"]]
    assert sum(r["overflow"] for r in rows) == rep.details["overflow"] > 0
    assert all(r["weight_bits"] == 8 for r in rows if r["overflow"])  # below 8 bits the negation fits int8
