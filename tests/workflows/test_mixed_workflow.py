"""``qgait mixed-precision`` (issue 15) on real CASIA-B subjects and a tiny GaitBase: the written config reads back
with the chosen bit map and quantizes the model to those bits, the JSON report carries the figures, the budget
syntax and its errors, existing outputs, and ``qgait quantize`` training the written config."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from qgait.cli import main
from qgait.config import load_config
from qgait.quant import quant_layers, quantize_
from qgait.workflows.common import build_network
from qgait.workflows.mixed import BudgetTerm, parse_budget, run_mixed_precision
from qgait.workflows.train import run_train

CHEAP = dict(batches=1, probes=2, mac_frames=8)  # the tiny model's search in seconds
CLI_CHEAP = ["--batches", "1", "--probes", "2", "--mac-frames", "8", "--quiet"]


@pytest.fixture(scope="module")
def fp_run(small_config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    run_train(load_config(small_config_file), out, progress=False, evaluate=False)
    return out


@pytest.fixture(scope="module")
def quant_config(small_config_file, tmp_path_factory):
    """A W4A4 quantize config over the tiny experiment: one stage-1 iteration. Cross-entropy only: the curvature of
    the triplet term of a 4-iteration model is negative on every layer (every trace clamped to 0, every Omega 0,
    nothing to choose between), that of the cross-entropy is positive on some."""
    path = tmp_path_factory.mktemp("qcfg") / "tiny_w4a4.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(small_config_file), "name": "tiny_w4a4",
        "data": {"test_subjects_limit": 2}, "loss": {"triplet": None},
        "quant": {"config": {"weight_bits": 4, "act_bits": 4}, "calibration_batches": 1,
                  "stage1": {"iterations": 1, "lr": 0.01}, "stage2": {"iterations": 0}, "plot": False},
    }))
    return path


@pytest.fixture(scope="module")
def mixed(quant_config, fp_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "sub" / "tiny_mixed.yaml"  # a folder below the config's
    png = out.parent / "frontier.png"
    report = run_mixed_precision(quant_config, fp_run / "model.pt", "size=w3a3,bops=w3a3", out, frontier_png=png,
                                 progress=False, **CHEAP)
    return out, report, png


def test_written_config_reads_back_and_quantizes_to_the_chosen_bits(mixed, quant_config):
    out, report, _ = mixed
    chosen = report["allocation"]["bit_map"]
    names = [r["name"] for r in report["layers"]]
    assert set(chosen) == set(names) and len(names) >= 10  # every target layer of GaitBase is mapped
    raw = yaml.safe_load(out.read_text())
    assert raw["name"] == "tiny_mixed" and not raw["base"].startswith("/")  # base: relative to the file's folder
    assert (out.parent / raw["base"]).resolve() == quant_config.resolve()
    assert out.read_text().startswith("# Mixed precision")  # the comment with the budget and the figures
    cfg = load_config(out)
    assert {n: v.model_dump(exclude_none=True) for n, v in cfg.quant.config.bit_map.items()} == chosen
    assert cfg.quant.stage1.iterations == 1 and cfg.quant.config.weight_bits == 4  # the base's schedule is kept
    net = build_network(cfg, 3)
    quantize_(net.model, cfg.quant.config)
    got = {n: (m.weight_quantizer.bits, None if m.input_quantizer is None else m.input_quantizer.bits)
           for n, m in quant_layers(net.model)}
    assert got == {n: (v["weight"], v.get("act")) for n, v in chosen.items()}
    assert got[names[0]][1] is None  # the first layer's silhouette input stays exact


def test_the_choice_is_optimal_against_uniform_w3a3_and_respects_the_ties(mixed):
    _, report, _ = mixed
    a, w3 = report["allocation"], report["uniform"]["W3A3"]
    # uniform W3A3 meets its own size and BOPs: the program's choice is at least as good, within the budget
    assert report["budget"]["bounds"] == pytest.approx(w3["metrics"])
    assert a["metrics"]["size_bits"] <= w3["metrics"]["size_bits"] and a["metrics"]["bops"] <= w3["metrics"]["bops"]
    assert a["omega"] <= w3["omega"] * (1 + 1e-9)
    assert report["uniform"]["W8A8"]["omega"] < report["uniform"]["W4A4"]["omega"] < w3["omega"]
    bits = {r["name"]: (r["chosen"]["weight"], r["chosen"]["act"]) for r in report["layers"]}
    assert report["ties"]  # GaitBase's downsampling blocks tie conv2 and the shortcut conv
    for tie in report["ties"]:
        assert len({bits[n] for n in tie}) == 1, tie


def test_report_json_has_the_figures(mixed):
    out, report, png = mixed
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk["allocation"]["bit_map"] == report["allocation"]["bit_map"]
    assert on_disk["seconds"]["total"] == pytest.approx(report["seconds"]["total"])
    for r in on_disk["layers"]:
        wt = r["weight_trace"]
        assert wt["numel"] == r["n_params"] and wt["stderr"] >= 0 and math.isfinite(wt["trace"])
        assert r["macs"] > 0 and set(r["omega_weight"]) == {"2", "3", "4", "8"}
        assert r["act_trace"]["stderr"] >= 0 and set(r["omega_act"]) == {"3", "4", "8"}
        assert (r["chosen"]["act"] is None) == r["exact_input"]  # an exact input has no act choice
    a = on_disk["allocation"]
    assert a["size_kib"] == pytest.approx(a["metrics"]["size_bits"] / 8192)
    assert a["gbops"] == pytest.approx(a["metrics"]["bops"] / 1e9)
    assert a["omega"] == pytest.approx(sum(
        r["omega_weight"][str(r["chosen"]["weight"])]
        + (0 if r["exact_input"] else r["omega_act"][str(r["chosen"]["act"])]) for r in on_disk["layers"]))
    n = sum(r["n_params"] for r in on_disk["layers"])
    assert on_disk["uniform"]["W4A4"]["metrics"]["size_bits"] == 4 * n  # ideal profile: 4 bits per weight
    for metric in ("size_bits", "bops"):
        pts = on_disk["frontiers"][metric]["points"]
        assert len(pts) >= 2
        xs, costs = [p["metrics"][metric] for p in pts], [p["cost"] for p in pts]
        assert xs == sorted(xs) and costs == sorted(costs, reverse=True)
    assert set(on_disk["seconds"]) >= {"setup", "sensitivity", "hessian", "errors", "hardware", "allocation",
                                       "frontier", "total"}
    assert on_disk["train_command"] == f"qgait quantize {out} --from {report['fp_checkpoint']}"
    assert png.stat().st_size > 5000
    assert not list(out.parent.glob(".qgait-partial-*"))  # nothing staged is left behind


def test_parse_budget():
    assert parse_budget("size=w3a3") == [BudgetTerm("size", 3, 3)]
    assert parse_budget(" bops = W4A8 , size=160KiB") == [BudgetTerm("bops", 4, 8), BudgetTerm("size", value=160.0)]
    assert parse_budget("bops=5.5G") == [BudgetTerm("bops", value=5.5)]
    for spec, match in [("", "empty"), ("size", "not KEY=VALUE"), ("latency=3", "unknown budget 'latency'"),
                        ("size=w9a3", "bits must be 2..8"), ("size=-1", "positive"), ("size=nan", "positive"),
                        ("size=big", "neither wNaM"), ("size=1,size=2", "given twice")]:
        with pytest.raises(ValueError, match=match) as e:
            parse_budget(spec)
        assert "\n" not in str(e.value)


def test_cli_writes_prints_refuses_existing_and_overwrites(quant_config, fp_run, tmp_path, capsys):
    out = tmp_path / "cli.yaml"
    argv = ["mixed-precision", str(quant_config), "--from", str(fp_run / "model.pt"), "--output", str(out),
            *CLI_CHEAP]
    assert main(argv + ["--budget", "size=w4a4"]) == 0
    text = capsys.readouterr().out
    first = out.read_text()
    bit_map = load_config(out).quant.config.bit_map
    for name, spec in bit_map.items():  # the table lists every layer with its bits
        assert any(line.split()[:2] == [name, str(spec.weight)] for line in text.splitlines()), name
    assert "uniform W3A3" in text and "uniform W4A4" in text
    assert f"train it: qgait quantize {out} --from {fp_run / 'model.pt'}" in text

    # an existing output is refused before any work, and left as it was
    assert main(argv + ["--budget", "size=w3a3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; add --overwrite" in err and str(out) in err
    assert out.read_text() == first
    # ... and replaced with --overwrite: the onnxruntime profile at uniform W3A3's size, W3A3 not being a choice
    assert main(argv + ["--budget", "size=w3a3", "--runtime", "onnxruntime", "--act-bits", "4,8",
                        "--overwrite"]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["runtime"] == "onnxruntime" and out.read_text() != first
    assert {r["chosen"]["act"] for r in rep["layers"]} <= {None, 4, 8}
    # int8 kernels whatever the bits: every choice costs W8A8's BOPs, and <= 4-bit weights take 4 bits, so the
    # reference W3A3 (size and BOPs only, no summed Omega: not a choice) is as large as W4A4
    assert rep["allocation"]["metrics"]["bops"] == rep["uniform"]["W8A8"]["metrics"]["bops"]
    w3, w4 = rep["uniform"]["W3A3"], rep["uniform"]["W4A4"]
    assert w3["omega"] is None and w3["metrics"]["size_bits"] == w4["metrics"]["size_bits"]
    assert rep["budget"]["bounds"]["size_bits"] == w4["metrics"]["size_bits"]
    assert rep["allocation"]["omega"] <= w4["omega"] * (1 + 1e-9)
    assert next(line for line in text.splitlines() if line.startswith("uniform W3A3")).split()[-1] == "-"


def test_cli_infeasible_budget_names_the_smallest_feasible(quant_config, fp_run, mixed, tmp_path, capsys):
    out = tmp_path / "x.yaml"
    argv = ["mixed-precision", str(quant_config), "--from", str(fp_run / "model.pt"), "--output", str(out),
            *CLI_CHEAP]
    assert main(argv + ["--budget", "size=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qgait: error: infeasible budget: size=1 is 1 KiB")
    # the smallest size is every weight at 2 bits (ideal profile), named in KiB and as a --budget to give
    smallest = 2 * sum(r["n_params"] for r in mixed[1]["layers"]) / 8192
    assert f"smallest feasible size {smallest:.6g} KiB" in err
    given = float(err.split("(--budget size=")[1].split()[0])
    assert smallest <= given <= smallest * (1 + 1e-5)
    assert not out.exists() and not out.with_suffix(".json").exists()



def test_qgait_quantize_trains_the_written_config(mixed, fp_run, tmp_path):
    from qgait.engine.checkpoint import load_inference_model
    from qgait.workflows.quantize import run_quantize

    out, report, _ = mixed
    cfg = load_config(out)
    summary = run_quantize(cfg, fp_run / "model.pt", tmp_path / "q", progress=False)
    n = len(report["allocation"]["bit_map"])
    assert summary["bits"] == f"mixed (base W4A4, {n} bit_map entries)"
    assert json.loads((tmp_path / "q" / "summary.json").read_text())["bits"] == summary["bits"]
    model = load_inference_model(tmp_path / "q" / "model.pt")[0]
    got = {name: (m.weight_quantizer.bits, None if m.input_quantizer is None else m.input_quantizer.bits)
           for name, m in quant_layers(model)}
    assert got == {name: (v["weight"], v.get("act")) for name, v in report["allocation"]["bit_map"].items()}


def test_baseline_methods_fill_the_same_budget_and_cost_no_less(mixed, quant_config, fp_run, tmp_path):
    """--method hessian / random (the table's other rows): same budget, each written config reads back with its
    bit map, and neither has a smaller summed Omega than LCPAQ's optimum."""
    _, lcpaq, _ = mixed
    bounds = lcpaq["budget"]["bounds"]
    for method in ("hessian", "random"):
        out = tmp_path / f"{method}.yaml"
        rep = run_mixed_precision(quant_config, fp_run / "model.pt", "size=w3a3,bops=w3a3", out, progress=False,
                                  method=method, seed=3, **CHEAP)
        assert rep["method"] == method
        alloc = rep["allocation"]
        for k, b in bounds.items():
            assert alloc["metrics"][k] <= b * (1 + 1e-9)
        if method == "random":
            assert alloc["metrics"]["size_bits"] >= 0.97 * bounds["size_bits"]
        if method == "hessian":
            assert {v.get("act") for v in alloc["bit_map"].values() if "act" in v} <= {3}
        assert alloc["cost"] >= lcpaq["allocation"]["cost"] - 1e-12
        back = load_config(out).quant.config.bit_map
        assert {n: v.model_dump(exclude_none=True) for n, v in back.items()} == alloc["bit_map"]
        assert f"--method {method}" in out.read_text()
    with pytest.raises(ValueError, match="size=wXaY or bops=wXaY"):
        run_mixed_precision(quant_config, fp_run / "model.pt", "size=3", tmp_path / "h2.yaml", progress=False,
                            method="hessian", **CHEAP)
