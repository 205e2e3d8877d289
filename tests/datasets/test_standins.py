"""Each dataset end to end on its stand-in: released layout -> store -> a few training steps of a tiny model ->
embeddings of the test identities -> the dataset's protocol (and GREW's submission file)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from qgait.config import load_config
from qgait.data.partition import load_partition
from qgait.data.pretreat import pretreat_folder
from qgait.data.store import SequenceStore, build_store
from qgait.engine.checkpoint import load_inference_model
from qgait.evaluation.ccpg import evaluate_ccpg
from qgait.evaluation.cross_view import evaluate_cross_view
from qgait.evaluation.extract import extract_embeddings
from qgait.evaluation.gait3d import evaluate_gait3d
from qgait.evaluation.grew import evaluate_grew, grew_submission_rows, write_grew_submission
from qgait.evaluation.runner import evaluate_on_store
from qgait.evaluation.sustech1k import evaluate_sustech1k
from qgait.workflows.train import run_train

from .standins import write_ccpg, write_gait3d, write_grew, write_oumvlp, write_sustech1k

REPO = Path(__file__).resolve().parents[2]


def train_tiny(store: Path, partition: str, out: Path, protocol: str | None = None) -> tuple:
    """Two training steps of a tiny GaitBase on ``store`` (with ``protocol``: the workflow's own final
    evaluation with it, checked here); returns ``(model, store, input size)``."""
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "gaitbase_casiab_cpu.yaml"),
        "name": out.name,
        "data": {"store": str(store), "source": None, "partition": partition, "p": 2, "k": 2, "train_frames": 4,
                 "test_max_frames": 8, "prefetch": False},
        "model": {"args": {"width": 0.125, "embed_dim": 16}},
        "optim": {"milestones": [3]},
        "train": {"iterations": 2, "log_every": 1, "save_every": 2, "eval_every": 0, "channels_last": False},
        **({"eval": {"protocol": protocol}} if protocol else {}),
    }))
    summary = run_train(load_config(cfg_path), out, progress=False, evaluate=protocol is not None)
    if protocol is not None:
        assert in_percent(*summary["eval"].values()) and (out / "results.md").is_file()
    model, meta = load_inference_model(summary["model"])
    return model, SequenceStore.open(store), tuple(meta["input_size"])


def embed_test(model, store: SequenceStore, partition: str, size) -> tuple:
    test = set(load_partition(partition).test)
    idx = [i for i, r in enumerate(store.records) if r.subject in test]
    emb = extract_embeddings(model, store, idx, size=size, progress=False)
    recs = [store.records[i] for i in idx]
    assert emb.ndim == 3 and emb.shape[0] == len(idx) and bool(np.isfinite(emb.numpy()).all())
    return emb, [r.subject for r in recs], [r.condition for r in recs], [r.view for r in recs]


def in_percent(*values) -> bool:
    return all(v is not None and not math.isnan(v) and 0.0 <= v <= 100.0 for v in values)


def test_gait3d_end_to_end(tmp_path):
    fake = write_gait3d(tmp_path / "Gait3D")
    summary = pretreat_folder(fake["src"], tmp_path / "store", layout="gait3d", progress=False)
    assert summary.n_sequences == 6 * 3 + 3 and not summary.skipped
    model, store, size = train_tiny(tmp_path / "store", "gait3d", tmp_path / "run", protocol="gait3d")
    emb, s, c, v = embed_test(model, store, "gait3d", size)
    probe_set = load_partition("gait3d").probe
    assert set(fake["probes"]) <= set(probe_set)
    r = evaluate_gait3d(emb, s, c, v, probe_set)
    assert r["num_probes"] == 3 and r["num_gallery"] == 9
    assert in_percent(r["rank-1"], r["rank-5"], r["rank-10"], r["mAP"], r["mINP"])
    via_store = evaluate_on_store(model, store, load_partition("gait3d").test, size, "gait3d", progress=False)
    assert via_store["rank-1"] == pytest.approx(r["rank-1"]) and via_store["mAP"] == pytest.approx(r["mAP"])


def test_grew_end_to_end(tmp_path, capsys):
    fake = write_grew(tmp_path / "GREW")
    summary = pretreat_folder(fake["src"], tmp_path / "store", layout="grew", progress=False)
    assert summary.n_sequences == 9 + 20 + 3 and not summary.skipped
    model, store, size = train_tiny(tmp_path / "store", "grew", tmp_path / "run", protocol="GREW")
    emb, s, c, v = embed_test(model, store, "grew", size)
    r = evaluate_grew(emb, s, c)
    assert r["num_probes"] == 10 and in_percent(r["rank-1"], r["rank-5"], r["rank-10"], r["rank-20"])
    assert r["rank-20"] == pytest.approx(100.0)  # 10 gallery identities: every probe's match is in the top 20
    via_store = evaluate_on_store(model, store, load_partition("grew").test, size, "GREW", progress=False)
    assert via_store["rank-5"] == pytest.approx(r["rank-5"])
    rows = grew_submission_rows(emb, s, c, v)
    out = write_grew_submission(rows, tmp_path / "grew_submission.csv")
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and sorted(line.split(",")[0] for line in lines[1:]) == sorted(fake["probe_ids"])
    assert all(len(line.split(",")) == 21 for line in lines)
    # the same file from the command line: qgait evaluate --grew-submission
    from qgait.cli import main

    sub = tmp_path / "cli" / "submission.csv"
    argv = ["evaluate", tmp_path / "run.yaml", "--checkpoint", tmp_path / "run" / "model.pt", "--quiet",
            "--grew-submission", sub, "--output-dir", tmp_path / "cli"]
    assert main([str(a) for a in argv]) == 0
    assert sub.read_text() == out.read_text()
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2 and "--overwrite" in capsys.readouterr().err  # never overwritten
    ccpg_cfg = tmp_path / "ccpg.yaml"
    ccpg_cfg.write_text((tmp_path / "run.yaml").read_text().replace("protocol: GREW", "protocol: ccpg"))
    assert main([str(a) for a in ["evaluate", ccpg_cfg, "--checkpoint", tmp_path / "run" / "model.pt",
                                  "--grew-submission", tmp_path / "x.csv", "--quiet"]]) == 2
    assert "needs the GREW protocol" in capsys.readouterr().err


def test_oumvlp_end_to_end_both_variants(tmp_path):
    write_oumvlp(tmp_path / "OUMVLP")
    build_store(tmp_path / "OUMVLP", tmp_path / "store", progress=False)
    model, store, size = train_tiny(tmp_path / "store", "oumvlp", tmp_path / "run", protocol="ou-mvlp-valid")
    emb, s, c, v = embed_test(model, store, "oumvlp", size)
    miss = evaluate_cross_view(emb, s, c, v, "OU-MVLP")
    valid = evaluate_cross_view(emb, s, c, v, "OU-MVLP-valid")
    assert in_percent(miss["mean"], valid["mean"])
    # 00006 has no gallery sequence at 180: its probes are misses in OU-MVLP, left out in OU-MVLP-valid
    assert valid["sets"]["NM"]["num_probe_pairs_excluded"] == 3
    assert valid["mean"] >= miss["mean"]


def test_ccpg_end_to_end(tmp_path):
    write_ccpg(tmp_path / "CCPG")
    build_store(tmp_path / "CCPG", tmp_path / "store", progress=False)
    model, store, size = train_tiny(tmp_path / "store", "ccpg", tmp_path / "run", protocol="ccpg")
    r = evaluate_ccpg(*embed_test(model, store, "ccpg", size))
    assert list(r["sets"]) == ["CL", "UP", "DN", "BG"] and not r["skipped_sets"]
    assert r["views"] == ["01", "02"]
    assert in_percent(r["mean"], *(x["rank-1"] for x in r["sets"].values()))


def test_sustech1k_end_to_end(tmp_path):
    fake = write_sustech1k(tmp_path / "SUSTech1K")  # 16 modality pickles per view folder, as released
    summary = build_store(tmp_path / "SUSTech1K", tmp_path / "store", progress=False)
    assert summary.n_sequences == len(fake["silhouettes"]) and not summary.skipped
    imported = SequenceStore.open(tmp_path / "store")
    for i, r in enumerate(imported.records):  # the aligned camera silhouettes, not another modality
        assert np.array_equal(imported.frames(i), fake["silhouettes"][(r.subject, r.condition, r.view)])
    model, store, size = train_tiny(tmp_path / "store", "sustech1k", tmp_path / "run", protocol="sustech1k")
    r = evaluate_sustech1k(*embed_test(model, store, "sustech1k", size))
    assert {"Normal", "Bag", "Clothing", "Night", "Overall"} <= set(r["sets"])
    assert r["sets"]["Overall"]["probe_conditions"] == ["01-nm", "02-bg", "03-cl", "04-nt"]
    assert in_percent(r["mean"], *(x["rank-1"] for x in r["sets"].values()))
