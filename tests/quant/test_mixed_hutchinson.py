"""Hutchinson traces against exact Hessians of tiny networks; the quantization errors and the Omega costs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from qgait.quant import calibrate_step
from qgait.quant.mixed import act_quant_mse, hessian_traces, layer_sensitivity, weight_quant_error
from qgait.quant.calibration import ActObserver

def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _convnet() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()


def _batches(shape, n_batches: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, *shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
            for _ in range(n_batches)]


def _loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _exact_weight_trace(model: nn.Module, name: str, batch) -> float:
    params = dict(model.named_parameters())
    key = f"{name}.weight"

    def f(w):
        return _loss(lambda x: functional_call(model, {**params, key: w}, (x,)), batch)

    h = torch.autograd.functional.hessian(f, params[key].detach())
    n = params[key].numel()
    return float(h.reshape(n, n).diagonal().sum())


def _exact_input_trace(model: nn.Sequential, index: int, batch) -> float:
    """Trace of the Hessian of the loss w.r.t. the input of ``model[index]``."""
    x, y = batch
    with torch.no_grad():
        a = model[:index](x) if index else x
    rest = model[index:]
    h = torch.autograd.functional.hessian(lambda a_: F.cross_entropy(rest(a_), y), a)
    n = a.numel()
    return float(h.reshape(n, n).diagonal().sum())


@pytest.mark.parametrize("make,shape,layers", [
    (_mlp, (3,), ["0", "2", "4"]),
    (_convnet, (1, 5, 5), ["0", "3"]),
])
@pytest.mark.parametrize("n_batches", [1, 2])
def test_hutchinson_matches_exact_hessian_trace(make, shape, layers, n_batches):
    model = make()
    batches = _batches(shape, n_batches)
    est = hessian_traces(model, _loss, batches, layers, probes=300, activations=True, seed=3)
    for name in layers:
        exact = sum(_exact_weight_trace(model, name, b) for b in batches) / n_batches
        e = est.weights[name]
        assert e.numel == dict(model.named_modules())[name].weight.numel()
        assert e.probes == 300 and e.batches == n_batches
        assert 0 < e.stderr < 0.25 * abs(exact) + 1e-12, (name, e, exact)  # informative, not a free pass
        assert abs(e.trace - exact) <= 4 * e.stderr, (name, e.trace, exact, e.stderr)
        assert (e.batch_stderr is None) == (n_batches == 1)
        idx = int(name)
        exact_a = sum(_exact_input_trace(model, idx, b) for b in batches) / n_batches
        a = est.activations[name]
        assert abs(a.trace - exact_a) <= 4 * a.stderr + 1e-9 * abs(exact_a), (name, a.trace, exact_a, a.stderr)


def test_hutchinson_is_not_the_full_trace_and_restores_the_model():
    """The per-layer estimate is the diagonal block's trace: a different layer's block gives another value; the
    model's flags and buffers come back unchanged (train mode, batch norm statistics, requires_grad)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double()
    model[0].weight.requires_grad_(False)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches((3,), 2)
    est = hessian_traces(model, _loss, batches, ["0", "3"], probes=50, train_mode=True)
    assert model.training and not model[0].weight.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert est.weights["0"].trace != pytest.approx(est.weights["3"].trace, rel=1e-3)
    assert est.activations == {}


def test_hutchinson_refuses_bad_arguments():
    model = _mlp()
    b = _batches((3,), 1)
    with pytest.raises(ValueError, match="probes"):
        hessian_traces(model, _loss, b, ["0"], probes=1)
    with pytest.raises(ValueError, match="not a module with a weight"):
        hessian_traces(model, _loss, b, ["1"])
    with pytest.raises(ValueError, match="no batches"):
        hessian_traces(model, _loss, [], ["0"])
    with pytest.raises(ValueError, match="scalar"):
        hessian_traces(model, lambda m, bt: m(bt[0]), b, ["0"])


def test_weight_quant_error_uses_mse_steps_and_falls_with_bits():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    errs = {b: weight_quant_error(w, b) for b in (2, 3, 4, 8)}
    assert errs[2] > errs[3] > errs[4] > errs[8] > 0
    s = calibrate_step(w, 3, signed=True, per_channel=True, method="mse").reshape(-1, 1, 1, 1)
    manual = float(((torch.round((w / s).clamp(-4, 3)) * s - w) ** 2).sum())
    assert errs[3] == pytest.approx(manual, rel=1e-9)
    # the MSE step beats min-max on a heavy-tailed weight at 3 bits
    w[0, 0, 0, 0] = 20.0
    mm = calibrate_step(w, 3, signed=True, per_channel=True, method="minmax").reshape(-1, 1, 1, 1)
    mm_err = float(((torch.round((w / mm).clamp(-4, 3)) * mm - w) ** 2).sum())
    assert weight_quant_error(w, 3) < mm_err


def test_act_quant_mse_unsigned_and_falls_with_bits():
    obs = ActObserver()
    obs.update(torch.relu(torch.randn(4000, generator=torch.Generator().manual_seed(0))))
    mse = act_quant_mse(obs, (2, 3, 4, 8))
    assert mse[2] > mse[3] > mse[4] > mse[8] > 0
    step = obs.step(4, False, "mse").double()
    x = obs.values.double()
    manual = float(((torch.round((x / step).clamp(0, 15)) * step - x) ** 2).mean())
    assert mse[4] == pytest.approx(manual, rel=1e-9)


def test_layer_sensitivity_costs_follow_the_formula():
    model = _mlp()
    rep = layer_sensitivity(model, _loss, _batches((3,), 2), ["0", "2", "4"], weight_bits=(2, 4), act_bits=(3, 8),
                            probes=20)
    for name, s in rep.layers.items():
        w = dict(model.named_modules())[name].weight
        tr = max(s.weight_trace.trace, 0.0)
        assert s.omega_weight(2) == pytest.approx(tr / w.numel() * weight_quant_error(w, 2))
        assert s.omega_act(8) == pytest.approx(max(s.act_trace.trace, 0.0) * s.act_mse[8])
        assert s.omega_act(None) == 0.0
        assert s.omega(2, 3) == pytest.approx(s.omega_weight(2) + s.omega_act(3))
        if tr > 0:
            assert s.omega_weight(2) > s.omega_weight(4)
        with pytest.raises(KeyError):
            s.omega_weight(3)
    assert set(rep.seconds) == {"hessian", "errors"}
    d = rep.to_dict()
    assert set(d["layers"]["2"]["omega_weight"]) == {"2", "4"}
