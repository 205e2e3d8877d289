"""Markdown reports and write_results."""

import json

import pytest
import torch

from qgait.evaluation import (
    CrossViewProtocol,
    evaluate_cross_view,
    format_comparison,
    format_cross_view,
    format_retrieval,
    retrieval_metrics,
    write_results,
)

TOY = CrossViewProtocol("toy", ("nm-01",), {"NM": ("nm-05",), "BG": ("bg-01",)}, ("000", "090"))
ROWS = [  # see test_eval_cross_view: NM table [[33.3, 100], [100, 33.3]], BG [[100, 33.3], [-, -]]
    ("s1", "nm-01", "000", 0.0), ("s2", "nm-01", "000", 10.0), ("s3", "nm-01", "000", 20.0),
    ("s1", "nm-01", "090", 100.0), ("s2", "nm-01", "090", 110.0), ("s3", "nm-01", "090", 120.0),
    ("s1", "nm-05", "000", 101.0), ("s2", "nm-05", "000", 111.0), ("s3", "nm-05", "000", 121.0),
    ("s1", "nm-05", "090", 2.0), ("s2", "nm-05", "090", 12.0), ("s3", "nm-05", "090", 22.0),
    ("s1", "bg-01", "000", 0.4), ("s2", "bg-01", "000", 10.4), ("s3", "bg-01", "000", 25.0),
]


@pytest.fixture
def cross_view_result():
    subjects, conditions, views, values = zip(*ROWS)
    emb = torch.tensor(values)[:, None, None]
    return evaluate_cross_view(emb, subjects, conditions, views, protocol=TOY)


def test_format_cross_view(cross_view_result):
    md = format_cross_view(cross_view_result)
    assert "## toy cross-view rank-1 (%)" in md
    assert "| | NM | BG | mean |" in md
    assert "| rank-1 | 100.0 | 33.3 | 66.7 |" in md
    # per-probe-view summary
    assert "| set | 000 | 090 | mean |" in md
    assert "| NM | 100.0 | 100.0 | 100.0 |" in md
    assert "| BG | 33.3 | - | 33.3 |" in md
    # per-set view tables: diagonal in parentheses, per-view mean last, skipped pairs as "-"
    assert "| probe \\ gallery | 000 | 090 | mean |" in md
    assert "| 000 | (33.3) | 100.0 | 100.0 |" in md
    assert "| 090 | 100.0 | (33.3) | 100.0 |" in md
    assert "| 000 | (100.0) | 33.3 | 33.3 |" in md
    assert "| 090 | - | - | - |" in md
    assert "excluded from the means" in md


def test_format_cross_view_casia_columns():
    result = {
        "protocol": "CASIA-B", "metric": "euc", "views": ["000"], "mean": 89.66666,
        "sets": {s: {"rank-1": v, "per_view": {"000": v}, "table": [[None]]} for s, v in
                 (("NM", 97.6), ("BG", 94.0), ("CL", 77.4))},
    }
    md = format_cross_view(result)
    assert "| | NM | BG | CL | mean |" in md
    assert "| rank-1 | 97.6 | 94.0 | 77.4 | 89.7 |" in md


def test_format_retrieval():
    # probe a: hit at 1 (AP 1); probe b: positive at 2 (AP 1/2, INP 1/2): rank-1 50, mAP 75, mINP 75
    r = retrieval_metrics(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), ["a", "b"], ["a", "b"])
    md = format_retrieval(r)
    assert "| rank-1 | rank-5 | rank-10 | mAP | mINP |" in md
    assert "| 50.0 | 100.0 | 100.0 | 75.0 | 75.0 |" in md
    assert "2 probes evaluated, 0 skipped" in md
    with pytest.raises(ValueError, match="not a retrieval result"):
        format_retrieval({"rank-1": 1.0})


def test_format_comparison(cross_view_result):
    md = format_comparison({"FP32": {"NM": 97.6, "BG": 94.0, "CL": 77.4, "mean": 89.667}, "W4A4": cross_view_result})
    lines = md.splitlines()
    assert lines[0] == "| model | NM | BG | CL | mean |"
    assert lines[2] == "| FP32 | 97.6 | 94.0 | 77.4 | 89.7 |"
    assert lines[3] == "| W4A4 | 100.0 | 33.3 | - | 66.7 |"
    with pytest.raises(ValueError):
        format_comparison({})


def test_write_results(tmp_path, cross_view_result):
    json_path, md_path = write_results(cross_view_result, tmp_path / "out", "toy_fp32")
    assert json_path == tmp_path / "out" / "toy_fp32.json" and md_path == tmp_path / "out" / "toy_fp32.md"
    loaded = json.loads(json_path.read_text())
    assert loaded["sets"]["BG"]["table"][1] == [None, None]
    assert loaded["mean"] == pytest.approx(cross_view_result["mean"])
    assert loaded == json.loads(json.dumps(cross_view_result))
    assert md_path.read_text() == format_cross_view(cross_view_result)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toy_fp32.json", "toy_fp32.md"]  # no temp left
    assert "\n  " in json_path.read_text()  # indented


def test_write_results_retrieval_and_nan(tmp_path):
    r = {"rank-1": 50.0, "mAP": float("nan"), "mINP": torch.tensor(75.0), "num_probes": 2, "num_skipped": 0}
    json_path, md_path = write_results(r, tmp_path, "ret")
    loaded = json.loads(json_path.read_text())  # strict JSON: NaN written as null
    assert loaded["mAP"] is None and loaded["mINP"] == 75.0
    assert "| 50.0 | - | 75.0 |" in md_path.read_text()


@pytest.mark.parametrize("name", ["", "a/b", "..", "../x"])
def test_write_results_bad_name(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        write_results({"rank-1": 1.0, "mAP": 1.0, "mINP": 1.0}, tmp_path, name)


def test_write_results_unknown_result(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        write_results({"accuracy": 1.0}, tmp_path, "x")


def test_results_json_writes_per_subject_counts_compactly(tmp_path):
    """per_subject (tens of thousands of counts) goes on one line; the file still loads to the same data."""
    from qgait.evaluation.report import dumps_results

    counts = [[[i + j for j in range(11)] for i in range(11)] for _ in range(50)]
    data = {"mean": 70.5, "sets": {"NM": {"rank-1": 90.0}}, "per_subject": {"subjects": ["075"], "hits": counts},
            "nested": [{"per_subject": [1, 2, 3]}]}
    text = dumps_results(data)
    assert json.loads(text) == data
    assert len(text.splitlines()) < 20  # indent=2 would take over 6,000 lines
    with pytest.raises(ValueError):
        dumps_results({"per_subject": [float("nan")]})
