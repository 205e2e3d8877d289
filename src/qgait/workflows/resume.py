"""Resuming a run folder with another config: what changed, and whether the run may go on (checked before the
folder is touched).

A run folder that holds a training checkpoint (``last.pt``, ``calib_last.pt``, ``stage1_last.pt``...) and its
``config.yaml`` is compared with the config of the new invocation, key by key:

- **refused** (:class:`ResumeMismatch`): the architecture (``model.*``, the quantizer's structure
  ``quant.config.*`` other than the soft quantizer's schedule) and the data a step is built from (partition,
  subject limits, input size, frames per sequence, P x K). The checkpoint's weights or batches would not fit,
  or the run would silently mix two experiments.
- **warned about and recorded** (the run goes on with the new values; ``summary.json`` lists them): the rest of
  what shapes training (learning rate and schedule, iterations, losses, augmentation, seed, QAT stages...),
  so that extending ``train.iterations`` or lowering a learning rate stays possible but never silent.
- **ignored**: where the data lives (``data.source`` / ``data.store``), loader and logging settings, the name
  and the evaluation settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, ExperimentConfig, dump_config, load_config
from .common import log

__all__ = ["ResumeMismatch", "REFUSED", "IGNORED", "TEACHERS_FILE", "config_differences", "check_resume",
           "check_teachers", "record_teachers"]


class ResumeMismatch(ValueError):
    """Resuming a run folder whose checkpoint was made with another architecture or data (message: what)."""


REFUSED = ("model.", "quant.config.", "data.partition", "data.train_subjects_limit", "data.input_size",
           "data.train_frames", "data.p", "data.k")
"""Dotted key prefixes whose change refuses a resume (``quant.config.soft.`` is an exception: a schedule)."""

IGNORED = ("name", "data.source", "data.store", "data.store_cut_width", "data.prefetch", "data.skip_bad",
           "data.test_subjects_limit", "data.test_max_frames", "train.log_every", "train.save_every",
           "train.eval_every", "train.threads", "eval.", "quant.plot", "quant.evaluate_stage1")
"""Dotted key prefixes that may change freely between invocations."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def config_differences(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """``(refused, warned)``: the keys that differ between two dumped configs (``"key: old -> new"`` each), split
    by :data:`REFUSED` / :data:`IGNORED`."""
    a, b = _flatten(old), _flatten(new)
    refused, warned = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key) or _matches(key, IGNORED):
            continue
        line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        if _matches(key, REFUSED) and not key.startswith("quant.config.soft."):
            refused.append(line)
        else:
            warned.append(line)
    return refused, warned


def _has_checkpoint(out_dir: Path) -> bool:
    return any(p.is_file() for p in out_dir.glob("*last.pt"))


def check_resume(cfg: ExperimentConfig, out_dir: str | Path) -> list[str]:
    """Compare ``cfg`` with the config of the run in ``out_dir`` before anything there is written.

    Nothing to compare (a new folder, no checkpoint, or no ``config.yaml``) returns ``[]``.

    Returns:
        the changed settings the run goes on with (``"key: old -> new"``), also logged as a warning.

    Raises:
        ResumeMismatch: the architecture or the training data changed (the message lists what, and how to
            start a new run instead).
    """
    out_dir = Path(out_dir)
    path = out_dir / "config.yaml"
    if not path.is_file() or not _has_checkpoint(out_dir):
        return []
    try:
        old = dump_config(load_config(path))
    except ConfigError as e:
        log(f"warning: cannot compare with the config of the run in {out_dir} ({str(e).splitlines()[0]}); "
            "resuming it as it is")
        return []
    refused, warned = config_differences(old, dump_config(cfg))
    if refused:
        raise ResumeMismatch(
            f"{out_dir}: holds a run made with another architecture or data ({'; '.join(refused)}); resuming it "
            "would mix two experiments. Give another --output-dir, or start the run over (qgait train / distill "
            "--restart)")
    if warned and os.environ.get("RANK", "0") == "0":
        log(f"warning: resuming {out_dir} with changed settings, the run goes on with the new values: "
            + "; ".join(warned))
    return warned


TEACHERS_FILE = "teachers.json"
"""The teachers a distillation run folder was trained with (:func:`check_teachers`)."""


def _weights_sha256(net) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and values, in name order)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _teacher_record(teachers, paths) -> list[dict]:
    return [{"path": str(p), "sha256": _weights_sha256(getattr(t, "net", t))} for t, p in zip(teachers, paths)]


def check_teachers(out_dir: str | Path, teachers, teacher_paths, resume: bool = True) -> list[dict]:
    """Refuse to resume a distillation run (``qgait distill``, ``qgait quantize --teacher``) with other teachers than
    it was trained with. ``teachers`` are the loaded teachers (:class:`qgait.distill.Teacher` or modules) of
    ``teacher_paths``; they are compared by their weights (SHA-256 over the state dict, in order), so a run's
    ``model.pt`` and ``last.pt`` are the same teacher, and a retrained one at the same path is not. A folder
    without a training checkpoint (or ``resume=False``) is not compared. Nothing is written:
    :func:`record_teachers` writes the returned record once every check of the run has passed.

    Returns:
        the record of ``teacher_paths`` (``[{"path", "sha256"}, ...]``).

    Raises:
        ResumeMismatch: the folder holds a run made with other teachers (or without any, or with some before); the
            message lists both sets and how to start a new run instead.
    """
    import json

    out_dir = Path(out_dir)
    new = _teacher_record(teachers, teacher_paths)
    path = out_dir / TEACHERS_FILE
    if resume and _has_checkpoint(out_dir):
        old = json.loads(path.read_text()) if path.is_file() else []
        if [t["sha256"] for t in old] != [t["sha256"] for t in new]:
            def names(ts):
                return ", ".join(f"{t['path']} ({t['sha256'][:12]})" for t in ts) or "none"

            raise ResumeMismatch(
                f"{out_dir}: holds a run distilled from other teachers (then: {names(old)}; now: {names(new)}); "
                "resuming it would mix two experiments. Give another --output-dir, or start the run over "
                "(--restart)")
    return new


def record_teachers(out_dir: str | Path, record: list[dict]) -> None:
    """Write ``out_dir/teachers.json`` (atomically) from :func:`check_teachers`'s record (an empty record is
    written only over an existing file: a run without teachers leaves no file)."""
    import json

    out_dir = Path(out_dir)
    path = out_dir / TEACHERS_FILE
    if not record and not path.is_file():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
