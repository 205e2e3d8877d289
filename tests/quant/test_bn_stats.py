"""Batch-norm re-estimation (qgait.quant.bn_stats): the running statistics become the plain average of the batch
statistics with the final weights; nothing else changes; bad input leaves the model as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qgait.quant import QuantConfig, quant_layers, quantize_
from qgait.quant.bn_stats import reestimate_bn_stats


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3))


def test_running_stats_are_the_average_of_the_batch_stats():
    net = _net()
    batches = [torch.randn(5, 1, 8, 8) * (i + 1) + i for i in range(3)]
    for b in batches:  # arbitrary stale statistics
        net.train()(b * 3 + 7)
    assert reestimate_bn_stats(net, batches) == 3
    assert not net.training and all(not m.training for m in net.modules())
    bn = net[1]
    conv_out = [net[0](b) for b in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in conv_out]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in conv_out]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3


def test_quantized_model_keeps_its_steps_and_weights():
    net = _net()
    quantize_(net, QuantConfig(weight_bits=3, act_bits=3, first_layer_exact_input=False))
    net.train()(torch.rand(4, 1, 8, 8))  # initialise steps
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    reestimate_bn_stats(net, [torch.rand(4, 1, 8, 8) for _ in range(2)])
    after = net.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, msg=k)
    assert all(q.weight_quantizer.is_initialized for _, q in quant_layers(net))


def test_bad_input_restores_the_statistics():
    net = _net()
    net.train()(torch.randn(4, 1, 8, 8))
    ref = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="no batches"):
        reestimate_bn_stats(net, [])
    with pytest.raises(RuntimeError):
        reestimate_bn_stats(net, [torch.randn(4, 2, 8, 8)])  # wrong channel count fails inside forward
    for k, v in ref.items():
        torch.testing.assert_close(net.state_dict()[k], v, msg=k)
    assert net[1].momentum == 0.1
    with pytest.raises(ValueError, match="no batch norm"):
        reestimate_bn_stats(nn.Linear(2, 2), [torch.randn(1, 2)])
