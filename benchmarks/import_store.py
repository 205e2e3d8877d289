"""Import of a CASIA-B source into a store: wall time and peak memory (the import must stream).

Runs ``qgait data import`` in a child process into a temporary folder and reports the child's peak RSS.

    python benchmarks/import_store.py [--data ../shared/data/casia-b] [--subjects 001,002]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import write_record  # benchmarks/_record.py

CASIA_B = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "casia-b"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=CASIA_B)
    ap.add_argument("--subjects", help="comma-separated subjects (default: all)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "qgait.cli", "data", "import", str(a.data), f"{tmp}/store", "--quiet"]
        if a.subjects:
            cmd += ["--subjects", a.subjects]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(out.strip())
    res = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2)}
    print(json.dumps(res, indent=2))
    write_record("import_store", res)


if __name__ == "__main__":
    main()
