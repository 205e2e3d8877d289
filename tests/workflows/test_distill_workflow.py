"""GaitKD distillation workflow (issue 14) on real CASIA-B subjects: a few-iteration distillation from a small
trained teacher logs the KD terms, resumes and saves a student that reloads strictly without teacher or
connector weights; a teacher of another width / part count works through the connector; bad teachers are refused
before training with the file named; ``qgait quantize --teacher`` adds the KD terms to the QAT stages."""

from __future__ import annotations

import json

import pytest
import torch

from qgait.cli import main
from qgait.config import load_config
from qgait.engine.checkpoint import CheckpointError, load_checkpoint, load_inference_model, save_atomic
from qgait.models import build_model
from qgait.workflows.distill import load_teacher, run_distill
from qgait.workflows.quantize import run_quantize
from qgait.workflows.train import run_train


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_run(small_config_file, tmp_path_factory):
    cfg = load_config(small_config_file, ["train.iterations=3"])
    out = tmp_path_factory.mktemp("teacher")
    run_train(cfg, out, progress=False, evaluate=False)
    return out


def test_distill_logs_kd_terms_resumes_and_saves_the_student_only(small_config_file, teacher_run, tmp_path):
    out = tmp_path / "kd"
    cfg = load_config(small_config_file, ["train.iterations=2", "train.save_every=1"])
    assert cfg.distill is None  # defaults: GaitKD's reference (KL 1, AB 0.003)
    summary = run_distill(cfg, [teacher_run / "model.pt"], out, progress=False, evaluate=False)
    assert summary["teachers"] == [str(teacher_run / "model.pt")]
    log = _log(out)
    assert [(r["stage"], r["iteration"]) for r in log] == [("distill", 1), ("distill", 2)]
    assert all({"loss/kd_kl", "loss/kd_ab", "loss/triplet", "loss/ce"} <= set(r) for r in log)
    assert all(r["loss/kd_kl"] >= 0 and r["loss/kd_ab"] >= 0 for r in log)

    # extend by one iteration: resumes from last.pt (a distill section set explicitly, ka_lsr calibration)
    cfg2 = load_config(small_config_file, ["train.iterations=3", "train.save_every=1",
                                           "distill={kl: {calibration: ka_lsr}}"])
    run_distill(cfg2, [teacher_run / "last.pt"], out, progress=False, evaluate=True)
    assert [r["iteration"] for r in _log(out)] == [1, 2, 3]
    assert json.loads((out / "results.json").read_text())["model"] == "tiny (FP32, distilled)"

    ck = load_checkpoint(out / "model.pt")
    assert ck["kind"] == "qgait-model" and ck["teachers"] == [str(teacher_run / "last.pt")]
    assert not [k for k in ck["state_dict"] if "teacher" in k or "connector" in k]
    fresh = build_model(cfg.model.name, **cfg.model.args)
    fresh.load_state_dict(ck["state_dict"], strict=True)
    model, _ = load_inference_model(out / "model.pt")
    x = torch.rand(2, 4, *cfg.data.input_size)
    torch.testing.assert_close(model(x), fresh.eval()(x))
    # the distilled student is itself a teacher (its training checkpoint too)
    assert load_teacher(out / "last.pt").num_classes == load_teacher(teacher_run / "model.pt").num_classes


def test_heterogeneous_teacher_goes_through_a_connector(small_config_file, tmp_path):
    big = tmp_path / "big"
    cfg_t = load_config(small_config_file, ["train.iterations=1", "model.args.embed_dim=24",
                                            "model.args.bins=[4]"])
    run_train(cfg_t, big, progress=False, evaluate=False)
    t = load_teacher(big / "last.pt")
    assert (t.embed_dim, t.parts) == (24, 4)

    out = tmp_path / "kd"
    cfg = load_config(small_config_file, ["train.iterations=2", "distill={feature_mse: {weight: 0.1}}"])
    run_distill(cfg, [big / "model.pt"], out, progress=False, evaluate=False)
    assert all({"loss/kd_kl", "loss/kd_ab", "loss/kd_mse"} <= set(r) for r in _log(out))
    train_state = load_checkpoint(out / "last.pt")["model"]
    assert train_state["connectors.teacher.weight"].shape == (8, 24, 16)  # student parts, c_t, c_s
    ck = load_checkpoint(out / "model.pt")
    build_model(cfg.model.name, **cfg.model.args).load_state_dict(ck["state_dict"], strict=True)


def _variant(src, dest, **changes):
    ck = load_checkpoint(src)
    ck.update(changes)
    save_atomic(ck, dest)
    return dest


