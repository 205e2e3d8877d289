"""Markdown reports and result files for the evaluation results.

All numbers are percentages printed with one decimal; a missing value (a skipped pair or set) is ``-``.
The functions accept the dicts returned by :func:`~qgait.evaluation.cross_view.evaluate_cross_view` and
:func:`~qgait.evaluation.retrieval.retrieval_metrics`, also after a JSON round trip.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["format_cross_view", "format_retrieval", "format_comparison", "write_results"]


def _num(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "-"
    value = float(value)
    return "-" if math.isnan(value) else f"{value:.1f}"


def _row(cells: list) -> str:
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def _header(cells: list) -> list[str]:
    return [_row(cells), _row(["---"] * len(cells))]


def _require(result: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(result, Mapping):
        raise ValueError(f"{what} result must be a dict, got {type(result).__name__}")
    missing = [k for k in keys if k not in result]
    if missing:
        raise ValueError(f"not a {what} result: missing keys {missing}")


def rank1_row(result: Mapping) -> dict[str, float]:
    """The headline of a result (percent): ``{set name: rank-1, ..., "mean": mean}`` for a cross-view result
    (also CCPG / SUSTech1K); ``{"rank-1": ..., "rank-5": ..., "mAP": ..., "mINP": ...}`` for a retrieval result
    (Gait3D, GREW)."""
    if "sets" not in result and "mAP" in result:
        return {k: v for k, v in result.items() if isinstance(k, str) and (k.startswith("rank-") or k in ("mAP", "mINP"))}
    return {k: v["rank-1"] for k, v in result["sets"].items()} | {"mean": result["mean"]}


def format_cross_view(result: Mapping) -> str:
    """Markdown report of a cross-view result.

    Contains: a summary table ``| | NM | BG | CL | mean |`` (one column per probe set, rank-1 in percent);
    a table of per-probe-view means (rows the sets, columns the probe views); and, per set, the
    ``n_views x n_views`` rank-1 table (rows probe view, columns gallery view, 1 decimal), where the
    identical-view entries are shown in parentheses, plus a last ``mean`` column holding the per-probe-view
    mean (over the other gallery views when the diagonal is excluded).

    Args:
        result: the dict returned by :func:`evaluate_cross_view` (or loaded from its JSON).

    Returns:
        The Markdown text (ends with a newline).

    Raises:
        ValueError: ``result`` lacks the keys of a cross-view result.
    """
    _require(result, ("protocol", "sets", "mean", "views"), "cross-view")
    sets: Mapping = result["sets"]
    views = [str(v) for v in result["views"]]
    excluded = bool(result.get("exclude_identical_view", True))
    names = list(sets)
    lines = [f"## {result['protocol']} cross-view rank-1 (%)", ""]
    info = [f"metric: {result.get('metric', '?')}"]
    if "num_sequences" in result:
        info.append(f"{result['num_sequences']} sequences")
    if "num_gallery" in result:
        info.append(f"{result['num_gallery']} in the gallery")
    info.append("identical views excluded from the means" if excluded else "identical views included in the means")
    lines += [", ".join(info) + ".", ""]

    lines += _header([""] + names + ["mean"])
    lines.append(_row(["rank-1"] + [_num(sets[s].get("rank-1")) for s in names] + [_num(result["mean"])]))
    skipped_sets = [s for s in names if sets[s].get("rank-1") is None]
    if skipped_sets:
        lines += ["", f"Not evaluated (no probe sequence or no usable view pair): {', '.join(skipped_sets)}."]

    reid = result.get("reid")
    if reid:
        lines += ["", "### Person re-identification (%): all views, same-subject same-view gallery entries left out",
                  ""]
        lines += _header(["set", "rank-1", "mAP", "mINP", "probes"])
        for s, r in reid.items():
            lines.append(_row([s, _num(r.get("rank-1")), _num(r.get("mAP")), _num(r.get("mINP")),
                               r.get("num_probes", "")]))

    lines += ["", "### Rank-1 per probe view (%)", ""]
    lines += _header(["set"] + views + ["mean"])
    for s in names:
        per_view = sets[s].get("per_view", {})
        lines.append(_row([s] + [_num(per_view.get(v)) for v in views] + [_num(sets[s].get("rank-1"))]))

    for s in names:
        res = sets[s]
        table = res.get("table")
        if table is None:
            continue
        lines += ["", f"### {s}: rank-1 (%) per probe view (rows) and gallery view (columns)", ""]
        note = "Identical-view entries in parentheses"
        note += ", excluded from the means." if res.get("diagonal_excluded", excluded) else " (included in the means)."
        if res.get("num_probes") is not None:
            note += f" {res['num_probes']} probe sequences."
        lines += [note, ""]
        lines += _header(["probe \\ gallery"] + views + ["mean"])
        per_view = res.get("per_view", {})
        for i, pv in enumerate(views):
            cells = []
            for j, value in enumerate(table[i]):
                text = _num(value)
                cells.append(f"({text})" if i == j and value is not None else text)
            lines.append(_row([pv] + cells + [_num(per_view.get(pv))]))
    return "\n".join(lines) + "\n"


def format_retrieval(result: Mapping) -> str:
    """Markdown report of a retrieval result: one table with every ``rank-k`` (sorted by k), mAP and mINP
    in percent, then the number of evaluated and skipped probes.

    Args:
        result: the dict returned by :func:`retrieval_metrics` / :func:`evaluate_retrieval`.

    Raises:
        ValueError: ``result`` lacks ``mAP`` / ``mINP`` or has no ``rank-k`` key.
    """
    _require(result, ("mAP", "mINP"), "retrieval")
    rank_keys = sorted((k for k in result if isinstance(k, str) and k.startswith("rank-")), key=lambda k: int(k[5:]))
    if not rank_keys:
        raise ValueError("not a retrieval result: no 'rank-k' key")
    title = "## Retrieval (%)"
    if result.get("metric"):
        title += f", metric {result['metric']}"
    cols = rank_keys + ["mAP", "mINP"]
    lines = [title, ""] + _header(cols) + [_row([_num(result[k]) for k in cols])]
    if "num_probes" in result:
        skipped = result.get("num_skipped", 0)
        lines += ["", f"{result['num_probes']} probes evaluated, {skipped} skipped (no gallery match)."]
    return "\n".join(lines) + "\n"


def _comparison_cells(values: Mapping) -> dict[str, Any]:
    if "sets" in values and isinstance(values["sets"], Mapping):  # a cross-view result
        cells = {name: res.get("rank-1") for name, res in values["sets"].items()}
        cells["mean"] = values.get("mean")
        return cells
    return {
        str(k): v
        for k, v in values.items()
        if (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))) and not str(k).startswith("num_")
    }


def format_comparison(rows: Mapping[str, Mapping]) -> str:
    """Markdown table comparing models / methods, one row each (e.g. FP32 vs W4A4).

    Args:
        rows: row name -> either a cross-view result (its sets' rank-1 and ``mean`` become the columns
            NM / BG / CL / mean) or a flat dict of numbers, e.g. ``{"NM": 97.6, "BG": 94.0, "CL": 77.4,
            "mean": 89.7}`` or a retrieval result (``num_*`` counts are left out). Columns are the union in
            order of first appearance, ``mean`` last; a missing value is ``-``.

    Returns:
        The Markdown table (ends with a newline).

    Raises:
        ValueError: ``rows`` is empty, not a dict of dicts, or holds no numeric column.
    """
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty dict {name: result}")
    table: dict[str, dict[str, Any]] = {}
    columns: list[str] = []
    for name, values in rows.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"row {name!r} must be a dict, got {type(values).__name__}")
        cells = _comparison_cells(values)
        table[str(name)] = cells
        columns += [c for c in cells if c not in columns]
    if not columns:
        raise ValueError("no numeric column to compare")
    if "mean" in columns:
        columns = [c for c in columns if c != "mean"] + ["mean"]
    lines = _header(["model"] + columns)
    for name, cells in table.items():
        lines.append(_row([name] + [_num(cells.get(c)) for c in columns]))
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    """Plain JSON types: tensors / numpy to lists and numbers, NaN / inf to None, tuples to lists."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_COMPACT_KEYS = ("per_subject",)
"""Entries written on one line by :func:`dumps_results` (per-subject count arrays: tens of thousands of ints)."""


