"""Calibrated rejection (issue 17): the threshold at a target FMR on hand-made pairs, its storage in a model copy,
and ``qgait calibrate`` / ``qgait identify`` answering "unknown" beyond it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qgait.cli_gallery import main as gallery_main
from qgait.runtime import GaitEmbedder
from qgait.runtime.rejection import (RejectionThreshold, calibrate_threshold, calibration_scores, threshold_of,
                                     write_threshold)
from qgait.workflows.calibrate import decide, held_out_rates, resolve_rule

from .conftest import clustered

# scalar embeddings [n, 1, 1]: the part distance is |x - y|
VALUES = [0.0, 1.0, 10.0, 12.0, 30.0]
LABELS = ["a", "a", "b", "b", "c"]


def _emb(values):
    return np.array(values, np.float32).reshape(-1, 1, 1)


def test_calibration_scores_are_every_pair_once():
    gen, imp = calibration_scores(_emb(VALUES), LABELS)
    np.testing.assert_array_equal(gen, [1.0, 2.0])
    np.testing.assert_array_equal(imp, [9.0, 10.0, 11.0, 12.0, 18.0, 20.0, 29.0, 30.0])


@pytest.mark.parametrize("target, threshold, fmr", [(0.25, 10.0, 0.25), (0.125, 9.0, 0.125), (1.0, 30.0, 1.0)])
def test_threshold_is_the_largest_distance_within_the_target_fmr(target, threshold, fmr):
    th = calibrate_threshold(_emb(VALUES), LABELS, target, calibration={"split": "hand-made"})
    assert th.threshold == threshold and th.fmr == fmr and th.tar == 1.0
    assert (th.num_genuine, th.num_impostor) == (2, 8) and th.calibration == {"split": "hand-made"}
    assert th.accepts(threshold) and not th.accepts(np.nextafter(threshold, np.inf))


def test_calibration_refuses_what_it_cannot_resolve():
    with pytest.raises(ValueError, match="needs at least 10 impostor pairs; the calibration split gives 8"):
        calibrate_threshold(_emb(VALUES), LABELS, 0.1)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        calibrate_threshold(_emb([0, 1, 2]), ["a", "a", "a"], 0.5)
    with pytest.raises(ValueError, match="2 sequences"):
        calibrate_threshold(_emb([0, 1, 2]), ["a", "b", "c"], 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        calibrate_threshold(_emb(VALUES), LABELS, 5.0)
    with pytest.raises(ValueError, match="5 calibration embeddings but 4 labels"):
        calibrate_threshold(_emb(VALUES), LABELS[:4], 0.5)


def test_threshold_record_round_trip_and_validation():
    th = calibrate_threshold(_emb(VALUES), LABELS, 0.25)
    assert RejectionThreshold.from_dict(json.loads(json.dumps(th.to_dict()))) == th
    assert threshold_of({"kind": "fp32"}) is None
    assert threshold_of({"rejection": th.to_dict()}) == th
    with pytest.raises(ValueError, match="m.onnx: its stored rejection threshold is malformed"):
        threshold_of({"rejection": {"threshold": 1.0}}, "m.onnx")
    with pytest.raises(ValueError, match="metric"):
        RejectionThreshold(1.0, "l1", 1e-3, 0.0, 0.5, 1, 1)
    with pytest.raises(ValueError, match="finite"):
        RejectionThreshold(float("inf"), "euc", 1e-3, 0.0, 0.5, 1, 1)


def test_write_threshold_stores_it_in_a_copy_with_the_same_graph(tmp_path, model_a):
    th = calibrate_threshold(_emb(VALUES), LABELS, 0.25)
    before = model_a.read_bytes()
    out = write_threshold(model_a, tmp_path / "cal" / "model_a.cal.onnx", th)
    assert model_a.read_bytes() == before  # the input is never touched
    emb_in, emb_out = GaitEmbedder(model_a), GaitEmbedder(out)
    assert threshold_of(emb_out.meta) == th and threshold_of(emb_in.meta) is None
    assert emb_out.meta["kind"] == emb_in.meta["kind"]  # the rest of the metadata is kept
    frames = np.random.default_rng(0).integers(0, 2, (5, 16, 11)).astype(np.float32)
    np.testing.assert_array_equal(emb_in.embed(frames), emb_out.embed(frames))
    cleared = write_threshold(out, tmp_path / "cleared.onnx", None)
    assert threshold_of(GaitEmbedder(cleared).meta) is None
    with pytest.raises(ValueError, match="keeps the model's format"):
        write_threshold(model_a, tmp_path / "x.qgpack", th)


def test_resolve_rule_and_decide(tmp_path, model_a):
    th = calibrate_threshold(_emb(VALUES), LABELS, 0.25)
    emb = GaitEmbedder(write_threshold(model_a, tmp_path / "cal.onnx", th))
    rule = resolve_rule(emb, "model", "euc")
    assert rule == {"threshold": 10.0, "metric": "euc", "target_fmr": 0.25, "source": "model metadata"}
    assert resolve_rule(emb, "off") is None and resolve_rule(GaitEmbedder(model_a), "model") is None
    assert resolve_rule(emb, "2.5")["threshold"] == 2.5
    with pytest.raises(ValueError, match="calibrated for 'euc' distances, not 'cos'"):
        resolve_rule(emb, "model", "cos")
    with pytest.raises(ValueError, match="'model' or 'off'"):
        resolve_rule(emb, "high")
    assert decide([("b", 10.0), ("a", 11.0)], rule)["label"] == "b"
    d = decide([("b", 10.5), ("a", 11.0)], rule)
    assert d["label"] == "unknown" and not d["known"] and d["distance"] == 10.5 and d["threshold"] == 10.0


def test_held_out_rates_match_a_direct_count():
    gal, glab, probes, plab = clustered(12, 3, seed=4)
    enrolled = set(plab[:8])
    keep = [i for i, lab in enumerate(glab) if lab in enrolled]
    gal, glab = gal[keep], [glab[i] for i in keep]
    th = RejectionThreshold(2.0, "euc", 1e-2, 0.0, 0.5, 1, 1)
    r = held_out_rates(th, probes, plab, gal, glab)
    d = np.sqrt(((probes[:, None] - gal[None]) ** 2).sum(2)).mean(-1)  # part-averaged Euclidean [n, m]
    same = np.array(plab)[:, None] == np.array(glab)[None]
    assert r["fmr"] == pytest.approx((d[~same] <= 2.0).mean())
    assert r["tar"] == pytest.approx((d[same] <= 2.0).mean())
    mated = np.array([lab in enrolled for lab in plab])
    best = d.min(1)
    assert r["fpir"] == pytest.approx((best[~mated] <= 2.0).mean())
    hit = np.array(glab)[d.argmin(1)] == np.array(plab)
    assert r["dir"] == pytest.approx((hit & (best <= 2.0))[mated].mean())
    assert (r["num_mated"], r["num_non_mated"], r["gallery_sequences"]) == (8, 4, 24)


# ---- end to end on real CASIA-B sequences, with a gait energy image per part as the "model" ----


class GEI(torch.nn.Module):
    """``[n, T, 64, 44] -> mean over T -> 4x4 average pool -> [n, 11, 16]`` (ranks real CASIA-B sensibly)."""

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        g = torch.nn.functional.avg_pool2d(silhouettes.mean(dim=1, keepdim=True), 4)
        return g.squeeze(1).transpose(1, 2)


def test_calibrate_then_identify_answers_unknown_beyond_the_threshold(small_store, tmp_path, capsys):
    from qgait.cli_deploy import main as deploy_main
    from qgait.export import export_onnx
    from qgait.workflows.identify import collect_sequences, embed_sequences

    model = export_onnx(GEI(), tmp_path / "gei.onnx", (64, 44)).path
    calib = ["--store", small_store.path, "--subjects", "001,002,003", "--views", "090"]
    rc = gallery_main([str(a) for a in ["calibrate", model, *calib, "--fmr", "0.02", "--quiet"]])
    out = capsys.readouterr()
    assert rc == 0, out.err
    cal = tmp_path / "gei.calibrated.onnx"
    assert f"wrote {cal}" in out.out and "at FMR 2e-02" in out.out
    # the stored threshold is the one an independent calibration of the same embeddings gives
    items = collect_sequences([small_store.path], "001,002,003", None, "090")
    emb = embed_sequences(GaitEmbedder(model), items)
    expect = calibrate_threshold(emb, [it.subject for it in items], 0.02)
    stored = threshold_of(GaitEmbedder(cal).meta)
    assert stored.threshold == pytest.approx(expect.threshold) and stored.fmr == expect.fmr
    assert stored.calibration["subjects"] == ["001", "002", "003"] and stored.calibration["sequences"] == len(items)
    # calibrating again onto the same file needs --overwrite; the model itself is never an output
    assert gallery_main([str(a) for a in ["calibrate", model, *calib, "--fmr", "0.02", "--quiet"]]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert gallery_main([str(a) for a in ["calibrate", model, *calib, "-o", model, "--quiet"]]) == 2
    assert "input of the command" in capsys.readouterr().err

    gallery = ["--gallery", small_store.path, "--gallery-subjects", "075", "--gallery-conditions",
               "nm-01,nm-02,nm-03,nm-04", "--gallery-views", "090"]
    probe = ["--probe", small_store.path, "--probe-subjects", "075,076", "--probe-conditions", "nm-05,nm-06",
             "--probe-views", "090"]
    rc = deploy_main([str(a) for a in ["identify", cal, *gallery, *probe, "--json", "--quiet"]])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(res) == 4
    for r in res:
        d = r["decision"]
        assert d["threshold"] == stored.threshold and d["source"] == "model metadata"
        assert d["known"] == (r["top"][0][1] <= stored.threshold)
        assert d["label"] == (r["top"][0][0] if d["known"] else "unknown")
    # a given threshold overrides the stored one: 0 rejects every probe, 'off' only ranks
    rc = deploy_main([str(a) for a in ["identify", cal, *gallery, *probe, "--threshold", "0", "--quiet"]])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("decision: unknown (nearest 075") == 4
    rc = deploy_main([str(a) for a in ["identify", cal, *gallery, *probe, "--threshold", "off", "--json",
                                       "--quiet"]])
    assert rc == 0 and all(r["decision"] is None for r in json.loads(capsys.readouterr().out))
    # the uncalibrated model ranks only, as before
    rc = deploy_main([str(a) for a in ["identify", model, *gallery, *probe, "--json", "--quiet"]])
    assert rc == 0 and all(r["decision"] is None for r in json.loads(capsys.readouterr().out))


class MaxGEI(torch.nn.Module):
    """A streamable GEI: 4x4 average pooling per frame, then a max over frames."""

    def forward(self, silhouettes: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(silhouettes, 4).amax(dim=1).transpose(1, 2)


def test_streamed_decisions_say_unknown_beyond_the_threshold(small_store, tmp_path, capsys):
    from qgait.cli_deploy import main as deploy_main
    from qgait.export import export_onnx

    model = export_onnx(MaxGEI(), tmp_path / "maxgei.onnx", (64, 44)).path
    gallery = ["--gallery", small_store.path, "--gallery-subjects", "075", "--gallery-conditions", "nm-01,nm-02",
               "--gallery-views", "090"]
    probe = ["--probe", small_store.path, "--probe-subjects", "075", "--probe-conditions", "nm-05",
             "--probe-views", "090"]
    base = ["identify", model, *gallery, *probe, "--stream", "--every", "10", "--json", "--quiet"]
    assert deploy_main([str(a) for a in base + ["--threshold", "0"]]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert all(u["label"] == "unknown" and u["nearest"] == "075" and u["threshold"] == 0.0 for u in res["updates"])
    assert deploy_main([str(a) for a in base + ["--threshold", "1e9"]]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert all(u["label"] == "075" for u in res["updates"]) and res["firm_at"] is not None
    assert deploy_main([str(a) for a in base]) == 0  # no stored threshold: labels only, as before
    (res,) = json.loads(capsys.readouterr().out)
    assert all("threshold" not in u for u in res["updates"])
