"""The ``qgait`` command line: thin wrappers over the workflows.

Run ``qgait COMMAND --help`` for every option of a command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="experiment YAML file (see configs/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.iterations=100 (repeatable; value parsed as YAML)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_train(a: argparse.Namespace) -> int:
    from .config import load_config
    from .workflows.train import run_train

    cfg = load_config(a.config, a.overrides)
    out = a.output_dir or Path("runs") / cfg.name
    run_train(cfg, out, resume=not a.restart, progress=not a.quiet, evaluate=not a.no_eval)
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .config import load_config
    from .workflows.evaluate import run_evaluate

    cfg = load_config(a.config, a.overrides)
    if a.checkpoint.suffix in (".onnx", ".qgpack"):
        from .workflows.deploy import evaluate_onnx

        evaluate_onnx(a.checkpoint, cfg=cfg, out_dir=a.output_dir, progress=not a.quiet)
        return 0
    run_evaluate(cfg, a.checkpoint, a.output_dir, progress=not a.quiet)
    return 0


def _cmd_quantize(a: argparse.Namespace) -> int:
    from .config import load_config
    from .workflows.quantize import run_quantize

    cfg = load_config(a.config, a.overrides)
    out = a.output_dir or Path("runs") / cfg.name
    fp_results = None
    if a.fp_results:
        import json

        from .evaluation.report import rank1_row

        res = json.loads(a.fp_results.read_text())
        fp_results = rank1_row(res)
        fp_stats = res.get("embedding_stats")
    run_quantize(cfg, getattr(a, "from"), out, progress=not a.quiet, fp_results=fp_results,
                 stage1_from=a.stage1_from, fp_embedding_stats=fp_stats if a.fp_results else None,
                 teachers=a.teachers or None)
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from .config import load_config
    from .workflows.distill import run_distill

    cfg = load_config(a.config, a.overrides)
    out = a.output_dir or Path("runs") / cfg.name
    run_distill(cfg, a.teachers, out, progress=not a.quiet, resume=not a.restart, evaluate=not a.no_eval)
    return 0


def _cmd_data_import(a: argparse.Namespace) -> int:
    from .data.store import build_store

    subjects = a.subjects.split(",") if a.subjects else None
    summary = build_store(a.src, a.dest, subjects=subjects, skip_bad=a.skip_bad, progress=not a.quiet,
                          overwrite=a.overwrite, cut_width=a.cut_width)
    print(summary)
    return 0


def _cmd_data_pretreat(a: argparse.Namespace) -> int:
    from .data.pretreat import pretreat_folder

    summary = pretreat_folder(a.src, a.dest, skip_bad=a.skip_bad, progress=not a.quiet)
    print(summary)
    return 0


def _cmd_data_stats(a: argparse.Namespace) -> int:
    import json

    from .data.store import SequenceStore

    print(json.dumps(SequenceStore.open(a.store).stats(), indent=2))
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from .workflows.main_job import run_main_job

    run_main_job(quick=a.quick, data=a.data, out_root=a.output_dir, progress=not a.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qgait", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a config, then evaluate it on the test subjects",
                       description="Train a full-precision gait model. Resumes from OUTPUT_DIR/last.pt if it "
                       "exists (exact resume after Ctrl-C or kill). Under torchrun it trains with "
                       "DistributedDataParallel (gloo on CPU, NCCL on GPU).")
    _add_config_args(p)
    p.add_argument("--output-dir", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start from scratch")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint with a config's protocol",
                       description="Embed the test subjects' sequences and print the protocol's rank-1 table "
                       "(CASIA-B: NM/BG/CL excluding identical views, the 11x11 view tables and their mean).")
    _add_config_args(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt, a training checkpoint (last.pt), or an exported .onnx/.qgpack model (run with ONNX Runtime)")
    p.add_argument("--output-dir", type=Path, help="write results.json and results.md here")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("quantize", help="QGait: quantize a full-precision checkpoint (two stages + IDC)",
                       description="Quantize the model of FP_CKPT with the config's quant section: step-size "
                       "calibration on training batches, an optional IDC-only phase, stage 1 (LSQ + STE) and stage 2 "
                       "(soft quantizer), each with IDC against the frozen FP model if enabled, each evaluated "
                       "with the config's protocol. Resumes mid-stage from OUTPUT_DIR.")
    _add_config_args(p)
    p.add_argument("--from", required=True, type=Path, metavar="FP_CKPT",
                   help="full-precision checkpoint: a run's model.pt or last.pt")
    p.add_argument("--fp-results", type=Path, help="the FP model's results.json (skips re-evaluating the FP model)")
    p.add_argument("--output-dir", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--stage1-from", type=Path, metavar="RUN_DIR",
                   help="reuse the finished stage 1 of this run folder (same stage-1 settings) and train only "
                   "stage 2: compare stage-2 variants from one stage-1 model")
    p.add_argument("--teacher", dest="teachers", action="append", default=[], type=Path, metavar="CKPT",
                   help="also distil from this teacher (a run's model.pt or last.pt; repeatable): the config's "
                   "distill terms (default: GaitKD's KL + AB) join each QAT stage's loss next to IDC / IDD")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("distill", help="GaitKD: train a student with distillation from frozen teachers",
                       description="Train the config's model as `qgait train` does (resumable, evaluated at the "
                       "end) with knowledge distillation from the --teacher checkpoints (GaitKD, arXiv "
                       "2604.26255): the config's distill section (default: part-wise KL weight 1, T 4, and the "
                       "activation-boundary loss weight 0.003) is added to the triplet and cross-entropy losses. "
                       "A teacher may have another width, embedding size or part count (a training-only "
                       "connector maps the student's embeddings; model.pt holds the student only) but needs the "
                       "student's input size and, for the logit terms, a BNNeck head over the same training "
                       "subjects; a teacher that does not fit is refused before training.")
    _add_config_args(p)
    p.add_argument("--teacher", dest="teachers", action="append", required=True, type=Path, metavar="CKPT",
                   help="teacher checkpoint: a run's model.pt (with its head) or last.pt (repeatable: several "
                   "teachers; distill.ensemble averages their distributions)")
    p.add_argument("--output-dir", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start from scratch")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("data", help="import, pretreat and inspect silhouette data")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = dsub.add_parser("import", help="pack OpenGait-format sequences into a qgait store",
                        description="Read subject/condition/view/*.pkl sequences from a folder, from per-subject "
                        ".tar.xz archives (not unpacked) or from one archive, and pack them into a memory-mapped "
                        "store. Pickles are read with a restricted unpickler (numpy arrays only). The store "
                        "appears only when complete (atomic).")
    q.add_argument("src", type=Path, help="folder of sequences or of .tar.xz archives, or one archive")
    q.add_argument("dest", type=Path, help="store folder to create")
    q.add_argument("--subjects", help="comma-separated subject ids to import (default: all)")
    q.add_argument("--skip-bad", action="store_true", help="skip unreadable or malformed sequences, list them")
    q.add_argument("--overwrite", action="store_true", help="replace an existing store")
    q.add_argument("--cut-width", action="store_true",
                   help="store 64x64 frames cut to 64x44 (10 px off each side, as training and test read them): "
                   "31%% fewer bytes per batch")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_data_import)
    q = dsub.add_parser("pretreat", help="pretreat raw silhouette PNGs into a store (OpenGait recipe)",
                        description="Crop, resize to height 64, centre on the silhouette's mass and cut a 64x64 "
                        "window from every subject/condition/view/*.png frame; write a store.")
    q.add_argument("src", type=Path, help="folder subject/condition/view/*.png")
    q.add_argument("dest", type=Path, help="store folder to create")
    q.add_argument("--skip-bad", action="store_true", help="skip sequences with no usable frame, list them")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_data_pretreat)
    q = dsub.add_parser("stats", help="print a store's subjects, sequences, frames and per-condition counts")
    q.add_argument("store", type=Path, help="store folder")
    q.set_defaults(func=_cmd_data_stats)

    p = sub.add_parser("run", help="the main job: import CASIA-B, train the CPU recipe, evaluate",
                       description="Import CASIA-B into a store (once), train the CPU recipe, evaluate it on the "
                       "test subjects and print the CASIA-B table.")
    p.add_argument("--quick", action="store_true", help="a few subjects and a few hundred iterations (<10 min)")
    p.add_argument("--data", type=Path, default=None,
                   help="CASIA-B in OpenGait format: folder of .pkl sequences or of per-subject .tar.xz archives "
                   "(default: the recipe's, ../shared/data/casia-b beside the repository, imported once into "
                   "stores/casia-b)")
    p.add_argument("--output-dir", type=Path, default=Path("runs"), help="where the runs go (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    from .cli_deploy import add_deploy_commands

    add_deploy_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .data.sources import BadSequenceError
    from .engine.checkpoint import CheckpointError
    from .engine.trainer import TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"qgait: {e}", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointError, BadSequenceError, FileNotFoundError, ValueError) as e:
        print(f"qgait: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
