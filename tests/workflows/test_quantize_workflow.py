"""QGait workflow on real CASIA-B subjects: a short two-stage run completes, evaluates and resumes; W8A8 of the
trained zoo model is close to FP on real frames; a quantized checkpoint reloads with identical outputs; the main
job's deployment step exports the QGait model, checks its parity and benchmarks it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qgait.config import load_config
from qgait.data.loader import iter_test_sequences
from qgait.engine.checkpoint import CheckpointError, load_checkpoint, load_inference_model
from qgait.evaluation.report import rank1_row
from qgait.models import build_model
from qgait.quant import QuantConfig, calibrate_, quantize_
from qgait.workflows.quantize import run_quantize
from qgait.workflows.main_job import run_deploy
from qgait.workflows.train import run_train

ZOO_FP = Path(__file__).resolve().parents[2] / "zoo" / "gaitbase_casiab_cpu" / "model.pt"


@pytest.fixture(scope="module")
def fp_run(small_config_file, tmp_path_factory):
    cfg = load_config(small_config_file)
    out = tmp_path_factory.mktemp("fp")
    run_train(cfg, out, progress=False, evaluate=False)
    return out


def quant_overrides(stage1=3, stage2=2):
    return [
        "quant.calibration_batches=2",
        f"quant.stage1={{iterations: {stage1}, lr: 0.01, rounding: ste}}",
        f"quant.stage2={{iterations: {stage2}, lr: 0.001, rounding: soft_backward}}",
        "quant.config.weight_bits=4", "quant.config.act_bits=4",
        "data.test_subjects_limit=2", "train.save_every=1",
    ]


def test_two_stage_qgait_runs_evaluates_and_resumes(small_config_file, fp_run, tmp_path):
    cfg = load_config(small_config_file, quant_overrides())
    out = tmp_path / "q"
    summary = run_quantize(cfg, fp_run / "last.pt", out, progress=False)
    for stage in ("stage1", "stage2", "fp"):
        row = summary["stages"][stage]
        assert set(row) == {"NM", "BG", "CL", "mean"} and 0 <= row["mean"] <= 100
    assert summary["idc"] == {"stage1": True, "stage2": True}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["stage1"] * 3 + ["stage2"] * 2
    assert all("loss/idc" in r for r in log)
    assert (out / "interclass_distances.png").stat().st_size > 1000
    assert load_checkpoint(out / "model.pt")["kind"] == "qgait-quant-model"
    # issue 13: every evaluation carries the bootstrap's per-subject counts and the embedding diagnostics; the
    # quantized stages get their drift against FP once the FP model is evaluated (here after them)
    for stage in ("stage1", "stage2", "fp"):
        res = json.loads((out / f"{stage}_results.json").read_text())
        assert res["per_subject"]["subjects"] and len(res["embedding_stats"]["part_norm"]) == 8
        assert ("embedding_drift" in res) == (stage != "fp")
    assert set(summary["embedding_drift"]) == {"stage1", "stage2"}

    # extend stage 2 by two iterations: stage 1 is complete (not redone), stage 2 resumes from its checkpoint
    for f in out.glob("*_results.json"):
        f.unlink()
    cfg2 = load_config(small_config_file, quant_overrides(stage2=4))
    run_quantize(cfg2, fp_run / "last.pt", out, progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["stage"] == "stage2"] == [1, 2, 3, 4]
    assert [r["iteration"] for r in log if r["stage"] == "stage1"] == [1, 2, 3]

    # a stage-2 variant from the same stage 1 (--stage1-from): stage 1 is not retrained, its results are reused
    cfg3 = load_config(small_config_file, quant_overrides() + ["quant.stage2.rounding=ste"])
    summary3 = run_quantize(cfg3, fp_run / "last.pt", tmp_path / "variant", progress=False, stage1_from=out)
    log3 = [json.loads(line) for line in (tmp_path / "variant" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["iteration"]) for r in log3] == [("stage2", 1), ("stage2", 2)]
    assert summary3["stages"]["stage1"] == rank1_row(json.loads((out / "stage1_results.json").read_text()))
    s1 = load_inference_model(tmp_path / "variant" / "stage1_model.pt")[0].state_dict()
    ref = load_inference_model(out / "stage1_model.pt")[0].state_dict()
    assert all(torch.equal(s1[k], ref[k]) for k in ref)
    with pytest.raises(CheckpointError, match="stage1_last.pt"):
        run_quantize(cfg3, fp_run / "last.pt", tmp_path / "v2", progress=False, stage1_from=tmp_path / "nowhere")
    cfg4 = load_config(small_config_file, quant_overrides(stage1=5))
    with pytest.raises(ValueError, match="stopped at iteration 3"):
        run_quantize(cfg4, fp_run / "last.pt", tmp_path / "v3", progress=False, stage1_from=out)


def test_stage2_only_idd_and_soft_variants(small_config_file, fp_run, tmp_path):
    """IDD in stage 2 only, the soft stage on activations only with LSQ's step gradient, and no stage-1
    evaluation (the fair protocol's shared start, docs/lowbit.md)."""
    cfg = load_config(small_config_file, quant_overrides(stage1=2, stage2=2) + [
        "quant.idc=null", "quant.idd={weight: 100.0, temperature: 0.1, stages: [2]}", "quant.evaluate_stage1=false",
        "quant.config.soft={apply_to: activations, step_grad: ste, alpha_start: 1.0, alpha_end: 3.0}"])
    out = tmp_path / "v"
    summary = run_quantize(cfg, fp_run / "last.pt", out, progress=False, fp_results={"mean": 0.0})
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [("loss/idd" in r) for r in log] == [False, False, True, True]
    assert summary["idd"] == {"stage1": False, "stage2": True} and summary["idc"] == {"stage1": False, "stage2": False}
    assert not (out / "stage1_results.json").exists() and "stage1" not in summary["stages"]
    assert (out / "stage2_results.json").is_file()


def test_bn_reestimation_after_the_last_stage(small_config_file, fp_run, tmp_path):
    """quant.bn_reestimate_batches: model.pt carries batch-norm statistics re-estimated with the final weights
    (the training checkpoint keeps the trained ones); the same on a resumed, finished run."""
    cfg = load_config(small_config_file, quant_overrides(stage1=2, stage2=1) + [
        "quant.idc=null", "quant.evaluate_stage1=false", "quant.plot=false", "quant.bn_reestimate_batches=2"])
    out = tmp_path / "bn"
    summary = run_quantize(cfg, fp_run / "last.pt", out, progress=False, fp_results={"mean": 0.0})
    assert summary["bn_reestimated_batches"] == 2
    saved = load_checkpoint(out / "model.pt")["state_dict"]
    trained = {k[len("model."):]: v for k, v in load_checkpoint(out / "stage2_last.pt")["model"].items()
               if k.startswith("model.")}
    keys = [k for k in saved if k.endswith("running_mean")]
    assert keys and any(not torch.equal(saved[k], trained[k]) for k in keys)
    assert all(torch.equal(saved[k], trained[k]) for k in saved if "running" not in k and "num_batches" not in k)
    first = {k: saved[k].clone() for k in keys}
    run_quantize(cfg, fp_run / "last.pt", out, progress=False, fp_results={"mean": 0.0})  # finished: resumes
    again = load_checkpoint(out / "model.pt")["state_dict"]
    assert all(torch.equal(again[k], first[k]) for k in keys)


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_qat_memory_format(small_config_file, fp_run, tmp_path, layout):
    """quant.channels_last: the QAT student trains channels-last: the fused fake quantizers see channels-last
    activations and keep them so (no copy into NCHW order), and model.pt holds channels-last conv weights. Without
    it (the default) QAT stays NCHW even when the FP recipe trains channels-last, and no tensor takes the
    channels-last path, so NCHW runs are computed exactly as before."""
    import qgait.quant.fake_quant as fq

    extra = ["train.channels_last=true"] + (["quant.channels_last=true"] if layout == "channels_last" else [])
    cfg = load_config(small_config_file, quant_overrides(stage1=2, stage2=0) + extra + [
        "quant.idc=null", "quant.evaluate_stage1=false", "quant.plot=false"])
    orders = []
    real = fq._memory_order

    def spy(x):
        orders.append(real(x))
        return orders[-1]

    old_min = fq.COMPILE_MIN_NUMEL
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fq, "_memory_order", spy)
        fq.COMPILE_MIN_NUMEL = 0  # the small config's activations are below the default size threshold
        try:
            run_quantize(cfg, fp_run / "last.pt", tmp_path / layout, progress=False, fp_results={"mean": 0.0})
        finally:
            fq.COMPILE_MIN_NUMEL = old_min
    assert orders, "the fused kernels were not used"
    convs = [v for k, v in load_checkpoint(tmp_path / layout / "model.pt")["state_dict"].items()
             if k.endswith("weight") and v.dim() == 4 and v.shape[2] > 1]
    assert convs
    if layout == "channels_last":
        assert any(o is not None for o in orders)
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    else:
        assert all(o is None for o in orders)
        assert all(w.is_contiguous() for w in convs)


