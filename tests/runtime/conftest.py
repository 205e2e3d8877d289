"""Fixtures of the gallery tests: tiny hand-built ONNX "gait models" (mean over frames, one matrix product) that
``GaitEmbedder`` accepts, built in milliseconds, and clustered synthetic embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

C, P = 8, 4  # embedding [c, p] of the tiny models


def make_model(path: Path, size: tuple[int, int] = (16, 11), seed: int = 0, kind: str = "fp32",
               shape: tuple[int, int] = (C, P)) -> Path:
    """An ONNX model ``float [n, T, h, w] -> [n, c, p]``: mean over frames, flatten, random linear map."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = size
    c, p = shape
    wmat = np.random.default_rng(seed).standard_normal((h * w, c * p)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["sils"], ["avg"], axes=[1], keepdims=0),
        helper.make_node("Flatten", ["avg"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Reshape", ["mm", "shape"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_gait",
        [helper.make_tensor_value_info("sils", TensorProto.FLOAT, ["n", "T", h, w])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", c, p])],
        [numpy_helper.from_array(wmat, "W"), numpy_helper.from_array(np.array([-1, c, p], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"qgait": json.dumps({"kind": kind})})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model_a(tmp_path) -> Path:
    return make_model(tmp_path / "models" / "model_a.onnx", seed=0)


@pytest.fixture
def model_b(tmp_path) -> Path:
    """Same architecture and input size as ``model_a``, other weights."""
    return make_model(tmp_path / "models" / "model_b.onnx", seed=1)


@pytest.fixture
def model_big(tmp_path) -> Path:
    """Same weights seed as ``model_a`` but input size 32x22."""
    return make_model(tmp_path / "models" / "model_big.onnx", size=(32, 22), seed=0)


def sequences(n: int, seed: int = 0, frames: int = 6) -> list[np.ndarray]:
    """``n`` raw uint8 silhouette-like sequences ``[T, 64, 44]``: a filled ellipse ("body", ~20% of the frame, 0 /
    255 like real silhouettes) of random size and position per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:44]
    out = []
    for _ in range(n):
        f = np.zeros((frames, 64, 44), np.uint8)
        for t in range(frames):
            cy, cx = rng.uniform(28, 36), rng.uniform(16, 28)
            ry, rx = rng.uniform(22, 30), rng.uniform(5, 10)
            f[t][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 255
        out.append(f)
    return out


def clustered(subjects: int, per_subject: int, shape=(16, 4), seed: int = 0, spread: float = 0.35):
    """Gallery embeddings ``[subjects * per_subject, c, p]`` as Gaussian clusters (centers of part norm ~6),
    their labels, and one fresh probe per subject ``[subjects, c, p]`` with its label."""
    rng = np.random.default_rng(seed)
    c, p = shape
    centers = rng.standard_normal((subjects, c, p)) * (6 / np.sqrt(c))
    noise = spread * 6 / np.sqrt(c)
    gal = centers[:, None] + noise * rng.standard_normal((subjects, per_subject, c, p))
    probes = centers + noise * rng.standard_normal((subjects, c, p))
    labels = [f"s{i:04d}" for i in range(subjects) for _ in range(per_subject)]
    return (gal.reshape(-1, c, p).astype(np.float32), labels, probes.astype(np.float32),
            [f"s{i:04d}" for i in range(subjects)])