def test_bad_teachers_are_refused_before_training(small_config_file, teacher_run, tmp_path):
    cfg = load_config(small_config_file, ["train.iterations=2"])
    src = teacher_run / "model.pt"
    head = load_checkpoint(src)["head_state_dict"]
    bad_classes = {**head, "weight": torch.randn(*head["weight"].shape[:2], head["weight"].shape[-1] + 2)}
    cases = {
        "missing": (tmp_path / "nope.pt", "checkpoint not found"),
        "headless": (_variant(src, tmp_path / "headless.pt", head_state_dict=None), "no BNNeck head"),
        "classes": (_variant(src, tmp_path / "classes.pt", head_state_dict=bad_classes, num_classes=5),
                    "5 classes, the student has 3"),
        "size": (_variant(src, tmp_path / "size.pt", input_size=[64, 44]), "input size [64, 44]"),
    }
    for name, (path, what) in cases.items():
        out = tmp_path / f"run_{name}"
        with pytest.raises((ValueError, CheckpointError)) as e:
            run_distill(cfg, [path], out, progress=False, evaluate=False)
        assert str(path) in str(e.value) and what in str(e.value), (name, str(e.value))
        assert not (out / "last.pt").exists() and not (out / "train_log.jsonl").exists()
    # a headless teacher is fine when no logit term is on (AB only)
    out = tmp_path / "ab_only"
    cfg_ab = load_config(small_config_file, ["train.iterations=1", "distill={kl: {weight: 0}}"])
    run_distill(cfg_ab, [cases["headless"][0]], out, progress=False, evaluate=False)
    assert "loss/kd_ab" in _log(out)[0] and "loss/kd_kl" not in _log(out)[0]
    # the CLI reports the refusal as an error naming the file
    assert main(["distill", str(small_config_file), "--teacher", str(tmp_path / "nope.pt"), "--quiet"]) == 2


def test_quantize_with_teachers_adds_the_kd_terms(small_config_file, teacher_run, tmp_path):
    cfg = load_config(small_config_file, [
        "quant.calibration_batches=1", "quant.stage1={iterations: 2, lr: 0.01, rounding: ste}",
        "quant.stage2={iterations: 0}", "quant.plot=false", "data.test_subjects_limit=2",
    ])
    out = tmp_path / "q"
    summary = run_quantize(cfg, teacher_run / "last.pt", out, progress=False,
                           fp_results={"NM": 0.0, "BG": 0.0, "CL": 0.0, "mean": 0.0},
                           teachers=[teacher_run / "model.pt"], teacher_cache=tmp_path / "cache")
    assert summary["kd"] == {"stage1": ["kd_ab", "kd_kl"]} and summary["idc"] == {"stage1": True}
    assert [(c["hits"], c["misses"]) for c in summary["teacher_cache"]] == [(0, 2)]  # two stage-1 batches
    log = _log(out)
    assert [r["stage"] for r in log] == ["stage1", "stage1"]
    assert all({"loss/kd_kl", "loss/kd_ab", "loss/idc"} <= set(r) for r in log)
    assert load_checkpoint(out / "model.pt")["kind"] == "qgait-quant-model"


def test_resuming_with_another_teacher_is_refused(small_config_file, teacher_run, tmp_path):
    """Issue 14: a distillation run folder remembers its teachers by their weights; resuming it with another one is
    a one-line error, before anything in the folder changes; model.pt and last.pt of one run are the same teacher."""
    from qgait.workflows.resume import ResumeMismatch

    out = tmp_path / "kd"
    cfg = load_config(small_config_file, ["train.iterations=1", "train.save_every=1"])
    run_distill(cfg, [teacher_run / "model.pt"], out, progress=False, evaluate=False)
    recorded = json.loads((out / "teachers.json").read_text())
    assert [t["path"] for t in recorded] == [str(teacher_run / "model.pt")] and len(recorded[0]["sha256"]) == 64

    other = tmp_path / "other_teacher"
    run_train(load_config(small_config_file, ["train.iterations=2", "train.seed=7"]), other, progress=False,
              evaluate=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cfg2 = load_config(small_config_file, ["train.iterations=2", "train.save_every=1"])
    with pytest.raises(ResumeMismatch, match="other teachers"):
        run_distill(cfg2, [other / "model.pt"], out, progress=False, evaluate=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    rc = main(["distill", str(small_config_file), "--teacher", str(other / "model.pt"), "--output-dir", str(out),
               "--set", "train.iterations=2", "--quiet", "--no-eval"])
    assert rc == 2
    # the same teacher from its training checkpoint resumes
    run_distill(cfg2, [teacher_run / "last.pt"], out, progress=False, evaluate=False)
    assert [r["iteration"] for r in _log(out)] == [1, 2]


def test_gaitset_teacher_distils_a_gaitbase_student(small_config_file, small_store, tmp_path):
    """The study's `hetero` row in miniature: a GaitSet teacher (another architecture, 2 x 7 pyramid parts, no BNNeck
    head, so no logits) gives AB only to a GaitBase student through part truncation; a logit term is refused."""
    import yaml

    from tests.conftest import REPO

    cfg_file = tmp_path / "gaitset_tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "gaitset_casiab_cpu.yaml"), "name": "gaitset_tiny",
        "data": {"store": str(small_store.path), "source": None, "p": 2, "k": 4, "train_frames": 4,
                 "test_max_frames": 8, "prefetch": False},
        "model": {"args": {"width": 0.25, "bins": [4, 2, 1], "embed_dim": 16}},
        "train": {"iterations": 1, "log_every": 1, "save_every": 1, "eval_every": 0, "channels_last": False},
    }))
    run_train(load_config(cfg_file), tmp_path / "gaitset", progress=False, evaluate=False)
    t = load_teacher(tmp_path / "gaitset" / "model.pt")
    assert (t.parts, t.embed_dim, t.num_classes) == (14, 16, None)

    out = tmp_path / "kd"
    cfg = load_config(small_config_file, ["train.iterations=2",
                                          "distill={part_align: truncate, kl: {weight: 0}, ab: {weight: 0.003}}"])
    run_distill(cfg, [tmp_path / "gaitset" / "model.pt"], out, progress=False, evaluate=False)
    log = _log(out)
    assert len(log) == 2 and all("loss/kd_ab" in r and "loss/kd_kl" not in r for r in log)
    assert all(r["loss/kd_ab"] >= 0 for r in log)
    ck = load_checkpoint(out / "model.pt")
    build_model(cfg.model.name, **cfg.model.args).load_state_dict(ck["state_dict"], strict=True)

    with pytest.raises(ValueError, match="no BNNeck head"):  # the default config has the logit term on
        run_distill(load_config(small_config_file, ["train.iterations=1"]), [tmp_path / "gaitset" / "model.pt"],
                    tmp_path / "kl", progress=False, evaluate=False)


