"""Enrollment: create or append, refuse another model's gallery before embedding, and the ``qgait enroll`` CLI."""

from __future__ import annotations

import numpy as np
import pytest

from qgait.cli_gallery import build_gallery_parser, main
from qgait.runtime import GaitEmbedder, Gallery
from qgait.runtime.gallery import enroll, enroll_embeddings
from qgait.runtime.identity import GalleryMismatchError, ModelIdentity

from .conftest import sequences


def test_enroll_creates_then_appends(tmp_path, model_a):
    emb = GaitEmbedder(model_a)
    first, second = sequences(2, seed=0), sequences(3, seed=1)
    r1 = enroll(tmp_path / "g.npz", emb, first, ["001", "002"], [{"view": "000"}, {"view": "018"}])
    assert r1.created and r1.added == 2 and len(r1.gallery) == 2
    r2 = enroll(tmp_path / "g.npz", emb, second, "003")
    assert not r2.created and r2.added == 3
    g = Gallery.load(tmp_path / "g.npz", expect=emb)
    assert g.labels == ["001", "002", "003", "003", "003"]
    assert g.info == [{"view": "000"}, {"view": "018"}, {}, {}, {}]
    np.testing.assert_allclose(g.embeddings, np.concatenate([emb.embed_many(first), emb.embed_many(second)]))
    assert g.identity == ModelIdentity.of(emb)


def test_enroll_refuses_another_models_gallery_before_embedding(tmp_path, model_a, model_b, monkeypatch):
    path = enroll(tmp_path / "g.npz", GaitEmbedder(model_a), sequences(2), ["a", "b"]).path
    before = path.read_bytes()
    other = GaitEmbedder(model_b)
    calls = []
    monkeypatch.setattr(other, "embed_many", lambda seqs: calls.append(1))
    with pytest.raises(GalleryMismatchError, match="model_a.onnx.*model_b.onnx"):
        enroll(path, other, sequences(1), "c")
    assert calls == [] and path.read_bytes() == before


def test_enroll_into_gallery_without_identity_needs_adopt(tmp_path, model_a):
    path = tmp_path / "old.npz"
    emb = GaitEmbedder(model_a)
    np.savez(path, embeddings=emb.embed_many(sequences(2)), labels=np.array(["a", "b"]), info=np.array("[]"))
    with pytest.raises(GalleryMismatchError, match="records no model identity"):
        enroll(path, emb, sequences(1, seed=3), "c")
    r = enroll(path, emb, sequences(1, seed=3), "c", adopt_unknown=True)
    assert r.gallery.labels == ["a", "b", "c"] and Gallery.load(path).identity == ModelIdentity.of(emb)


def test_enroll_bad_input(tmp_path, model_a):
    emb = GaitEmbedder(model_a)
    ident = ModelIdentity.of(emb)
    with pytest.raises(ValueError, match="2 embeddings to enroll but 3 labels"):
        enroll(tmp_path / "g.npz", emb, sequences(2), ["a", "b", "c"])
    with pytest.raises(ValueError, match="no sequences"):
        enroll(tmp_path / "g.npz", emb, [], "a")
    with pytest.raises(ValueError, match=r"\[k, c, p\]"):
        enroll_embeddings(tmp_path / "g.npz", ident, np.zeros((0, 8, 4)), [])
    with pytest.raises(ValueError, match="NaN"):
        enroll_embeddings(tmp_path / "g.npz", ident, np.full((1, 8, 4), np.nan), "a")
    with pytest.raises(ValueError, match="info must be 1 dicts"):
        enroll_embeddings(tmp_path / "g.npz", ident, np.zeros((1, 8, 4)), "a", info=[{}, {}])
    with pytest.raises(GalleryMismatchError, match=r"\[16, 4\]"):  # the model gives [8, 4]
        enroll_embeddings(tmp_path / "g.npz", ident, np.zeros((1, 16, 4)), "a")
    assert not (tmp_path / "g.npz").exists()


