"""Partition files: built-in CASIA-B, validation errors naming the file, subject checks."""

from __future__ import annotations

import json

import pytest

from qgait.data.partition import Partition, check_subjects, load_partition, outside


def _write(tmp_path, obj, name="part.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def test_builtin_casia_b():
    p = load_partition("casia-b")
    assert p.train == [f"{i:03d}" for i in range(1, 75)]
    assert p.test == [f"{i:03d}" for i in range(75, 125)]
    assert p.probe is None
    assert load_partition("CASIA-B").train == p.train


def test_file_with_probe_set(tmp_path):
    p = load_partition(_write(tmp_path, {"TRAIN_SET": ["a", "b"], "TEST_SET": ["c"], "PROBE_SET": ["c-1"]}))
    assert (p.train, p.test, p.probe) == (["a", "b"], ["c"], ["c-1"])
    assert p.source.endswith("part.json")


@pytest.mark.parametrize("obj, fragment", [
    ({"TRAIN_SET": ["1", "2", "3"], "TEST_SET": ["3", "2"]}, "2 subject(s) in both TRAIN_SET and TEST_SET: 2, 3"),
    ({"TRAIN_SET": ["1"], "TEST_SET": ["2"], "VAL_SET": ["3"]}, "unknown key(s) 'VAL_SET'"),
    ({"TRAIN_SET": ["1"]}, "missing TEST_SET"),
    ({"TRAIN_SET": [1], "TEST_SET": ["2"]}, "write subject ids as strings"),
    ({"TRAIN_SET": ["1", "1"], "TEST_SET": ["2"]}, "more than once"),
    ({"TRAIN_SET": "1", "TEST_SET": ["2"]}, "must be a list"),
    (["1"], "expected a JSON object"),
    ("{not json", "invalid JSON"),
])
def test_invalid_files_name_the_file(tmp_path, obj, fragment):
    path = _write(tmp_path, obj, name="broken-partition.json")
    with pytest.raises(ValueError) as info:
        load_partition(path)
    assert "broken-partition.json" in str(info.value)
    assert fragment in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="casia-b"):
        load_partition(tmp_path / "nope.json")


def test_check_subjects_and_outside():
    p = Partition(train=["001", "002"], test=["003"], source="p.json")
    assert check_subjects(p, ["001", "002", "003", "004"], "train") == ["001", "002"]
    with pytest.raises(ValueError, match=r"p\.json: 1 train subject\(s\) missing from the store: 002"):
        check_subjects(p, ["001", "003"], "train")
    with pytest.raises(ValueError, match="003"):
        check_subjects(p, ["001", "002"], "test")
    with pytest.raises(ValueError, match="which"):
        check_subjects(p, [], "val")
    assert check_subjects(p, ["001", "002", "003"], "all") == ["001", "002", "003"]
    assert outside(p, ["004", "001", "000", "004"]) == ["000", "004"]
    assert outside(p, ["001", "003"]) == []
