"""QGait quantization layer: LSQ and soft quantizers, drop-in quantized layers, ``quantize_`` (methods.md 1).

Model-agnostic: works on any ``nn.Module`` and imports nothing from the other qgait packages.

Public API::

    QuantConfig, SoftQuantConfig, BitSpec                        # validated config (config.py)
    LSQQuantizer                                                 # the quantizer module (quantizers.py)
    ActObserver, calibrate_step                                  # step calibration (calibration.py)
    lsq_fake_quantize                                            # fake-quant op, fused kernels (fake_quant.py)
    soft_round, soft_round_derivative, round_ste, round_soft_backward, round_with  # rounding (rounding.py)
    grid_range                                                   # integer grid (grid.py)
    QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear, QuantLayer  # layers (modules.py)
    quantize_, calibrate_, set_rounding_, set_alpha_, alpha_at, ...  # model verbs (transform.py)
    find_residual_outputs, output_quantizers, attach_output_quantizer  # output quantizers (outputs.py)
"""

from .config import BitSpec, QuantConfig, SoftQuantConfig, rounding_for
from .modules import QUANT_TWINS, QuantConv1d, QuantConv2d, QuantConv3d, QuantLayer, QuantLinear
from .outputs import attach_output_quantizer, find_residual_outputs, output_quantizers
from .quantizers import (
    ActObserver,
    LSQQuantizer,
    calibrate_step,
    grid_range,
    lsq_fake_quantize,
    round_soft_backward,
    round_ste,
    round_with,
    soft_round,
    soft_round_derivative,
)
from .transform import (
    alpha_at,
    calibrate_,
    is_quantized,
    non_step_parameters,
    quant_layers,
    quant_summary,
    quant_summary_dict,
    quantize_,
    iter_quantizers,
    set_alpha_,
    set_quant_enabled_,
    set_rounding_,
    step_parameters,
)
from .inference import frozen_for_inference, is_frozen

__all__ = [
    "BitSpec",
    "QuantConfig",
    "SoftQuantConfig",
    "rounding_for",
    "ActObserver",
    "LSQQuantizer",
    "calibrate_step",
    "grid_range",
    "lsq_fake_quantize",
    "round_soft_backward",
    "round_ste",
    "round_with",
    "soft_round",
    "soft_round_derivative",
    "QUANT_TWINS",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantLayer",
    "QuantLinear",
    "alpha_at",
    "calibrate_",
    "is_quantized",
    "non_step_parameters",
    "quant_layers",
    "quant_summary",
    "quant_summary_dict",
    "quantize_",
    "iter_quantizers",
    "set_alpha_",
    "set_quant_enabled_",
    "set_rounding_",
    "step_parameters",
    "attach_output_quantizer",
    "find_residual_outputs",
    "output_quantizers",
    "frozen_for_inference",
    "is_frozen",
]