def test_int8_teacher_distils_on_fixed_calibration_batches(small_config_file, teacher_run, tmp_path):
    """distill.teacher_amp int8 through `qgait distill`: the teacher is calibrated on the run's fixed calibration
    batches (the same on a resume) and the run logs the KD terms as with a float teacher."""
    from qgait.workflows import distill as distill_mod

    seen = []
    real = distill_mod.teacher_calibration

    def spy(batches, n=2):
        out = real(batches, n)
        seen.append(out)
        return out

    cfg = load_config(small_config_file, ["train.iterations=2", "train.save_every=1", "distill={teacher_amp: int8}"])
    mp = pytest.MonkeyPatch()
    mp.setattr(distill_mod, "teacher_calibration", spy)
    try:
        run_distill(cfg, [teacher_run / "model.pt"], tmp_path / "kd", progress=False, evaluate=False)
        cfg3 = load_config(small_config_file, ["train.iterations=3", "distill={teacher_amp: int8}"])
        run_distill(cfg3, [teacher_run / "model.pt"], tmp_path / "kd", progress=False, evaluate=False)
    finally:
        mp.undo()
    log = _log(tmp_path / "kd")
    assert [r["iteration"] for r in log] == [1, 2, 3]
    assert all({"loss/kd_kl", "loss/kd_ab"} <= set(r) and r["loss/kd_kl"] >= 0 for r in log)
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(*seen))


def test_teacher_cache_makes_a_second_student_the_same_without_the_teacher_forward(small_config_file, teacher_run,
                                                                                   tmp_path, monkeypatch):
    """Two runs of one seed and teacher: the second reads every teacher output from the cache (the teacher's own
    forward never runs) and trains the bit-identical student."""
    cfg = load_config(small_config_file, ["train.iterations=2", "train.log_every=1"])
    cache = tmp_path / "cache"
    first = run_distill(cfg, [teacher_run / "model.pt"], tmp_path / "a", progress=False, evaluate=False,
                        teacher_cache=cache)
    assert first["teacher_cache"] == [{"dir": first["teacher_cache"][0]["dir"], "hits": 0, "misses": 2}]
    assert len(list(cache.glob("*/*/*.npz"))) == 2

    from qgait.distill import Teacher

    def no_forward(self, x):
        raise AssertionError("the teacher's forward ran despite the cache")

    monkeypatch.setattr(Teacher, "_forward", no_forward)
    assert main(["distill", str(small_config_file), "--set", "train.iterations=2", "--set", "train.log_every=1",
                 "--teacher", str(teacher_run / "model.pt"), "--output-dir", str(tmp_path / "b"), "--no-eval",
                 "--quiet", "--teacher-cache", str(cache)]) == 0
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["teacher_cache"] == [{"dir": first["teacher_cache"][0]["dir"], "hits": 2, "misses": 0}]
    a, b = (load_checkpoint(tmp_path / d / "model.pt")["state_dict"] for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss/total"] for r in _log(tmp_path / d)] for d in ("a", "b")]
    assert losses[0] == losses[1]
