"""Put a finished run's model into ``zoo/``: weights only, under the zoo's 5 MB limit, with its config and results.

    python scripts/zoo_add.py runs/gaitbase_casiab_cpu_w05 zoo/gaitbase_casiab_cpu_w05

Copies ``model.pt`` (the inference checkpoint ``qgait train`` writes: weights, head, architecture; no optimizer),
``config.yaml``, ``results.json``, ``results.md`` and ``train_log.jsonl``. A ``model.pt`` over 5 MB is stored
with its floating-point tensors in half precision (``weights_dtype: float16`` in the file; ``--half`` forces it):
``load_state_dict`` casts them back into the float32 model, so every loader reads it unchanged. The float16
copy is checked against the original on random silhouettes (embedding cosine, printed; refused under 0.999).
The config's relative data paths (``data.source``, ``data.store``) are relative to its folder: they are rewritten
to point from the zoo folder to the same places. ``teachers.json`` (a distilled run's teachers and their hashes) is
copied too. Refuses to overwrite an existing zoo folder unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml

from qgait.atomic import atomic_write
from qgait.engine.checkpoint import load_checkpoint, load_inference_model

LIMIT = 5 * 2**20
FILES = ("results.json", "results.md", "train_log.jsonl", "teachers.json")
PATH_KEYS = ("source", "store")  # the data section's paths, relative to the config's folder


def rebase_config(text: str, run: Path, dest: Path) -> str:
    """The YAML config ``text`` of the folder ``run`` with its relative ``data.source`` / ``data.store`` rewritten
    to be relative to ``dest`` (absolute paths and other keys unchanged; the YAML re-emitted in its key order).

    Raises:
        ValueError: ``text`` is not a YAML mapping.
    """
    cfg = yaml.safe_load(text)
    if not isinstance(cfg, dict):
        raise ValueError(f"{run / 'config.yaml'}: not a YAML mapping")
    data = cfg.get("data")
    if isinstance(data, dict):
        for key in PATH_KEYS:
            v = data.get(key)
            if isinstance(v, str) and v and not os.path.isabs(v):
                target = os.path.normpath(os.path.join(os.path.abspath(run), v))
                data[key] = os.path.relpath(target, os.path.abspath(dest))
    return yaml.safe_dump(cfg, sort_keys=False)


def half_precision(ck: dict) -> dict:
    """The checkpoint with every floating tensor of its weight dicts in float16 (others unchanged)."""
    out = dict(ck)
    for key in ("state_dict", "head_state_dict"):
        if isinstance(ck.get(key), dict):
            out[key] = {k: v.half() if torch.is_floating_point(v) else v for k, v in ck[key].items()}
    out["weights_dtype"] = "float16"
    return out


def embedding_cosine(a: Path, b: Path, input_size: tuple[int, int], seed: int = 0) -> float:
    """Mean cosine between the two checkpoints' flattened embeddings of 4 random 16-frame sequences."""
    ma, mb = load_inference_model(a)[0], load_inference_model(b)[0]
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, 16, *input_size, generator=g) > 0.5).float()
    with torch.no_grad():
        ea, eb = ma(x).flatten(1), mb(x).flatten(1)
    return torch.nn.functional.cosine_similarity(ea, eb, dim=1).mean().item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="finished run folder (model.pt, config.yaml, results.json)")
    ap.add_argument("dest", type=Path, help="zoo folder to create")
    ap.add_argument("--half", action="store_true", help="store float16 weights even under 5 MB")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    src = a.run / "model.pt"
    if not src.is_file():
        print(f"error: {src}: no model.pt (is the run finished?)", file=sys.stderr)
        return 1
    if a.dest.exists() and not a.overwrite:
        print(f"error: {a.dest} exists (--overwrite replaces it)", file=sys.stderr)
        return 1
    ck = load_checkpoint(src, required=("state_dict",))
    config = None  # rebased before anything is written, so a bad config leaves no half-made zoo folder
    if (a.run / "config.yaml").is_file():
        try:
            config = rebase_config((a.run / "config.yaml").read_text(), a.run, a.dest)
        except (ValueError, yaml.YAMLError) as e:
            print(f"error: {a.run / 'config.yaml'}: {e}", file=sys.stderr)
            return 1
    a.dest.mkdir(parents=True, exist_ok=True)
    dst = a.dest / "model.pt"
    if a.half or src.stat().st_size > LIMIT:
        half = half_precision(ck)
        atomic_write(dst, lambda f: torch.save(half, f))
        cos = embedding_cosine(src, dst, tuple(ck.get("input_size") or (32, 22)))
        print(f"{dst}: float16 weights, {dst.stat().st_size / 2**20:.2f} MB (float32 {src.stat().st_size / 2**20:.2f}"
              f" MB); embedding cosine to the float32 model {cos:.6f}")
        if cos < 0.999:
            dst.unlink()
            print("error: the float16 copy drifts from the original; not stored", file=sys.stderr)
            return 1
    else:
        shutil.copy2(src, dst)
        print(f"{dst}: {dst.stat().st_size / 2**20:.2f} MB")
    if dst.stat().st_size > LIMIT:
        print(f"error: {dst} is still over 5 MB", file=sys.stderr)
        return 1
    if config is not None:
        atomic_write(a.dest / "config.yaml", lambda f: f.write(config.encode()))
    for name in FILES:
        if (a.run / name).is_file():
            shutil.copy2(a.run / name, a.dest / name)
    print(f"copied {', '.join(n for n in ('config.yaml', *FILES) if (a.dest / n).is_file())} into {a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
