"""Mixed precision (methods.md 3; LCPAQ, arXiv 2402.17706): per-layer bits from Hessian sensitivity, hardware
costs and an integer program; the Pareto frontier; the result as a ``QuantConfig.bit_map``.

Model-agnostic like the rest of :mod:`qgait.quant`: any ``nn.Module``, any loss closure. Flow::

    layers = target_layers(model, QuantConfig(...))                      # what quantize_ would replace
    names = [t.name for t in layers]
    sens = layer_sensitivity(model, loss_fn, batches, names,             # Hutchinson traces + Omega per bits
                             weight_bits=(2, 3, 4, 8), act_bits=(3, 4, 8))
    macs = count_macs(model, example, names)                             # forward hooks
    ties = find_residual_ties(model, example, names)                     # residual branches share bits
    options = build_options(sens, layers, macs, weight_bits=..., act_bits=..., runtime="ideal")
    alloc = allocate(options, {"size_bits": uniform(options, 3, 3).metrics["size_bits"]}, ties)
    front = pareto_frontier(options, "size_bits", ties)
    write_quant_config("w3_size.yaml", bit_map_of(alloc), base="qgait_w4a4_cpu")

Public API (one module per job)::

    target_layers, TargetLayer                                    # layers.py
    hessian_traces, TraceEstimate, HessianTraces, LossFn          # hutchinson.py
    weight_quant_error, act_quant_mse, fake_quantize              # qerror.py
    layer_sensitivity, LayerSensitivity, SensitivityReport        # sensitivity.py
    count_macs, RuntimeProfile, RUNTIMES, get_runtime             # hardware.py
    Tie, find_residual_ties, PASS_THROUGH                         # ties.py
    Option, Allocation, allocate, smallest_budget, evaluate_choice  # ilp.py
    build_options, uniform                                        # options.py
    pareto_frontier, frontier_json, plot_frontier                 # frontier.py
    bit_map_of, write_quant_config                                # bitmap.py
    random_allocation, hessian_only_options                       # baselines.py (the table's other rows)
"""

from .baselines import hessian_only_options, random_allocation
from .bitmap import bit_map_of, write_quant_config
from .frontier import frontier_json, pareto_frontier, plot_frontier
from .hardware import RUNTIMES, RuntimeProfile, count_macs, get_runtime
from .hutchinson import HessianTraces, LossFn, TraceEstimate, hessian_traces
from .ilp import Allocation, Option, allocate, evaluate_choice, smallest_budget
from .layers import TargetLayer, target_layers
from .options import build_options, uniform
from .qerror import act_quant_mse, fake_quantize, weight_quant_error
from .sensitivity import LayerSensitivity, SensitivityReport, layer_sensitivity
from .ties import PASS_THROUGH, Tie, find_residual_ties

__all__ = [
    "target_layers", "TargetLayer",
    "hessian_traces", "TraceEstimate", "HessianTraces", "LossFn",
    "weight_quant_error", "act_quant_mse", "fake_quantize",
    "layer_sensitivity", "LayerSensitivity", "SensitivityReport",
    "count_macs", "RuntimeProfile", "RUNTIMES", "get_runtime",
    "Tie", "find_residual_ties", "PASS_THROUGH",
    "Option", "Allocation", "allocate", "smallest_budget", "evaluate_choice",
    "build_options", "uniform",
    "pareto_frontier", "frontier_json", "plot_frontier",
    "bit_map_of", "write_quant_config",
    "random_allocation", "hessian_only_options",
]
