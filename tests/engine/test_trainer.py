"""Training loop: exact resume after a checkpoint or an interruption, atomic checkpoints."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from qgait.engine.checkpoint import CheckpointError, load_checkpoint, save_atomic
from qgait.engine.distributed import DistContext
from qgait.engine.schedule import lr_at
from qgait.engine.trainer import Trainer, TrainingInterrupted
from qgait.losses import LossSum, PartCrossEntropy, TripletLoss
from qgait.models import GaitWithHead, build_model

CPU = DistContext(0, 1, 0, torch.device("cpu"))


class SyntheticBatches:
    """Deterministic in the iteration, like the real TrainBatches: 2 subjects x 2 sequences."""

    def get(self, iteration):
        g = torch.Generator().manual_seed(1000 + iteration)
        x = (torch.rand(4, 3, 32, 22, generator=g) > 0.5).float()
        return x, torch.tensor([0, 0, 1, 1])


def make_trainer(out_dir, iterations, hooks=()):
    torch.manual_seed(0)
    net = GaitWithHead(build_model("gaitbase", width=0.125, bins=(8,), embed_dim=8), num_classes=2)
    loss = LossSum({"triplet": (TripletLoss(), 1.0), "ce": (PartCrossEntropy(), 1.0)})
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return Trainer(
        net, loss, SyntheticBatches(), opt, lambda it: lr_at(it, 0.1, [2], 0.1), iterations, out_dir, CPU,
        log_every=1, save_every=2, progress=False, hooks=hooks,
    )


def losses(out_dir):
    return [json.loads(line)["loss/total"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def test_resume_gives_the_same_next_losses_and_weights(tmp_path):
    full = make_trainer(tmp_path / "full", 4)
    full.fit()
    part = make_trainer(tmp_path / "part", 2)
    part.fit()
    resumed = make_trainer(tmp_path / "part", 4)  # fresh objects, as after a restart
    resumed.fit()
    assert resumed.iteration == 4
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "full"), rel=1e-6)
    for (k, a), b in zip(full.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_sigint_saves_and_resume_continues(tmp_path):
    def interrupt(it):
        if it == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag

    t = make_trainer(tmp_path / "run", 4, hooks=[interrupt])
    with pytest.raises(TrainingInterrupted):
        t.fit()
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["iteration"] == 2  # the step in progress finished, then it saved
    t2 = make_trainer(tmp_path / "run", 4)
    t2.fit()
    ref = make_trainer(tmp_path / "ref", 4)
    ref.fit()
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "ref"), rel=1e-6)


def test_atomic_save_leaves_old_checkpoint_on_failure(tmp_path):
    path = tmp_path / "ck.pt"
    save_atomic({"iteration": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"iteration": 2, "bad": Unsaveable()}, path)
    assert load_checkpoint(path)["iteration"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)


def test_lr_schedule():
    assert lr_at(0, 0.1, [10, 20], 0.1) == pytest.approx(0.1)
    assert lr_at(10, 0.1, [10, 20], 0.1) == pytest.approx(0.01)
    assert lr_at(25, 0.1, [10, 20], 0.1) == pytest.approx(0.001)
    assert lr_at(0, 0.1, [], 0.1, warmup=4) == pytest.approx(0.025)
