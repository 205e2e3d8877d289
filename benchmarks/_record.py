"""Where a benchmark's figures go: ``results/bench/<name>_<date>_<cpu>[_t<threads>][<suffix>].json``.

Every benchmark script writes its JSON through :func:`write_record`, so that each figure quoted in the docs traces
to a file, and another machine's (or a later) run never overwrites an earlier one: the file name carries the
date and the CPU model, and an existing file gets a ``_2``, ``_3``... sibling instead of being replaced. The
record adds the CPU (:func:`qgait.runtime.cpu.cpu_info`: model, cores, int8 instruction sets), the load average
and the command line to the benchmark's own figures.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import date
from pathlib import Path

from qgait.runtime.cpu import cpu_info

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "results" / "bench"


def slug(text: str) -> str:
    """A file-name-safe short form of a CPU model name (``"Intel(R) Xeon(R) Processor"`` -> ``intel-xeon-processor``)."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)", "", text.lower())).strip("-")[:60] or "cpu"


def record_path(name: str, threads: int | None = None, suffix: str = "", out_dir: Path | None = None) -> Path:
    """The first free ``<out_dir>/<name>_<date>_<cpu>[_t<threads>]<suffix>[_<k>].json``."""
    out_dir = Path(out_dir) if out_dir is not None else BENCH
    stem = f"{name}_{date.today().isoformat()}_{slug(cpu_info()['model'])}" + (f"_t{threads}" if threads else "")
    stem += suffix
    path, k = out_dir / f"{stem}.json", 2
    while path.exists():
        path, k = out_dir / f"{stem}_{k}.json", k + 1
    return path


def write_record(name: str, figures: dict, threads: int | None = None, suffix: str = "",
                 out_dir: Path | None = None) -> Path:
    """Write ``figures`` with the date, CPU, load average and command line to a new file; returns its path."""
    path = record_path(name, threads, suffix, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"benchmark": name, "date": date.today().isoformat(), "cpu": cpu_info(), "threads": threads,
           "loadavg": list(os.getloadavg()),
           "command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO))
                                            if Path(sys.argv[0]).resolve().is_relative_to(REPO) else sys.argv[0],
                                            *sys.argv[1:]]),
           **figures}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=2, default=str) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return path
