"""frozen_for_inference: bit-identical embeddings, state and training untouched, caches invalidated, extract path."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from qgait.models import build_model
from qgait.quant import (
    LSQQuantizer,
    QuantConfig,
    calibrate_,
    find_residual_outputs,
    frozen_for_inference,
    is_frozen,
    iter_quantizers,
    quantize_,
    set_rounding_,
)
from qgait.quant import inference as inf
from qgait.quant.fake_quant import COMPILE_MIN_NUMEL

SIZE = (32, 22)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (fast on a busy 2-core machine); tests that need more set it themselves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sil(t: int, seed: int) -> torch.Tensor:
    """A binary silhouette-like sequence ``[1, t, 32, 22]``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, t, *SIZE, generator=g) > 0.6).float()


def _gaitbase(cfg: dict, seed: int = 0) -> nn.Module:
    """A small calibrated quantized GaitBase (channels 8/16/32/64; the first maps exceed COMPILE_MIN_NUMEL for
    t >= 12 frames, so both the fused-kernel and the eager branch run)."""
    torch.manual_seed(seed)
    m = build_model("gaitbase", width=0.125, strides=[1, 2, 2, 1], bins=[8], embed_dim=16)
    cfg = dict(cfg)
    if cfg.pop("residual_outputs", False):
        cfg["output_quant"] = find_residual_outputs(m, _sil(4, 0))
    rounding = cfg.pop("rounding", None)
    quantize_(m, QuantConfig(**cfg))
    calibrate_(m, [_sil(8, s) for s in range(3)])
    if rounding:
        set_rounding_(m, rounding)
    return m.eval()


CONFIGS = {
    "w8a8": dict(weight_bits=8, act_bits=8),
    "w4a4": dict(weight_bits=4, act_bits=4),
    "w3a3": dict(weight_bits=3, act_bits=3),
    "w4a4_per_tensor": dict(weight_bits=4, act_bits=4, per_channel=False),
    "w4a4_output_quant": dict(weight_bits=4, act_bits=4, residual_outputs=True),
    "w4a4_soft_forward": dict(weight_bits=4, act_bits=4, quantizer="soft", rounding="soft_forward"),
    "w3a3_ptq_signed": dict(weight_bits=3, act_bits=3, quantizer="ptq", act_signed="signed"),
}
LENGTHS = (16, 5, 23, 16)  # dynamic lengths; a repeated one reuses everything


def _check_identical(m: nn.Module) -> None:
    xs = [_sil(t, 10 + i) for i, t in enumerate(LENGTHS)]
    assert 8 * LENGTHS[0] * SIZE[0] * SIZE[1] >= COMPILE_MIN_NUMEL  # the fused-kernel branch is exercised
    with warnings.catch_warnings():
        # the lean path must agree with the normal forward by itself, not through its fallback
        warnings.filterwarnings("error", message=".*lean activation path differs", category=RuntimeWarning)
        with torch.inference_mode():
            ref = [m(x) for x in xs]
            with frozen_for_inference(m):
                assert all(is_frozen(q) for _, q in iter_quantizers(m))
                fast = [m(x) for x in xs]
            with frozen_for_inference(m, serial_max_numel=0):  # the process's thread count for every activation
                par = [m(x) for x in xs]
        with torch.no_grad(), frozen_for_inference(m):  # no_grad instead of inference_mode
            nograd = [m(x) for x in xs]
    for r, a, b, c in zip(ref, fast, par, nograd):
        assert torch.equal(r, a) and torch.equal(r, b) and torch.equal(r, c)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_embeddings_bit_identical(name):
    _check_identical(_gaitbase(CONFIGS[name]))


def test_embeddings_bit_identical_with_two_threads():
    m = _gaitbase(CONFIGS["w4a4_output_quant"])
    torch.set_num_threads(2)  # the serial activation path switches to one thread and back
    _check_identical(m)
    assert torch.get_num_threads() == 2