def _opengait_folder(root, subjects=("001", "002"), seed=0):
    for k, s in enumerate(subjects):
        for j, view in enumerate(("000", "090")):
            d = root / s / "nm-01" / view
            d.mkdir(parents=True)
            np.save(d / f"{view}.npy", sequences(1, seed=seed + 10 * k + j)[0])  # OpenGait names the file by view
    return root


def test_cli_enroll_twice_and_refuse_other_model(tmp_path, model_a, model_b, capsys):
    data = _opengait_folder(tmp_path / "data")
    gal = tmp_path / "g.npz"
    files = sorted(str(p) for p in data.rglob("*.npy"))
    assert main(["enroll", str(gal), *files[:2], "--model", str(model_a), "--quiet"]) == 0
    assert main(["enroll", str(gal), *files[2:], "--model", str(model_a), "--quiet"]) == 0
    g = Gallery.load(gal)
    assert g.labels == ["001", "001", "002", "002"]
    assert [d["view"] for d in g.info] == ["000", "090", "000", "090"]
    assert "now 4 entries of 2 subjects" in capsys.readouterr().out
    assert main(["enroll", str(gal), files[0], "--model", str(model_b), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qgait: error:") and "model_a.onnx" in err and "model_b.onnx" in err
    assert len(Gallery.load(gal)) == 4


def test_cli_enroll_label_and_unlabeled(tmp_path, model_a, capsys):
    loose = tmp_path / "probe.npy"
    np.save(loose, sequences(1)[0])
    gal = tmp_path / "g.npz"
    assert main(["enroll", str(gal), str(loose), "--model", str(model_a), "--quiet"]) == 2
    assert "--label" in capsys.readouterr().err
    assert main(["enroll", str(gal), str(loose), "--model", str(model_a), "--label", "guest", "--quiet"]) == 0
    assert Gallery.load(gal).labels == ["guest"]
    assert main(["enroll", str(gal), "--model", str(model_a)]) == 2
    assert "--store" in capsys.readouterr().err
    assert main(["enroll", str(gal), str(loose), "--model", str(model_a), "--max-frames", "0"]) == 2


def test_cli_gallery_info(tmp_path, model_a, model_big, capsys):
    gal = tmp_path / "g.npz"
    enroll(gal, GaitEmbedder(model_a), sequences(2), ["a", "b"])
    assert main(["gallery-info", str(gal), "--model", str(model_a)]) == 0
    out = capsys.readouterr().out
    assert "2 entries of 2 subjects" in out and "match" in out and "model_a.onnx" in out
    assert main(["gallery-info", str(gal), "--model", str(model_big)]) == 2
    assert "input_size" in capsys.readouterr().err


def test_parser_has_both_commands():
    p = build_gallery_parser()
    a = p.parse_args(["enroll", "g.npz", "x.npy", "--model", "m.onnx", "--subjects", "001,002"])
    assert a.command == "enroll" and a.subjects == "001,002" and a.func.__name__ == "_cmd_enroll"
    assert p.parse_args(["gallery-info", "g.npz"]).func.__name__ == "_cmd_gallery_info"


def test_cli_enroll_silhouette_check(tmp_path, model_a, capsys):
    noise = tmp_path / "noise.npy"  # random dots: refused as not a silhouette unless the check is turned off
    np.save(noise, (np.random.default_rng(0).random((5, 64, 44)) > 0.5).astype(np.uint8) * 255)
    gal = tmp_path / "g.npz"
    assert main(["enroll", str(gal), str(noise), "--model", str(model_a), "--label", "x", "--quiet"]) == 2
    assert "silhouette" in capsys.readouterr().err and not gal.exists()
    assert main(["enroll", str(gal), str(noise), "--model", str(model_a), "--label", "x", "--quiet",
                 "--no-silhouette-check"]) == 0
    assert Gallery.load(gal).labels == ["x"]
