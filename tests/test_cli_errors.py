"""Bad input ends in one line, loses nothing (issue 16, item 7): existing stores and files, malformed ``--set``
values, unreadable checkpoints, Ctrl-C and SIGTERM during an import."""

from __future__ import annotations

import os
import pickle
import signal

import numpy as np
import pytest

from qgait.cli import main


def _dataset(root, subjects=("001", "002"), views=("000", "090")):
    """A tiny OpenGait folder subject/condition/view/view.pkl of uint8 [4, 64, 64] frames."""
    rng = np.random.default_rng(0)
    for s in subjects:
        for v in views:
            d = root / s / "nm-01" / v
            d.mkdir(parents=True)
            (d / f"{v}.pkl").write_bytes(pickle.dumps((rng.random((4, 64, 64)) > 0.7).astype(np.uint8) * 255))
    return root


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_import_onto_an_existing_store_or_file_names_the_flag(tmp_path, capsys):
    src = _dataset(tmp_path / "src")
    dest = tmp_path / "store"
    assert main(["data", "import", str(src), str(dest), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "import", str(src), str(dest), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "--overwrite" in err and "overwrite=True" not in err
    assert main(["data", "import", str(src), str(dest), "--quiet", "--overwrite"]) == 0
    capsys.readouterr()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["data", "import", str(src), str(a_file), "--quiet"]) == 2
    assert "notes.txt" in _one_line_error(capsys) and a_file.read_text() == "mine"


def test_malformed_set_value_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndata: {store: s}\n")
    assert main(["train", str(cfg), "--set", "train.iterations=[1,"]) == 2
    assert "train.iterations=[1," in _one_line_error(capsys)


class Foo:
    """A Python object in a checkpoint: refused by the weights-only unpickler."""


def test_checkpoint_errors_do_not_quote_the_weights_only_advice(tmp_path, capsys):
    import torch

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    torch.save({"kind": "qgait-model", "obj": Foo()}, tmp_path / "obj.pt")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndata: {store: s}\n")
    for ck in (bad, tmp_path / "obj.pt"):
        assert main(["evaluate", str(cfg), "--checkpoint", str(ck)]) == 2
        err = capsys.readouterr().err
        assert f"{ck.name}: cannot load checkpoint" in err and "weights_only" not in err and "Traceback" not in err


def test_ctrl_c_during_import_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import qgait.data.store as store_mod

    src = _dataset(tmp_path / "src")
    real = store_mod.iter_sequences

    def interrupted(*args, **kwargs):
        for i, seq in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield seq

    monkeypatch.setattr(store_mod, "iter_sequences", interrupted)
    assert main(["data", "import", str(src), str(tmp_path / "store"), "--quiet"]) == 130
    assert "interrupted" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no store, no .partial-PID folder


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None),
                    reason="a SIGTERM handler is installed around the tests")
def test_sigterm_during_import_removes_the_partial_folder(tmp_path, capsys, monkeypatch):
    import qgait.data.store as store_mod

    src = _dataset(tmp_path / "src")
    real = store_mod.iter_sequences

    def killed(*args, **kwargs):
        for i, seq in enumerate(real(*args, **kwargs)):
            if i == 1:  # the partial folder holds one sequence by now
                assert any(".partial-" in p.name for p in tmp_path.iterdir())
                os.kill(os.getpid(), signal.SIGTERM)
            yield seq

    monkeypatch.setattr(store_mod, "iter_sequences", killed)
    assert main(["data", "import", str(src), str(tmp_path / "store"), "--quiet"]) == 128 + signal.SIGTERM
    assert "SIGTERM" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the import's handler is gone again


@pytest.mark.parametrize("command", ["embed", "identify"])
def test_ctrl_c_during_embed_or_identify_is_one_line(command, tmp_path, capsys, monkeypatch):
    import qgait.workflows.deploy as deploy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "collect_sequences", interrupted)
    monkeypatch.setattr(deploy, "identify_sequences", interrupted)
    seq = tmp_path / "x.npy"
    np.save(seq, np.zeros((3, 64, 44), np.uint8))
    argv = (["embed", "m.onnx", str(seq), "-o", str(tmp_path / "e.npy")] if command == "embed"
            else ["identify", "m.onnx", "--gallery", str(seq), "--probe", str(seq)])
    assert main(argv) == 130
    assert "interrupted (Ctrl-C)" in _one_line_error(capsys)