def test_fp_reference_trains_the_stages_without_quantizers(small_config_file, fp_run, tmp_path):
    """quant.fp_reference: the same stages, batches and losses, no quantizer anywhere; model.pt is an FP model
    that differs from the start (it trained) and loads as one; the summary says what it is."""
    from qgait.quant import iter_quantizers

    cfg = load_config(small_config_file, quant_overrides(stage1=2, stage2=1) + [
        "quant.idc=null", "quant.evaluate_stage1=false", "quant.plot=false", "quant.fp_reference=true"])
    out = tmp_path / "fpref"
    summary = run_quantize(cfg, fp_run / "last.pt", out, progress=False, fp_results={"mean": 0.0})
    assert summary["quantizer"] == "none" and summary["bits"].startswith("FP")
    assert 0 <= summary["stages"]["stage2"]["mean"] <= 100
    ck = load_checkpoint(out / "model.pt")
    assert ck["kind"] == "qgait-model" and ck.get("quant_config") is None
    model, _ = load_inference_model(out / "model.pt")
    assert not list(iter_quantizers(model)) and not (out / "quant_summary.txt").exists()
    start = {k[len("model."):]: v for k, v in load_checkpoint(fp_run / "last.pt")["model"].items()
             if k.startswith("model.")}
    conv = next(k for k in ck["state_dict"] if k.endswith("weight") and ck["state_dict"][k].dim() == 4)
    assert not torch.equal(ck["state_dict"][conv], start[conv])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["stage1"] * 2 + ["stage2"]
    with pytest.raises(ValueError, match="fp_reference"):
        load_config(small_config_file, quant_overrides() + ["quant.fp_reference=true", "quant.config.quantizer=ptq"])