def test_weights_quantized_once_activations_checked_once(monkeypatch):
    m = _gaitbase(CONFIGS["w4a4_output_quant"])
    calls = []
    orig = inf.LSQQuantizer.forward
    monkeypatch.setattr(inf.LSQQuantizer, "forward", lambda self, x: calls.append(self.role) or orig(self, x))
    n_w = sum(q.role == "weight" for _, q in iter_quantizers(m))
    with torch.inference_mode(), frozen_for_inference(m):
        for i in range(4):
            m(_sil(16, i))
    # weights: once each; activations: once per branch for the self-check, not once per forward
    assert calls.count("weight") == n_w
    n_act = sum(q.role == "activation" for _, q in iter_quantizers(m))
    assert calls.count("activation") <= 2 * n_act < 4 * n_act


def test_state_dict_forward_and_training_unchanged_after_the_context():
    m = _gaitbase(CONFIGS["w4a4_output_quant"])
    twin = copy.deepcopy(m)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    threads = torch.get_num_threads()
    with torch.inference_mode(), frozen_for_inference(m) as same:
        assert same is m
        m(_sil(16, 1))
    assert torch.get_num_threads() == threads
    after = m.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    assert not any(is_frozen(q) or "forward" in q.__dict__ for _, q in iter_quantizers(m))
    # one SGD step on both: identical forward, gradients (steps included) and updated parameters
    x = _sil(8, 5)
    for net in (m, twin):
        net.train()
        net._opt = torch.optim.SGD(net.parameters(), lr=0.1)
        net(x).square().mean().backward()
        net._opt.step()
    for (n, p), (_, p2) in zip(m.named_parameters(), twin.named_parameters()):
        assert p.grad is not None and torch.equal(p.grad, p2.grad) and torch.equal(p, p2), n
    assert all(q.step.grad is not None for _, q in iter_quantizers(m))


def test_training_and_gradients_inside_the_context_run_the_normal_forward():
    m = _gaitbase(CONFIGS["w4a4"])
    twin = copy.deepcopy(m)
    x = _sil(8, 2)
    with frozen_for_inference(m):
        with torch.inference_mode():
            m(x)  # fills the caches
        m.train()
        m(x).sum().backward()  # training mode: no cache, gradients flow to weights and steps
        m.eval()
        y = m(x)  # eval mode with gradients on: the normal forward too
        assert y.requires_grad
    twin.train()
    twin(x).sum().backward()
    for (n, p), (_, p2) in zip(m.named_parameters(), twin.named_parameters()):
        assert p.grad is not None and torch.equal(p.grad, p2.grad), n


def test_cache_follows_inplace_changes_of_weights_steps_and_state_dict():
    m = _gaitbase(CONFIGS["w4a4"])
    twin = copy.deepcopy(m)  # never frozen: the normal forward after the same changes
    other = _gaitbase(CONFIGS["w4a4"], seed=1).state_dict()
    x = _sil(16, 3)

    def change(net: nn.Module, what: str) -> None:
        with torch.inference_mode(False), torch.no_grad():
            if what == "weight":  # a plain in-place weight change (as an optimizer step)
                net.backbone.module[0].weight.mul_(1.5)
            elif what == "steps":  # an activation step and a per-channel weight step
                net.backbone.module[3].conv1.input_quantizer.step.mul_(0.7)
                net.fcs.fc.weight_quantizer.step.mul_(1.3)
            else:
                net.load_state_dict(other)

    with torch.inference_mode(), frozen_for_inference(m):
        outs = [m(x)]
        for what in ("weight", "steps", "state_dict"):
            change(m, what)
            change(twin, what)
            y = m(x)
            assert not torch.equal(y, outs[-1]), what
            assert torch.equal(y, twin(x)), what
            outs.append(y)


