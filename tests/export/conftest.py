"""Shared fixtures of the deployment tests: a tiny GaitBase (width 0.125, 32x22) in FP and quantized (W8A8, W4A4
via ``quantize_`` + ``calibrate_`` on real CASIA-B frames from ``small_store``), and their exports (built once)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

SIZE = (32, 22)
ARGS = {"width": 0.125, "strides": [1, 2, 2, 1], "bins": [8], "embed_dim": 32}


def real_batches(store, subjects, size=SIZE, n=4, frames=12, conditions=None, seed=0) -> list[torch.Tensor]:
    """``n`` real sequences ``[1, frames, h, w]`` of ``subjects`` (consecutive frames from random starts)."""
    from qgait.export.ort_ptq import store_calibration_batches

    return store_calibration_batches(store, subjects, size, sequences=n, frames=frames, seed=seed,
                                     conditions=conditions)


@pytest.fixture(scope="session")
def calib(small_store) -> list[torch.Tensor]:
    """Calibration batches from the training subjects 001-003."""
    return real_batches(small_store, ["001", "002", "003"], n=4, frames=12)


@pytest.fixture(scope="session")
def probes(small_store) -> list[torch.Tensor]:
    """Real test-subject sequences (075, 076) of two different lengths, and one batch of 2."""
    a = real_batches(small_store, ["075", "076"], n=2, frames=9, seed=1)
    b = real_batches(small_store, ["075", "076"], n=2, frames=17, seed=2)
    return [a[0], b[0], torch.cat([a[0], a[1]])]


@pytest.fixture(scope="session")
def fp_model(calib) -> nn.Module:
    """A tiny GaitBase with real batch-norm statistics and some negative BN scales (to exercise the sign flip)."""
    from qgait.models import build_model

    torch.manual_seed(0)
    m = build_model("gaitbase", **ARGS)
    m.train()
    with torch.no_grad():
        for x in calib:
            m(x)
        g = torch.Generator().manual_seed(3)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                flip = torch.rand(mod.weight.shape, generator=g) < 0.25
                mod.weight.mul_(torch.where(flip, -1.0, 1.0))
                mod.bias.add_(0.05 * torch.randn(mod.bias.shape, generator=g))
    return m.eval()


def _quantized(fp_model, calib, bits):
    from qgait.quant import QuantConfig, calibrate_, quantize_

    m = copy.deepcopy(fp_model)
    cfg = QuantConfig(weight_bits=bits, act_bits=bits, lsq_init="mse")
    quantize_(m, cfg)
    calibrate_(m, calib, method="percentile", max_samples=2**15)  # fast; "mse" takes ~1 min on 2 cores
    return m.eval(), cfg


@pytest.fixture(scope="session")
def w8a8(fp_model, calib):
    return _quantized(fp_model, calib, 8)


@pytest.fixture(scope="session")
def w4a4(fp_model, calib):
    return _quantized(fp_model, calib, 4)


@pytest.fixture(scope="session")
def exports(tmp_path_factory, fp_model, w8a8, w4a4, calib) -> dict:
    """The exported files: FP32 ONNX, W8A8 QDQ (residual convs requantized, the default) and W4A4 QDQ without
    requantization (``requant=False``: the bit-faithful graph the exactness tests check; the W4A4 default is
    tested on its own), with their reports."""
    from qgait.export import export_onnx, export_qdq

    d = tmp_path_factory.mktemp("exports")
    return {
        "fp32": export_onnx(fp_model, d / "fp32.onnx", SIZE),
        "w8a8": export_qdq(w8a8[0], d / "w8a8.onnx", SIZE, calib=calib),
        "w4a4": export_qdq(w4a4[0], d / "w4a4.onnx", SIZE, calib=calib, requant=False),
    }


def ort_run(path, x) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"silhouettes": x.numpy()})[0]


def cosines(a, b) -> torch.Tensor:
    a, b = torch.as_tensor(a).flatten(1).double(), torch.as_tensor(b).flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1)