def test_ptq_calibrates_and_evaluates_without_training(small_config_file, fp_run, tmp_path):
    cfg = load_config(small_config_file, quant_overrides() + ["quant.config.quantizer=ptq"])
    summary = run_quantize(cfg, fp_run / "model.pt", tmp_path / "ptq", progress=False)
    assert "final" in summary["stages"] and "stage1" not in summary["stages"]
    assert not (tmp_path / "ptq" / "train_log.jsonl").exists()
    assert json.loads((tmp_path / "ptq" / "summary.json").read_text())["iterations"] == 0


def _real_frames(store, n=3):
    idx = store.select(subjects=["075"], conditions=["nm-01"])[:n]
    return [x for _, x in iter_test_sequences(store, idx, size=(32, 22), max_frames=30)]


def test_w8a8_embeddings_close_to_fp_on_real_frames_and_reload_identical(small_store, tmp_path):
    torch.manual_seed(0)
    args = dict(width=0.25, bins=(8,), embed_dim=64)
    fp = build_model("gaitbase", **args).eval()
    q = quantize_(build_model("gaitbase", **args), QuantConfig(weight_bits=8, act_bits=8))
    q.load_state_dict(fp.state_dict(), strict=False)
    seqs = _real_frames(small_store)
    calibrate_(q, seqs)
    q.eval()
    with torch.no_grad():
        cos = [torch.nn.functional.cosine_similarity(fp(x).flatten(), q(x).flatten(), dim=0).item() for x in seqs]
    assert min(cos) > 0.99, cos

    from qgait.engine.checkpoint import save_inference_model

    path = save_inference_model(tmp_path / "q.pt", q, "gaitbase", args, (32, 22),
                                quant_config=QuantConfig(weight_bits=8, act_bits=8).model_dump(mode="json"))
    q2, meta = load_inference_model(path)
    assert meta["kind"] == "qgait-quant-model"
    with torch.no_grad():
        for x in seqs:
            assert torch.equal(q(x), q2(x))


