"""The helpers of scripts/distill_grad_norms.py and scripts/device_summary.py on small known inputs."""

from __future__ import annotations

import json

import pytest
import torch

from _scripts import load_script


def test_grad_norm_stacks_parameters_and_skips_unreached():
    mod = load_script("distill_grad_norms")
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([3.0]))
    unused = torch.nn.Parameter(torch.tensor([5.0]))
    loss = (a * torch.tensor([3.0, 4.0])).sum() + 12.0 * b.sum()  # gradients (3, 4) and (12): norm 13
    assert mod.grad_norm([a, b, unused], loss) == pytest.approx(13.0)
    assert mod.grad_norm([unused], (a * 2).sum() + unused.detach().sum()) == 0.0


def test_step_times_median_leaves_out_the_first_window(tmp_path):
    mod = load_script("device_summary")
    log = tmp_path / "train_log.jsonl"
    rows = [{"stage": "stage1", "iteration": 10 * (i + 1), "sec_per_iter": s, "loss/total": 2.0 - i / 10}
            for i, s in enumerate([5.0, 0.3, 0.2, 0.4])]
    rows += [{"stage": "stage2", "iteration": 50, "sec_per_iter": 0.7, "loss/total": 1.1}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = mod.step_times(log)
    assert out["stage1"] == {"iterations": 40, "windows": 4, "median_s_per_iter": 0.3, "last_loss": 1.7}
    assert out["stage2"]["median_s_per_iter"] == 0.7  # a single window is its own median
