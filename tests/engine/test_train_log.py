"""The train_log.jsonl reader: rows, windows, medians, and what it says of a damaged log."""

import json

import pytest

from qgait.engine.train_log import median_sec_per_iter, read_train_log, window_times


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_rows_windows_and_stages(tmp_path):
    log = tmp_path / "train_log.jsonl"
    assert read_train_log(log) == []  # no log yet
    rows = [{"stage": "stage1", "iteration": 10, "sec_per_iter": 0.5},
            {"iteration": 10, "eval": {"mean": 70.0}},  # an evaluation line: no timing
            {"stage": "stage2", "iteration": 20, "sec_per_iter": 2},
            {"iteration": 30, "sec_per_iter": 0.25}]  # no stage: "train"
    _write(log, rows)
    assert read_train_log(log) == rows
    assert window_times(rows) == [0.5, 2.0, 0.25]
    assert window_times(rows, "stage2") == [2.0] and window_times(rows, "train") == [0.25]


def test_median_skips_the_first_window_only_when_asked_and_not_when_alone():
    assert median_sec_per_iter([9.0, 1.0, 2.0, 3.0]) == 2.5
    assert median_sec_per_iter([9.0, 1.0, 2.0, 3.0], skip_first=True) == 2.0
    assert median_sec_per_iter([9.0], skip_first=True) == 9.0
    assert median_sec_per_iter([]) is None


def test_a_cut_last_line_is_left_out_and_a_broken_middle_line_is_named(tmp_path):
    log = tmp_path / "train_log.jsonl"
    _write(log, [{"iteration": 10, "sec_per_iter": 1.0}], tail='{"iteration": 20, "sec_per')
    assert read_train_log(log) == [{"iteration": 10, "sec_per_iter": 1.0}]
    log.write_text('{"iteration": 10}\nnot json\n{"iteration": 30}\n')
    with pytest.raises(ValueError, match=r"train_log\.jsonl: line 2 is not JSON"):
        read_train_log(log)
    log.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match="line 1 is not a JSON object"):
        read_train_log(log)
