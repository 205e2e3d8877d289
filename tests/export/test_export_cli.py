"""``qgait export / embed / identify`` through the deployment parser, on real CASIA-B sequences.

The identification test uses a deterministic GEI-like embedder (mean over frames, then 4x4 average pooling into
16 horizontal parts of 11 values) exported to ONNX: it ranks the true subject first on real CASIA-B data, so the
test exercises the runtime path (export, ONNX Runtime, gallery, part distance, ranking) without depending on a
trained model.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qgait.cli_deploy import build_deploy_parser, main
from qgait.engine.checkpoint import save_inference_model

from .conftest import ARGS, SIZE

GALLERY = ["--gallery-subjects", "075,076", "--gallery-conditions", "nm-01,nm-02,nm-03,nm-04",
           "--gallery-views", "090"]


class GEI(nn.Module):
    """Gait energy image per part: ``[n, T, 64, 44] -> mean over T -> 4x4 average pool -> [n, 11, 16]``."""

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        g = F.avg_pool2d(silhouettes.mean(dim=1, keepdim=True), 4)  # [n, 1, 16, 11]
        return g.squeeze(1).transpose(1, 2)  # [n, c=11, p=16]


@pytest.fixture(scope="module")
def gei_onnx(tmp_path_factory):
    from qgait.export import export_onnx

    path = tmp_path_factory.mktemp("gei") / "gei.onnx"
    export_onnx(GEI(), path, (64, 44))
    return path


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_identify_ranks_true_subject_first(gei_onnx, small_store, tmp_path, capsys):
    rc, out, err = _run(["identify", gei_onnx, "--gallery", small_store.path, *GALLERY,
                         "--probe", small_store.path, "--probe-subjects", "075", "--probe-conditions", "nm-05",
                         "--probe-views", "090", "--top-k", "2", "--json", "--quiet",
                         "--save-gallery", tmp_path / "gallery.npz"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert len(res) == 1 and res[0]["probe"]["subject"] == "075"
    top = res[0]["top"]
    assert [t[0] for t in top] == ["075", "076"] and top[0][1] < top[1][1]

    # the same probe as an OpenGait .pkl file, against the saved gallery; text output
    seq = np.array(small_store.frames(small_store.select(["076"], ["nm-05"], ["090"])[0]))
    pkl = tmp_path / "076" / "nm-05" / "090" / "076-nm-05-090.pkl"
    pkl.parent.mkdir(parents=True)
    pkl.write_bytes(pickle.dumps(seq))
    rc, out, err = _run(["identify", gei_onnx, "--gallery", tmp_path / "gallery.npz", "--probe", pkl,
                         "--top-k", "1", "--quiet"], capsys)
    assert rc == 0, err
    assert "(subject 076)" in out and "1. 076  distance" in out


def test_embed_command(gei_onnx, small_store, tmp_path, capsys):
    out_path = tmp_path / "emb.npy"
    rc, out, err = _run(["embed", gei_onnx, "--store", small_store.path, "--subjects", "075", "--conditions",
                         "nm-01", "--views", "000,090", "-o", out_path, "--quiet"], capsys)
    assert rc == 0, err
    emb = np.load(out_path)
    keys = json.loads(out_path.with_suffix(".json").read_text())
    assert emb.shape == (2, 11, 16) and [k["view"] for k in keys] == ["000", "090"]


def test_export_command_fp_and_packed_int4(fp_model, w4a4, small_store, tmp_path, capsys):
    fp = save_inference_model(tmp_path / "fp.pt", fp_model, "gaitbase", ARGS, SIZE)
    rc, out, err = _run(["export", fp, "--format", "onnx"], capsys)
    assert rc == 0, err
    assert (tmp_path / "fp.onnx").is_file() and "fp32" in out

    model, cfg = w4a4
    q = save_inference_model(tmp_path / "w4.pt", model, "gaitbase", ARGS, SIZE,
                             quant_config=cfg.model_dump(mode="json"))
    rc, out, err = _run(["export", q, "--pack-int4", "--calib-store", small_store.path, "--calib-sequences", "2",
                         "--calib-frames", "8", "--report", tmp_path / "new" / "report.json", "--quiet"], capsys)
    assert rc == 0, err  # the report's folder is created (before the export, not after a long parity run)
    rep = json.loads((tmp_path / "new" / "report.json").read_text())
    assert rep["kind"] == "int8-qdq" and rep["packed"]["bytes"] < rep["bytes"] < rep["checkpoint_bytes"]
    assert (tmp_path / "w4.int8.qgpack").is_file()


def test_cli_errors_name_the_problem(gei_onnx, small_store, tmp_path, capsys):
    rc, _, err = _run(["identify", tmp_path / "missing.onnx", "--gallery", small_store.path, "--probe",
                       small_store.path], capsys)
    assert rc == 2 and "missing.onnx: model file not found" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc, _, err = _run(["export", bad], capsys)
    assert rc == 2 and "bad.pt: cannot load checkpoint" in err
    rc, _, err = _run(["export", bad, "--parity-store", small_store.path], capsys)  # refused before loading
    assert rc == 2 and "needs --parity-subjects" in err
    rc, _, err = _run(["identify", gei_onnx, "--gallery", small_store.path, "--gallery-subjects", "999",
                       "--probe", small_store.path, "--quiet"], capsys)
    assert rc == 2 and "no subject 999 (they hold 001, 002, 003, 075, 076)" in err  # refused as import refuses
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 32, 32), np.uint8))
    rc, _, err = _run(["embed", gei_onnx, wrong, "-o", tmp_path / "e.npy", "--quiet"], capsys)
    assert rc == 2 and "wrong.npy" in err


def test_every_option_has_help():
    parser = build_deploy_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == {"export", "embed", "identify", "bench"}
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help text"


class MaxGEI(nn.Module):
    """A streamable GEI: 4x4 average pooling per frame, then a max over frames (GaitBase's temporal pooling)."""

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        g = F.avg_pool2d(silhouettes, 4).amax(dim=1)  # [n, 16, 11]
        return g.transpose(1, 2)  # [n, c=11, p=16]


def test_identify_stream_ends_where_whole_sequence_identification_does(small_store, tmp_path, capsys):
    from qgait.export import export_onnx

    model = export_onnx(MaxGEI(), tmp_path / "maxgei.onnx", (64, 44)).path
    probe = ["--probe", small_store.path, "--probe-subjects", "075,076", "--probe-conditions", "nm-05",
             "--probe-views", "090"]
    rc, out, err = _run(["identify", model, "--gallery", small_store.path, *GALLERY, *probe, "--top-k", "2",
                         "--json", "--quiet"], capsys)
    assert rc == 0, err
    whole = json.loads(out)
    rc, out, err = _run(["identify", model, "--gallery", small_store.path, *GALLERY, *probe, "--stream",
                         "--every", "7", "--firm-after", "2", "--json", "--quiet"], capsys)
    assert rc == 0, err
    streamed = json.loads(out)
    assert len(streamed) == len(whole) == 2
    for s, w in zip(streamed, whole):
        n = s["updates"][-1]["frames"]
        assert len(s["updates"]) == -(-n // 7)  # one decision every 7 frames and one at the last frame
        assert [u["frames"] for u in s["updates"]][:2] == [7, 14]
        # the last decision is the whole sequence's: same label, same distance (float tolerance)
        assert s["final"]["label"] == w["top"][0][0]
        assert s["final"]["distance"] == pytest.approx(w["top"][0][1], rel=1e-5)
        assert s["final"]["margin"] == pytest.approx(w["top"][1][1] - w["top"][0][1], rel=1e-4, abs=1e-6)
        labels = [u["label"] for u in s["updates"]]
        firm_ok = len(labels) >= 2 and labels[-1] == labels[-2]
        assert (s["firm_at"] is not None) == firm_ok
    # text output: a line per decision, and a model that cannot be streamed is refused in one line
    rc, out, err = _run(["identify", model, "--gallery", small_store.path, *GALLERY, *probe[:2],
                         "--probe-subjects", "075", "--probe-conditions", "nm-05", "--probe-views", "090",
                         "--stream", "--every", "10", "--quiet"], capsys)
    assert rc == 0, err
    assert "frame by frame" in out and "  10 frames: " in out
    gei = export_onnx(GEI(), tmp_path / "gei.onnx", (64, 44)).path
    rc, out, err = _run(["identify", gei, "--gallery", small_store.path, *GALLERY, *probe, "--stream", "--quiet"],
                        capsys)
    assert rc == 2 and "max over the frame axis" in err
