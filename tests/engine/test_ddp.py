"""A 2-process gloo DistributedDataParallel smoke run on the CPU, launched with torchrun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from qgait.engine.checkpoint import load_checkpoint


def test_torchrun_two_process_gloo_ddp_keeps_replicas_in_sync(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = torch.load(tmp_path / "w0.pt"), torch.load(tmp_path / "w1.pt")
    assert torch.allclose(w0, w1)  # broadcast at start + all-reduced gradients: identical replicas
    ck = load_checkpoint(tmp_path / "last.pt")  # written by rank 0 only, atomically
    assert ck["iteration"] == 3
    torch.manual_seed(0)
    from qgait.models import build_model

    init = torch.cat([p.flatten() for p in build_model("gaitbase", width=0.125, bins=(8,), embed_dim=8).parameters()])
    assert not torch.allclose(init, w0[: init.numel()])  # it trained
