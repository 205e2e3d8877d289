"""The main job (``qgait run``): import CASIA-B once, train the CPU recipe, evaluate it, quantize it with
QGait W4A4 (two stages + IDC), evaluate that, and print the FP vs W4A4 table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import load_config
from ..evaluation.report import format_comparison
from .common import log
from .quantize import run_quantize
from .train import run_train

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def recipe_path(name: str) -> Path:
    """Path of a recipe shipped in the repository's ``configs/`` folder.

    Raises:
        FileNotFoundError: the folder is not there (qgait installed without its repository).
    """
    path = CONFIG_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: recipe not found (run from a checkout of the qgait repository)")
    return path


def run_main_job(quick: bool = False, data: str | Path | None = None, out_root: str | Path = "runs",
                 progress: bool = True) -> dict:
    """Import, train and evaluate the CPU recipe (``--quick``: the quick recipe); returns the summary.

    Args:
        data: CASIA-B source folder (OpenGait pickles or per-subject archives); default: the config's.
        out_root: folder that receives one run folder per stage.
    """
    quick_or_cpu = "quick" if quick else "cpu"
    cfg_path = recipe_path(f"gaitbase_casiab_{quick_or_cpu}.yaml")
    q_path = recipe_path(f"qgait_w4a4_{quick_or_cpu}.yaml")
    overrides = []
    if data is not None:
        data = Path(data).resolve()
        overrides += [f"data.source={data}", f"data.store={Path(out_root).resolve() / 'stores' / data.name}"]
    cfg = load_config(cfg_path, overrides)
    q_cfg = load_config(q_path, overrides)
    t0 = time.perf_counter()
    fp_dir, q_dir = Path(out_root) / cfg.name, Path(out_root) / q_cfg.name
    log(f"[1/2] full-precision training: {cfg_path.name} -> {fp_dir}")
    fp = run_train(cfg, fp_dir, progress=progress)
    log(f"[2/2] QGait W4A4 (stage 1 LSQ + IDC, stage 2 soft quantizer + IDC): {q_path.name} -> {q_dir}")
    q = run_quantize(q_cfg, fp_dir / "last.pt", q_dir, progress=progress, fp_results=fp.get("eval"))
    summary = {"fp": fp, "qgait_w4a4": q, "wall_seconds": round(time.perf_counter() - t0, 1)}
    table = {f"{cfg.name} FP32": fp.get("eval", {})}
    table.update({f"{q_cfg.name} {k}": v for k, v in q["stages"].items() if k != "fp"})
    summary["table"] = format_comparison(table)
    print("\n## CASIA-B rank-1 (%), FP vs W4A4\n\n" + summary["table"])
    (Path(out_root) / f"main_job_{quick_or_cpu}.json").write_text(json.dumps(summary, indent=2))
    return summary