def test_w8a8_of_the_trained_zoo_model_is_close_to_fp_on_real_test_frames(small_store):
    """Issue 3: a W8A8 model's embeddings are within cosine 0.99 of FP, on the trained CPU-recipe checkpoint and
    real CASIA-B test sequences (calibrated on training subjects, as ``qgait quantize`` does)."""
    from qgait.export.ort_ptq import store_calibration_batches

    if not ZOO_FP.is_file():
        pytest.skip(f"{ZOO_FP} missing")
    fp, meta = load_inference_model(ZOO_FP)
    q, _ = load_inference_model(ZOO_FP)
    quantize_(q, QuantConfig(weight_bits=8, act_bits=8))
    calibrate_(q, store_calibration_batches(small_store, ["001", "002", "003"], tuple(meta["input_size"]),
                                            sequences=4, frames=30))
    q.eval()
    seqs = _real_frames(small_store, n=3) + [x for _, x in iter_test_sequences(
        small_store, small_store.select(subjects=["076"], conditions=["cl-01"])[:2], size=(32, 22), max_frames=30)]
    with torch.no_grad():
        cos = [torch.nn.functional.cosine_similarity(fp(x).flatten(), q(x).flatten(), dim=0).item() for x in seqs]
    assert min(cos) > 0.99, cos


def test_main_job_deploy_step_exports_checks_parity_and_benchmarks(small_config_file, small_store, fp_run, tmp_path):
    cfg = load_config(small_config_file, quant_overrides(stage1=2, stage2=1) + ["quant.plot=false"])
    qdir = tmp_path / "q"
    run_quantize(cfg, fp_run / "model.pt", qdir, progress=False)
    out = run_deploy(cfg, fp_run / "model.pt", qdir / "model.pt", tmp_path / "deploy", quick=True, progress=False,
                     bench_variants=["torch_fp32_eager", "ort_fp32", "ort_int8_given"])
    exp = out["export"]
    assert Path(exp["output"]).is_file() and exp["kind"].startswith("int8")
    assert exp["packed"]["bytes"] < exp["bytes"]  # W4 weights: two per byte
    par = out["parity"]
    assert par["sequences"] == len(small_store.select(subjects=["075", "076"]))  # every test sequence
    assert par["cosine_mean"] > 0.95 and set(par["onnx"]) == {"NM", "BG", "CL", "mean"}
    res = out["bench"]["results"]["cpu"]
    assert {"torch_fp32_eager", "ort_fp32", "ort_int8_given"} <= set(res)
    assert all("error" not in r and r["batch1"]["median_ms"] > 0 for k, r in res.items() if k != "size")
    assert out["bench"]["config"]["quant_checkpoint"] == str(qdir / "model.pt")
    saved = json.loads((tmp_path / "deploy" / "deploy.json").read_text())
    assert saved["parity"]["cosine_mean"] == par["cosine_mean"]
    md = (tmp_path / "deploy" / "bench_deploy.md").read_text()
    assert "ort_int8_given" in md
    cpu = out["bench"]["config"]["cpu"]  # int8 figures depend on the ISA: the benchmark says which CPU
    assert cpu["logical_cores"] >= 1 and f"VNNI: {'yes' if cpu['vnni'] else 'no'}" in md
    assert "ONNX Runtime" in out["parity_table"]
