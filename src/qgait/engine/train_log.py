"""Reading the ``train_log.jsonl`` that :class:`qgait.engine.trainer.Trainer` appends to.

Each line is one JSON object per logged window (``train.log_every`` iterations): ``stage``, ``iteration``, the
losses and ``sec_per_iter`` (wall seconds per iteration over the window, data loading included). Evaluation lines
may sit between them without a ``sec_per_iter``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def read_train_log(path: str | Path) -> list[dict]:
    """The log's rows in file order; ``[]`` when the file does not exist.

    A last line cut short (a run killed mid-write, no trailing newline) is left out.

    Raises:
        ValueError: a complete line is not a JSON object (the message names the file and the line number).
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # the unterminated last line of a killed run
                continue
            raise ValueError(f"{path}: line {i} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {i} is not a JSON object")
        rows.append(row)
    return rows


def window_times(rows: list[dict], stage: str | None = None) -> list[float]:
    """``sec_per_iter`` of each logged window (of ``stage`` only when given; rows without ``stage`` are
    ``"train"``), in order; rows without a numeric ``sec_per_iter`` are skipped."""
    return [float(r["sec_per_iter"]) for r in rows
            if isinstance(r.get("sec_per_iter"), (int, float))
            and (stage is None or r.get("stage", "train") == stage)]


def median_sec_per_iter(times: list[float], skip_first: bool = False) -> float | None:
    """Median seconds per iteration over the windows ``times``; ``skip_first`` leaves out the first window
    (warm-up: allocator, thread pools, first data loads) unless it is the only one. ``None`` without windows."""
    if not times:
        return None
    return statistics.median(times[1:] if skip_first and len(times) > 1 else times)
