"""verification_report / verification_summary (JSON-ready operating points) and plot_verification_curves."""

import json

import numpy as np
import pytest
import torch

from qgait.evaluation import (
    dir_at_fpir,
    equal_error_rate,
    genuine_impostor_scores,
    open_set_scores,
    part_distance,
    plot_verification_curves,
    split_subjects,
    tar_at_fmr,
    verification_report,
    verification_summary,
)


def embeddings(num_subjects, per_subject, seed, noise=0.6):
    """Part embeddings [n, 8, 4]: a centre per subject plus noise; labels are ints."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_subjects, 8, 4, generator=torch.Generator().manual_seed(100))
    labels = torch.arange(num_subjects).repeat_interleave(per_subject)
    return centres[labels] + noise * torch.randn(len(labels), 8, 4, generator=g), labels


@pytest.fixture(scope="module")
def data():
    probe, probe_labels = embeddings(30, 4, seed=1)
    gallery, gallery_labels = embeddings(30, 2, seed=2)
    return probe, probe_labels, gallery, gallery_labels


def test_report_matches_the_parts(data):
    probe, pl, gallery, gl = data
    r = verification_report(probe, pl, gallery, gl, metric="euc", open_set_left_out=10, open_set_seed=4)
    json.dumps(r, allow_nan=False)  # strict JSON as it is
    assert r["metric"] == "euc" and r["rates"] == "fraction"
    assert r["num_probes"] == 120 and r["num_gallery"] == 60
    assert r["num_genuine_pairs"] == 120 * 2 and r["num_impostor_pairs"] == 120 * 60 - 240
    gen, imp = genuine_impostor_scores(part_distance(probe, gallery), pl, gl)
    eer, t = equal_error_rate(gen, imp)
    assert r["eer"] == pytest.approx(eer) and r["eer_threshold"] == pytest.approx(t)
    assert 0.0 < r["eer"] < 0.5
    assert [row["fmr_target"] for row in r["tar_at_fmr"]] == [1e-2, 1e-3, 1e-4]
    assert [row["resolved"] for row in r["tar_at_fmr"]] == [True, True, False]  # 6,960 impostor pairs
    assert r["tar_at_fmr"][2]["tar"] is None  # NaN -> null
    assert r["tar_at_fmr"][0]["tar"] == pytest.approx(tar_at_fmr(gen, imp, (1e-2,))[0]["tar"])
    roc = r["roc_curve"]
    assert len(roc["fmr"]) == len(roc["fnmr"]) == len(roc["threshold"]) <= 200
    assert roc["fmr"][-1] == 1.0 and roc["fnmr"][-1] == 0.0

    o = r["open_set"]
    enrolled, left_out = split_subjects(gl.tolist(), 10, seed=4)
    assert o["enrolled_subjects"] == enrolled and o["left_out_subjects"] == left_out and len(left_out) == 10
    assert o["num_gallery"] == 20 * 2 and o["num_mated_probes"] == 80 and o["num_non_mated_probes"] == 40
    keep = np.isin(gl.numpy(), enrolled)
    s = open_set_scores(part_distance(probe, gallery[keep]), pl, gl[keep])
    assert o["rank1_mated"] == pytest.approx(s.mated_hits.size / 80)
    ref = dir_at_fpir(s)
    assert [row["resolved"] for row in o["dir_at_fpir"]] == [True, False, False]  # 40 non-mated probes
    assert o["dir_at_fpir"][0]["dir"] == pytest.approx(ref[0]["dir"])
    assert max(1 - x for x in o["curve"]["fnir"]) == pytest.approx(o["rank1_mated"])


def test_better_embeddings_score_better(data):
    probe, pl, gallery, gl = data
    clean = verification_report(*embeddings(30, 4, 1, noise=0.2), *embeddings(30, 2, 2, noise=0.2), metric="cos")
    noisy = verification_report(probe, pl, gallery, gl, metric="cos")
    assert clean["eer"] < noisy["eer"]
    assert clean["tar_at_fmr"][0]["tar"] > noisy["tar_at_fmr"][0]["tar"]


def test_summary_without_open_set_and_bad_input():
    dist = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    r = verification_summary(dist, ["a", "b", "c"], ["a", "b"], open_set_left_out=None)
    assert r["open_set"] is None and r["eer"] == pytest.approx(0.0)
    assert r["num_genuine_pairs"] == 2 and r["num_impostor_pairs"] == 4
    with pytest.raises(ValueError, match="NaN or infinite"):
        verification_summary(np.array([[0.1, np.nan], [0.8, 0.2]]), ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="probe_labels has 2 entries"):
        verification_summary(dist, ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="targets"):
        verification_summary(dist, ["a", "b", "c"], ["a", "b"], fmr_targets=(1.0, 5.0))
    with pytest.raises(TypeError, match="unexpected keyword"):
        verification_report(torch.zeros(2, 3, 2), [0, 1], torch.zeros(2, 3, 2), [0, 1], open_set_sed=1)


def test_plot_writes_png(data, tmp_path):
    probe, pl, gallery, gl = data
    reports = {
        "fp32": verification_report(probe, pl, gallery, gl),
        "w4a4": json.loads(json.dumps(verification_report(probe * 1.1, pl, gallery, gl))),  # as read from JSON
    }
    path = plot_verification_curves(reports, tmp_path / "sub" / "curves.png", title="test")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no 'roc_curve'"):
        plot_verification_curves({"x": {"eer": 0.1}}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        plot_verification_curves({}, tmp_path / "bad.png")
