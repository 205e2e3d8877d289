"""Benchmarks write their figures to dated, CPU-named files and never overwrite an earlier run (issue 16)."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _record():
    spec = importlib.util.spec_from_file_location("_record", REPO / "benchmarks" / "_record.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_records_are_named_by_date_and_cpu_and_never_overwritten(tmp_path):
    rec = _record()
    a = rec.write_record("demo", {"ms": 1.5}, threads=2, out_dir=tmp_path)
    b = rec.write_record("demo", {"ms": 2.5}, threads=2, out_dir=tmp_path)
    assert a != b and a.is_file() and b.is_file()
    assert a.name.startswith(f"demo_{date.today().isoformat()}_") and a.name.endswith("_t2.json")
    assert b.name.endswith("_t2_2.json")
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert first["ms"] == 1.5 and second["ms"] == 2.5  # the first run's figures survive the second
    assert first["cpu"]["model"] and len(first["loadavg"]) == 3 and first["threads"] == 2


def test_slug_is_file_name_safe():
    rec = _record()
    assert rec.slug("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz") == "intel-xeon-platinum-8480-cpu-2-0ghz"
    assert rec.slug("") == "cpu"


def test_every_benchmark_writes_its_figures_to_a_file():
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        if path.name.startswith("_"):
            continue
        text = path.read_text()
        assert any(k in text for k in ("write_record(", "write_text(", "json.dump(", "record_path(")), \
            f"{path.name} prints figures that no file keeps"
