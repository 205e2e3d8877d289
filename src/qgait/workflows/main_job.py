"""The main job (``qgait run``): import CASIA-B once, train the CPU recipe, evaluate it, print the table.

Later stages (quantization, export) extend this same job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import load_config
from .common import log
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
    cfg_path = recipe_path("gaitbase_casiab_quick.yaml" if quick else "gaitbase_casiab_cpu.yaml")
    overrides = []
    if data is not None:
        data = Path(data).resolve()
        overrides += [f"data.source={data}", f"data.store={Path(out_root).resolve() / 'stores' / data.name}"]
    cfg = load_config(cfg_path, overrides)
    t0 = time.perf_counter()
    fp_dir = Path(out_root) / cfg.name
    log(f"[1/1] full-precision training: {cfg_path.name} -> {fp_dir}")
    summary = {"fp": run_train(cfg, fp_dir, progress=progress)}
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (Path(out_root) / f"main_job_{cfg.name}.json").write_text(json.dumps(summary, indent=2))
    return summary
