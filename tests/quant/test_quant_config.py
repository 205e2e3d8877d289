"""QuantConfig / SoftQuantConfig / BitSpec validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qgait.quant import BitSpec, QuantConfig, SoftQuantConfig, alpha_at, rounding_for


def test_defaults():
    c = QuantConfig()
    assert (c.weight_bits, c.act_bits, c.per_channel, c.quantizer) == (4, 4, True, "lsq")
    assert c.soft == SoftQuantConfig()
    assert c.soft.mode == "backward_only" and c.soft.alpha_start == 2.0 and c.soft.alpha_end == 10.0
    assert c.targets == ["Conv1d", "Conv2d", "Conv3d", "Linear"]
    assert c.act_signed == "auto" and c.first_layer_exact_input and not c.keep_first_last_8bit
    assert c.lsq_init == "lsq" and c.ptq_method == "mse" and c.ptq_percentile == 99.99
    assert c.exclude == [] and c.bit_map == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_bit": 4},  # misspelt key
        {"soft": {"alpha_strat": 1.0}},
        {"bit_map": {"conv": {"weights": 4}}},
        {"weight_bits": 1},
        {"act_bits": 9},
        {"quantizer": "dsq"},
        {"targets": ["Conv4d"]},
        {"targets": []},
        {"bit_map": {"conv": {"weight": 12}}},
        {"soft": {"alpha_start": 0.0}},
        {"ptq_percentile": 30.0},
    ],
)
def test_invalid(kwargs):
    with pytest.raises(ValidationError):
        QuantConfig(**kwargs)


def test_nested_from_dict_and_rounding():
    c = QuantConfig.model_validate(
        {"quantizer": "soft", "soft": {"mode": "soft_forward"}, "bit_map": {"a.*": {"weight": 8}}}
    )
    assert isinstance(c.bit_map["a.*"], BitSpec) and c.bit_map["a.*"].act is None
    assert rounding_for(c) == "soft_forward" == c.rounding
    assert QuantConfig(quantizer="soft").rounding == "soft_backward"
    assert QuantConfig(quantizer="ptq").rounding == "ste"
    assert QuantConfig(quantizer="ptq", ptq_method="percentile").init_method == "percentile"
    assert QuantConfig(lsq_init="mse").init_method == "mse"


def test_alpha_schedules():
    lin = SoftQuantConfig(alpha_start=2, alpha_end=10)
    assert alpha_at(lin, 0) == 2 and alpha_at(lin, 1) == 10 and alpha_at(lin, 0.5) == pytest.approx(6)
    assert alpha_at(lin, -1) == 2 and alpha_at(lin, 7) == 10  # clamped
    exp = SoftQuantConfig(alpha_start=1, alpha_end=100, schedule="exponential")
    assert alpha_at(exp, 0.5) == pytest.approx(10) and alpha_at(exp, 1) == pytest.approx(100)
    const = SoftQuantConfig(schedule="constant")
    assert alpha_at(const, 0.3) == 2.0
    with pytest.raises(ValueError):
        alpha_at(lin, float("nan"))