def dumps_results(data: Any, indent: int = 2) -> str:
    """Strict JSON (NaN / inf refused) of a result, indented, except that the entries named in ``_COMPACT_KEYS``
    (at any depth) are written compactly on one line: ``per_subject`` holds about 36,000 counts for CASIA-B, one per
    line with ``indent`` (640 KB instead of 80 KB). ``json.loads`` of the output gives the same data.

    Raises:
        ValueError: a non-finite float; TypeError: a value JSON cannot hold.
    """
    compact: list[str] = []

    def strip(v: Any) -> Any:
        if isinstance(v, Mapping):
            out = {}
            for k, x in v.items():
                if k in _COMPACT_KEYS:
                    compact.append(json.dumps(x, separators=(",", ":"), allow_nan=False))
                    out[k] = f"\x00compact{len(compact) - 1}\x00"
                else:
                    out[k] = strip(x)
            return out
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    text = json.dumps(strip(data), indent=indent, allow_nan=False)
    for i, c in enumerate(compact):
        text = text.replace(json.dumps(f"\x00compact{i}\x00"), c, 1)
    return text


def write_results(result: Mapping, out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``out_dir/name.json`` (indented, strict JSON: NaN / inf become ``null``) and ``out_dir/name.md``.

    Both files are written atomically (a temporary file in ``out_dir``, then ``os.replace``); ``out_dir``
    is created if needed. The Markdown is :func:`format_cross_view` for a cross-view result (has
    ``"sets"``), :func:`format_retrieval` for a retrieval result (has ``"mAP"``), else a comparison table
    when ``result`` is a dict of result dicts.

    Args:
        result: an evaluation result dict (tensors / numpy values are converted).
        out_dir: the output folder.
        name: file stem, without folder separators, e.g. ``"casia-b_w4a4"``.

    Returns:
        ``(json_path, md_path)``.

    Raises:
        ValueError: ``name`` is empty or contains a path separator, or ``result`` is of no known kind.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", os.sep)):
        raise ValueError(f"name must be a plain file stem without folder separators, got {name!r}")
    if not isinstance(result, Mapping):
        raise ValueError(f"result must be a dict, got {type(result).__name__}")
    data = _jsonable(result)
    if "sets" in data:
        markdown = format_cross_view(data)
    elif "mAP" in data:
        markdown = format_retrieval(data)
    elif data and all(isinstance(v, Mapping) for v in data.values()):
        markdown = format_comparison(data)
    else:
        raise ValueError("result is neither a cross-view, a retrieval nor a comparison result")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    _atomic_write(json_path, dumps_results(data) + "\n")
    _atomic_write(md_path, markdown)
    return json_path, md_path
