"""Gallery files: the model's identity recorded and checked, atomic writes, corrupt files refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qgait.runtime import GaitEmbedder, Gallery
from qgait.runtime.gallery_io import GalleryFileError, load_gallery, read_identity, save_gallery
from qgait.runtime.identity import GalleryMismatchError, ModelIdentity, check_identity

from .conftest import sequences


def _gallery(model_path, n=3, seed=0):
    emb = GaitEmbedder(model_path)
    e = emb.embed_many(sequences(n, seed))
    return Gallery(e, [f"s{i}" for i in range(n)], [{"view": "090"} for _ in range(n)],
                   identity=ModelIdentity.of(emb))


def test_round_trip_keeps_entries_and_identity(tmp_path, model_a):
    g = _gallery(model_a)
    path = g.save(tmp_path / "g.npz")
    back = Gallery.load(path)
    np.testing.assert_array_equal(back.embeddings, g.embeddings)
    assert back.labels == g.labels and back.info == g.info
    assert back.identity == g.identity
    assert back.identity.input_size == (16, 11) and back.identity.embedding_shape == (8, 4)
    assert back.identity.kind == "fp32" and len(back.identity.sha256) == 64
    assert read_identity(path) == g.identity
    assert back.check(GaitEmbedder(model_a)) == "match"


def test_save_appends_npz_suffix(tmp_path, model_a):
    path = _gallery(model_a).save(tmp_path / "gallery")
    assert path.name == "gallery.npz" and path.is_file()


def test_gallery_of_another_model_is_refused_naming_both(tmp_path, model_a, model_b):
    path = _gallery(model_a).save(tmp_path / "g.npz")
    with pytest.raises(GalleryMismatchError) as err:
        Gallery.load(path, expect=GaitEmbedder(model_b))
    msg = str(err.value)
    assert "model_a.onnx" in msg and "model_b.onnx" in msg and "sha256" in msg and str(path) in msg
    assert "input_size" not in msg  # same input size: only the bytes differ
    with pytest.raises(GalleryMismatchError, match="model_b.onnx"):
        Gallery.load(path).check(GaitEmbedder(model_b))


def test_gallery_of_another_input_size_is_refused(tmp_path, model_a, model_big):
    path = _gallery(model_a).save(tmp_path / "g.npz")
    with pytest.raises(GalleryMismatchError) as err:
        load_gallery(path, expect=GaitEmbedder(model_big))
    msg = str(err.value)
    assert "input_size" in msg and "16x11" in msg and "32x22" in msg


def test_identity_differences_field_by_field():
    a = ModelIdentity("a" * 64, "fp32", (16, 11), (8, 4), "a.onnx")
    assert check_identity(a, ModelIdentity("a" * 64, "fp32", (16, 11), None, "renamed.onnx")) == "match"
    assert a.differences(ModelIdentity("a" * 64, "fp32", (32, 22), (8, 4))) == ["input_size"]
    assert a.differences(ModelIdentity("a" * 64, "int8-qdq", (16, 11), (8, 4))) == ["kind"]
    assert a.differences(ModelIdentity("a" * 64, "fp32", (16, 11), (16, 4))) == ["embedding_shape"]
    assert check_identity(None, a) == "unknown"
    assert ModelIdentity.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(ValueError, match="sha256"):
        ModelIdentity("xyz", "fp32", (16, 11))
    with pytest.raises(ValueError, match="input_size"):
        ModelIdentity("a" * 64, "fp32", (0, 11))


def test_gallery_rejects_identity_of_another_embedding_shape():
    ident = ModelIdentity("a" * 64, "fp32", (16, 11), (8, 4))
    with pytest.raises(ValueError, match=r"\[8, 4\]"):
        Gallery(np.zeros((2, 16, 4), np.float32), ["a", "b"], identity=ident)
    with pytest.raises(ValueError, match="ModelIdentity"):
        Gallery(np.zeros((2, 8, 4), np.float32), ["a", "b"], identity={"sha256": "a" * 64})


def test_old_gallery_without_identity_loads_as_unknown(tmp_path, model_a, recwarn):
    path = tmp_path / "old.npz"  # the format written before identities were recorded
    np.savez(path, embeddings=np.ones((2, 8, 4), np.float32), labels=np.array(["a", "b"]),
             info=np.array(json.dumps([])))
    g = Gallery.load(path, expect=GaitEmbedder(model_a))
    assert g.identity is None and g.labels == ["a", "b"]
    assert g.check(GaitEmbedder(model_a)) == "unknown"
    assert read_identity(path) is None
    assert len(recwarn) == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage", "npy", "missing_key", "label_count", "nan",
                                    "bad_identity", "future_format", "info_json"])
def test_corrupt_gallery_files_are_refused_naming_the_file(tmp_path, model_a, damage):
    path = tmp_path / f"{damage}.npz"
    good = _gallery(model_a).save(tmp_path / "good.npz")
    arrays = dict(np.load(good, allow_pickle=False))
    if damage == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a zip file at all" * 10)
    elif damage == "npy":
        np.save(tmp_path / "x.npy", np.zeros(3))
        (tmp_path / "x.npy").rename(path)
    else:
        if damage == "missing_key":
            del arrays["labels"]
        elif damage == "label_count":
            arrays["labels"] = arrays["labels"][:2]
        elif damage == "nan":
            arrays["embeddings"][0, 0, 0] = np.nan
        elif damage == "bad_identity":
            arrays["identity"] = np.array('{"sha256": "zz"}')
        elif damage == "future_format":
            arrays["format"] = np.array("qgait-gallery/99")
        elif damage == "info_json":
            arrays["info"] = np.array("[{not json")
        np.savez(path, **arrays)
    with pytest.raises(GalleryFileError) as err:
        load_gallery(path)
    assert str(path) in str(err.value)


def test_missing_gallery_file_is_named(tmp_path):
    with pytest.raises(GalleryFileError, match="not found"):
        Gallery.load(tmp_path / "nope.npz")


def test_failed_write_leaves_the_old_file_intact(tmp_path, model_a, monkeypatch):
    import qgait.runtime.gallery_io as gio

    old = _gallery(model_a, n=2)
    path = old.save(tmp_path / "out" / "g.npz")
    before = path.read_bytes()
    new = _gallery(model_a, n=4, seed=5)

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the writer dies
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gio.np, "savez", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert Gallery.load(path).labels == old.labels
    assert [p.name for p in path.parent.iterdir()] == ["g.npz"]  # no temporary file left behind


def test_interrupted_write_leaves_the_old_file_intact(tmp_path, model_a, monkeypatch):
    import qgait.atomic as atomic

    path = _gallery(model_a, n=2).save(tmp_path / "out" / "g.npz")
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt  # Ctrl-C between writing the temporary file and renaming it

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_gallery(_gallery(model_a, n=4, seed=5), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["g.npz"]
