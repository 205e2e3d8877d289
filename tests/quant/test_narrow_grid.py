"""The narrow 8-bit weight grid ``[-127, 127]`` (``QuantConfig.narrow_8bit_weights``): its range, where the
transform applies it, and that state dicts saved before the option restore the full grid they were trained on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qgait.quant import LSQQuantizer, QuantConfig, grid_range, quant_layers, quantize_


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_narrow_grid_is_symmetric_and_only_for_signed(bits):
    q_n, q_p = grid_range(bits, True, narrow=True)
    assert q_n == q_p == 2 ** (bits - 1) - 1 and grid_range(bits, True) == (q_n + 1, q_p)
    assert grid_range(bits, False, narrow=True) == grid_range(bits, False) == (0, 2**bits - 1)


def test_narrow_quantizer_never_reaches_the_lowest_level():
    q = LSQQuantizer(8, signed=True, per_channel=True, num_channels=3, narrow=True, init_method="minmax")
    w = torch.randn(3, 50) * torch.tensor([[1.0], [5.0], [0.1]])
    q.initialize(w)
    k = torch.round(q(w * 3) / q.scale[:, None])  # far beyond the range: clipped to the grid's ends
    assert int(k.min()) == -127 and int(k.max()) == 127
    # min-max on the narrow grid covers the data's extremes exactly
    amax = w.abs().amax(1)
    torch.testing.assert_close(q.scale, amax / 127)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_transform_narrows_only_8_bit_weights():
    m = _model()
    quantize_(m, QuantConfig(weight_bits=4, act_bits=4, bit_map={"2": {"weight": 8, "act": 8}},
                             first_layer_exact_input=False))
    narrow = {n: (q.weight_quantizer.bits, q.weight_quantizer.narrow) for n, q in quant_layers(m)}
    assert narrow == {"0": (4, False), "2": (8, True), "4": (4, False)}
    assert all(not q.input_quantizer.narrow for _, q in quant_layers(m))  # activations keep their grid
    m2 = _model()
    quantize_(m2, QuantConfig(weight_bits=8, act_bits=8, narrow_8bit_weights=False))
    assert not any(q.weight_quantizer.narrow for _, q in quant_layers(m2))


def test_state_dict_from_before_the_option_restores_the_full_grid():
    m = _model()
    quantize_(m, QuantConfig(weight_bits=8, act_bits=8))
    m(torch.rand(2, 1, 8, 8))  # initialises the steps
    sd = m.state_dict()
    legacy = {k: v for k, v in sd.items() if not k.endswith("narrow_state")}
    fresh = _model()
    quantize_(fresh, QuantConfig(weight_bits=8, act_bits=8))
    fresh.load_state_dict(legacy)
    assert all(not q.weight_quantizer.narrow and q.weight_quantizer.q_n == 128 for _, q in quant_layers(fresh))
    again = _model()
    quantize_(again, QuantConfig(weight_bits=8, act_bits=8, narrow_8bit_weights=False))
    again.load_state_dict(sd)  # the checkpoint's grid wins over the config's
    assert all(q.weight_quantizer.narrow and q.weight_quantizer.q_n == 127 for _, q in quant_layers(again))
