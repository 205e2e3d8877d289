"""``qgait export / embed / identify`` on bad input and user data (issue 16, items 5 and 7): outputs never replace an
input or an existing file unless ``--overwrite`` and are written atomically; image frames point to ``qgait data
pretreat``; empty, noisy, grey or colour probes are refused with the reason; labels not given by the data are
unknown; unknown ids are refused; the ONNX export prints no "torchvision is not installed" noise."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from qgait.cli_deploy import main
from qgait.data.plausible import silhouette_problem
from qgait.engine.checkpoint import save_inference_model

from .conftest import ARGS, SIZE
from .test_export_cli import GALLERY, gei_onnx  # noqa: F401  (the GEI model fixture)


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _no_partials(folder):
    return not [p for p in folder.rglob("*") if ".qgait-partial-" in p.name]


def test_export_never_overwrites_its_input_nor_an_existing_file(fp_model, tmp_path, capsys):
    ck = save_inference_model(tmp_path / "m.pt", fp_model, "gaitbase", ARGS, SIZE)
    before = ck.read_bytes()
    rc, _, err = _run(["export", ck, "--output", ck], capsys)
    assert rc == 2 and "m.pt: this is an input" in err and ck.read_bytes() == before
    rc, _, err = _run(["export", ck, "--output", ck, "--overwrite"], capsys)  # not even when asked
    assert rc == 2 and ck.read_bytes() == before

    rc, out, err = _run(["export", ck], capsys)
    assert rc == 0, err
    onnx_path = tmp_path / "m.onnx"
    first = onnx_path.read_bytes()
    rc, _, err = _run(["export", ck], capsys)  # the default output exists now
    assert rc == 2 and "m.onnx: exists; add --overwrite" in err and onnx_path.read_bytes() == first
    rc, _, err = _run(["export", ck, "--overwrite", "--report", tmp_path / "r.json"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["export", ck, "--overwrite", "--report", ck], capsys)  # the report is an output too
    assert rc == 2 and "this is an input" in err and ck.read_bytes() == before

    folder = tmp_path / "out"
    folder.mkdir()
    rc, out, err = _run(["export", ck, "--output", folder], capsys)  # a folder: the default name inside
    assert rc == 0 and (folder / "m.onnx").is_file() and "Traceback" not in err
    assert _no_partials(tmp_path)


def test_export_prints_no_torchvision_noise(fp_model, tmp_path, monkeypatch):
    import qgait.export.onnx_export as onnx_export

    class Seen(logging.Handler):  # on the exporter's logger itself: torch's handler does not propagate to root
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    reg = logging.getLogger("torch.onnx._internal.exporter._registration")
    seen = Seen()
    reg.addHandler(seen)
    try:
        onnx_export.export_onnx(fp_model, tmp_path / "m.onnx", SIZE)
        assert not [m for m in seen.messages if "torchvision" in m]
        assert not reg.filters  # the filter lives only during the export
        with monkeypatch.context() as m:  # control: without the filter the exporter says it, once per op
            m.setattr(onnx_export._DropRegistryNoise, "filter", lambda self, record: True)
            onnx_export.export_onnx(fp_model, tmp_path / "m2.onnx", SIZE)
        assert [m for m in seen.messages if "torchvision is not installed" in m]
    finally:
        reg.removeHandler(seen)


def test_embed_never_replaces_its_input(gei_onnx, small_store, tmp_path, capsys):  # noqa: F811
    seq = tmp_path / "x.npy"
    frames = np.array(small_store.frames(small_store.select(["075"], ["nm-01"], ["090"])[0]))
    np.save(seq, frames)
    rc, _, err = _run(["embed", gei_onnx, seq, "-o", seq, "--quiet"], capsys)
    assert rc == 2 and "this is an input" in err and np.array_equal(np.load(seq), frames)
    out = tmp_path / "e.npy"
    rc, _, err = _run(["embed", gei_onnx, seq, "-o", out, "--quiet"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["embed", gei_onnx, seq, "-o", out, "--quiet"], capsys)
    assert rc == 2 and "e.npy: exists; add --overwrite" in err
    rc, _, err = _run(["embed", gei_onnx, seq, "-o", out, "--quiet", "--overwrite"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["embed", gei_onnx, seq, "-o", tmp_path / "e.txt", "--quiet"], capsys)
    assert rc == 2 and ".npy file" in err
    assert _no_partials(tmp_path)


def test_silhouette_check_accepts_real_frames_and_names_what_is_wrong(small_store):
    for i in range(0, len(small_store), 97):
        assert silhouette_problem(np.asarray(small_store.frames(i))) is None
    rng = np.random.default_rng(0)
    real = np.asarray(small_store.frames(0))
    assert "empty" in silhouette_problem(np.zeros((20, 64, 44), np.uint8))
    assert "0/1" in silhouette_problem((real >= 128).astype(np.uint8))
    assert "grey" in silhouette_problem(rng.integers(0, 256, (20, 64, 44), dtype=np.uint8))
    assert "noise-like" in silhouette_problem(((rng.random((20, 64, 44)) > 0.5) * 255).astype(np.uint8))
    assert "inverted" in silhouette_problem(255 - real)


def test_identify_on_user_data(gei_onnx, small_store, tmp_path, capsys):  # noqa: F811
    gallery = ["--gallery", small_store.path, *GALLERY]
    png = tmp_path / "frames" / "001" / "nm-01" / "090" / "0001.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    for probe in (png, tmp_path / "frames"):
        rc, _, err = _run(["identify", gei_onnx, *gallery, "--probe", probe, "--quiet"], capsys)
        assert rc == 2 and "qgait data pretreat" in err, err

    rng = np.random.default_rng(0)
    bad = {"black.npy": np.zeros((10, 64, 44), np.uint8),
           "noise.npy": rng.integers(0, 256, (10, 64, 44), dtype=np.uint8),
           "rgb.npy": rng.integers(0, 256, (10, 64, 44, 3), dtype=np.uint8)}
    for name, arr in bad.items():
        np.save(tmp_path / name, arr)
        rc, _, err = _run(["identify", gei_onnx, *gallery, "--probe", tmp_path / name, "--quiet"], capsys)
        assert rc == 2 and name in err and ("silhouette" in err or "colour" in err), err
    rc, out, err = _run(["identify", gei_onnx, *gallery, "--probe", tmp_path / "black.npy", "--quiet",
                         "--no-silhouette-check"], capsys)
    assert rc == 0, err  # the user's call

    # a real sequence as .npy in the user's own folders: its labels are unknown, not made up from the path
    seq = tmp_path / "walks" / "today" / "cam1" / "x.npy"
    seq.parent.mkdir(parents=True)
    np.save(seq, np.array(small_store.frames(small_store.select(["076"], ["nm-05"], ["090"])[0])))
    rc, out, err = _run(["identify", gei_onnx, *gallery, "--probe", seq, "--quiet"], capsys)
    assert rc == 0, err
    assert "(subject unknown)" in out and "walks" not in out.split(":")[0].split("(")[1]
    rc, out, err = _run(["identify", gei_onnx, *gallery, "--probe", seq, "--quiet", "--json"], capsys)
    import json

    assert json.loads(out)[0]["probe"]["subject"] is None

    # unknown ids are refused, with the list of unknown ones
    rc, _, err = _run(["identify", gei_onnx, "--gallery", small_store.path, "--gallery-subjects", "075,998,999",
                       "--probe", seq, "--quiet"], capsys)
    assert rc == 2 and "no subject 998, 999" in err
    rc, _, err = _run(["identify", gei_onnx, *gallery, "--probe", small_store.path, "--probe-views", "091",
                       "--quiet"], capsys)
    assert rc == 2 and "no view 091" in err

    # --save-gallery: never an input, an existing file only with --overwrite
    saved = tmp_path / "g.npz"
    rc, _, err = _run(["identify", gei_onnx, *gallery, "--probe", seq, "--quiet", "--save-gallery", saved], capsys)
    assert rc == 0 and saved.is_file(), err
    rc, _, err = _run(["identify", gei_onnx, *gallery, "--probe", seq, "--quiet", "--save-gallery", saved], capsys)
    assert rc == 2 and "--overwrite" in err
    rc, _, err = _run(["identify", gei_onnx, "--gallery", saved, "--probe", seq, "--quiet", "--save-gallery",
                       saved, "--overwrite"], capsys)
    assert rc == 2 and "this is an input" in err
    rc, _, err = _run(["identify", gei_onnx, "--gallery", saved, "--gallery-subjects", "074", "--probe", seq,
                       "--quiet"], capsys)
    assert rc == 2 and "no subject 074" in err
    assert _no_partials(tmp_path)


@pytest.mark.parametrize("ids", ["075,999"])
def test_export_refuses_unknown_parity_and_calibration_subjects(fp_model, small_store, tmp_path, capsys, ids):
    ck = save_inference_model(tmp_path / "m.pt", fp_model, "gaitbase", ARGS, SIZE)
    rc, _, err = _run(["export", ck, "--parity-store", small_store.path, "--parity-subjects", ids], capsys)
    assert rc == 2 and "no subject 999" in err and not (tmp_path / "m.onnx").exists()
    rc, _, err = _run(["export", ck, "--int8", "--calib-store", small_store.path, "--calib-subjects", ids], capsys)
    assert rc == 2 and "no subject 999" in err and not (tmp_path / "m.int8.onnx").exists()