def test_nesting_existing_wrappers_and_exceptions():
    m = _gaitbase(CONFIGS["w8a8"])
    q0 = next(q for _, q in iter_quantizers(m))
    seen = []
    wrapper = lambda x: seen.append(1) or LSQQuantizer.forward(q0, x)  # noqa: E731
    q0.forward = wrapper  # an instance-level wrapper installed by someone else
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_for_inference(m):
            with frozen_for_inference(m):  # nested: a no-op for the already frozen quantizers
                assert is_frozen(q0)
            assert is_frozen(q0)  # the inner exit did not unfreeze
            with torch.inference_mode():
                m(_sil(4, 0))
            raise RuntimeError("boom")
    assert not is_frozen(q0) and q0.__dict__["forward"] is wrapper and seen


def test_model_agnostic_generic_network_and_plain_models():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(512, 5))
    quantize_(net, QuantConfig(weight_bits=4, act_bits=4, output_quant=["1"]))
    calibrate_(net, [torch.randn(4, 1, 8, 8) for _ in range(2)])
    net.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        ref = net(x)
        with frozen_for_inference(net):
            assert torch.equal(net(x), ref) and torch.equal(net(x), ref)
    plain = nn.Linear(3, 2)
    with frozen_for_inference(plain), torch.inference_mode():
        plain(torch.ones(1, 3))  # nothing to freeze
    with pytest.raises(TypeError):
        with frozen_for_inference(lambda x: x):
            pass
    with pytest.raises(ValueError, match="serial_max_numel"):
        with frozen_for_inference(net, serial_max_numel=-1):
            pass


def test_a_lean_path_that_disagrees_warns_and_falls_back(monkeypatch):
    q = LSQQuantizer(4, role="activation")
    x = torch.rand(2, 3, 5)
    q.initialize(x)
    q.eval()
    with torch.inference_mode():
        ref = q(x)
    monkeypatch.setattr(inf, "_lsq_forward_math", lambda *a, **k: torch.zeros_like(a[0]))
    with torch.inference_mode(), frozen_for_inference(q):
        with pytest.warns(RuntimeWarning, match="differs"):
            out = q(x)
        assert torch.equal(out, ref) and torch.equal(q(x), ref)


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    """2 subjects x the CASIA-B gallery/probe conditions x 2 views of random blobs (8..20 frames)."""
    from qgait.data.sources import SequenceKey
    from qgait.data.store import SequenceStore, StoreWriter

    dest = tmp_path_factory.mktemp("infer") / "st"
    rng = np.random.default_rng(0)
    with StoreWriter(dest) as w:
        for s in ("075", "076"):
            for c in ("nm-01", "nm-02", "nm-03", "nm-04", "nm-05", "bg-01", "cl-01"):
                for v in ("000", "090"):
                    t = int(rng.integers(8, 21))
                    w.add(SequenceKey(s, c, v), (rng.random((t, 64, 64)) > 0.7).astype(np.uint8) * 255)
    return SequenceStore.open(dest)


def test_evaluation_applies_the_fast_path_with_identical_results(synthetic_store, monkeypatch):
    from qgait.evaluation import extract
    from qgait.evaluation.runner import evaluate_on_store

    m = _gaitbase(CONFIGS["w3a3"])
    state = {k: v.clone() for k, v in m.state_dict().items()}
    entered = []
    real = extract.frozen_for_inference
    monkeypatch.setattr(extract, "frozen_for_inference", lambda model: entered.append(model) or real(model))
    plain = evaluate_on_store(m, synthetic_store, ["075", "076"], SIZE, progress=False, return_embeddings=True,
                              freeze_quant=False)
    assert not entered
    fast = evaluate_on_store(m, synthetic_store, ["075", "076"], SIZE, progress=False, return_embeddings=True)
    assert entered == [m]
    assert torch.equal(plain["embeddings"], fast["embeddings"]) and plain["mean"] == fast["mean"]
    assert not any(is_frozen(q) for _, q in iter_quantizers(m))
    assert all(torch.equal(m.state_dict()[k], v) for k, v in state.items())
    fp = build_model("gaitbase", width=0.125, strides=[1, 2, 2, 1], bins=[8], embed_dim=16)
    evaluate_on_store(fp, synthetic_store, ["075"], SIZE, progress=False)
    assert len(entered) == 1  # an FP model is not wrapped
