"""The ``qgait`` command line: thin wrappers over the workflows.

Run ``qgait COMMAND --help`` for every option of a command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="experiment YAML file, or a shipped recipe's name such as "
                   "gaitbase_casiab_cpu (the recipes: configs/ in the repository, qgait/configs in the package)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.iterations=100 (repeatable; value parsed as YAML)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_teacher_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher-cache", type=Path, metavar="DIR",
                   help="cache the teachers' outputs in DIR and read them back for a batch seen before by the same "
                   "teacher (seeded runs see the same batches: several students of one teacher, or a resumed run, "
                   "skip its forward pass); entries are keyed by every teacher weight and input byte")


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

        if a.grew_submission is not None:
            raise ValueError("--grew-submission evaluates a model.pt / checkpoint (not an exported model)")
        evaluate_onnx(a.checkpoint, cfg=cfg, out_dir=a.output_dir, progress=not a.quiet)
        return 0
    run_evaluate(cfg, a.checkpoint, a.output_dir, progress=not a.quiet, grew_submission=a.grew_submission,
                 overwrite=a.overwrite)
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
                 teachers=a.teachers or None, teacher_cache=a.teacher_cache)
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from .config import load_config
    from .workflows.distill import run_distill

    cfg = load_config(a.config, a.overrides)
    out = a.output_dir or Path("runs") / cfg.name
    run_distill(cfg, a.teachers, out, progress=not a.quiet, resume=not a.restart, evaluate=not a.no_eval,
                teacher_cache=a.teacher_cache)
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

    summary = pretreat_folder(a.src, a.dest, skip_bad=a.skip_bad, progress=not a.quiet, overwrite=a.overwrite,
                              layout=a.layout)
    print(summary)
    return 0


def _cmd_data_stats(a: argparse.Namespace) -> int:
    import json

    from .data.store import SequenceStore

    print(json.dumps(SequenceStore.open(a.store).stats(), indent=2))
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from .workflows.main_job import run_main_job

    run_main_job(quick=a.quick, data=a.data, out_root=a.output_dir, progress=not a.quiet, retrain=a.retrain,
                 fp_checkpoint=getattr(a, "from"))
    return 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from .workflows.verify import run_verification

    checkpoints = {}
    for item in a.checkpoint:
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).parent.name or item, "", item)
        if name in checkpoints:
            raise ValueError(f"--checkpoint: the name {name!r} is given twice (name them: NAME=CKPT)")
        checkpoints[name] = Path(path)
    from .config import load_config

    run_verification(load_config(a.config, a.overrides), checkpoints, a.output_dir, progress=not a.quiet, overwrite=a.overwrite,
                     open_set_left_out=a.left_out)
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
    p.add_argument("--grew-submission", type=Path,
                   help="GREW protocol: also write the CSV that GREW's evaluation server scores (20 nearest gallery "
                   "identities per unlabelled probe)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --grew-submission file")
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
    _add_teacher_cache_arg(p)
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
    _add_teacher_cache_arg(p)
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
    q.add_argument("src", type=Path, help="folder subject/condition/view/*.png (or the --layout's folders)")
    q.add_argument("dest", type=Path, help="store folder to create")
    q.add_argument("--layout", choices=("opengait", "gait3d", "grew"), default="opengait",
                   help="released layout of SRC: opengait = subject/condition/view/*.png; gait3d = Gait3D's "
                   "2D_Silhouettes/<id>/camid<C>_videoid<V>/seq<S>/*.png; grew = GREW's train/<id>/<seq>/*.png, "
                   "test/gallery/<id>/<seq>/*.png, test/probe/<seq>/*.png (keyed as OpenGait's GREW pickles)")
    q.add_argument("--skip-bad", action="store_true", help="skip sequences with no usable frame, list them")
    q.add_argument("--overwrite", action="store_true", help="replace an existing store")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_data_pretreat)
    q = dsub.add_parser("stats", help="print a store's subjects, sequences, frames and per-condition counts")
    q.add_argument("store", type=Path, help="store folder")
    q.set_defaults(func=_cmd_data_stats)

    p = sub.add_parser("run", help="the main job: import CASIA-B, QGait W4A4 from the zoo's FP model, evaluate, "
                       "export int8, check parity, benchmark",
                       description="Import CASIA-B into a store (once); start from the trained CPU-recipe "
                       "checkpoint of the zoo (zoo/gaitbase_casiab_cpu/model.pt; --retrain trains it instead, about "
                       "50 min more on 2 cores); quantize it with QGait W4A4 (qgait_w4a4_cpu, or qgait_w4a4_quick "
                       "with --quick) and evaluate it on the test subjects; print the FP vs W4A4 rank-1 summary; "
                       "export the W4A4 model as int8 ONNX, check its parity with PyTorch and benchmark FP32 vs "
                       "INT8 runtimes (runs/deploy/).")
    p.add_argument("--quick", action="store_true",
                   help="a first look: 20 + 10 QAT iterations, 5 test subjects, a short benchmark (minutes)")
    p.add_argument("--retrain", action="store_true",
                   help="train the FP model (the CPU recipe, or the quick recipe with --quick) instead of starting "
                   "from the zoo's checkpoint")
    p.add_argument("--from", type=Path, default=None, metavar="FP_CKPT",
                   help="start from this FP model.pt (a CPU-recipe model) instead of the zoo's")
    p.add_argument("--data", type=Path, default=None,
                   help="CASIA-B in OpenGait format: folder of .pkl sequences or of per-subject .tar.xz archives "
                   "(default: the recipe's, ../shared/data/casia-b beside the repository, imported once into "
                   "stores/casia-b)")
    p.add_argument("--output-dir", type=Path, default=Path("runs"), help="where the runs go (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("verify", help="verification (EER, TAR@FMR, ROC / DET) and open-set (DIR@FPIR) figures of "
                       "one or more models on the test subjects",
                       description="Embed the test subjects with each --checkpoint (FP or quantized model.pt) and "
                       "write verification.json and one verification_<set>.png per probe set (NM, BG, CL) with "
                       "every model's ROC, DET and DIR / FPIR curves. Probes are searched against the protocol's "
                       "gallery of all views; the open-set test leaves half the gallery subjects out (seed 0). "
                       "Rates are fractions (ISO/IEC 19795-1 terms: FMR, FNMR, FPIR, FNIR).")
    _add_config_args(p)
    p.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]CKPT",
                   help="a model.pt, optionally named (FP32=zoo/gaitbase_casiab_cpu/model.pt); repeatable")
    p.add_argument("--output-dir", type=Path, required=True, help="where verification.json and the PNGs go")
    p.add_argument("--left-out", type=float, default=0.5,
                   help="fraction of gallery subjects left out of the open-set gallery (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing verification.json")
    p.set_defaults(func=_cmd_verify)

    from .cli_deploy import add_deploy_commands
    from .cli_gallery import add_gallery_commands
    from .cli_mixed import add_mixed_commands

    add_deploy_commands(sub)
    add_gallery_commands(sub)
    add_mixed_commands(sub)
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
"""What a command reports as one line ``qgait: error: ...`` (exit status 2) rather than a traceback: qgait's own
errors (``ConfigError``, ``CheckpointError``, ``BadSequenceError``... are ``ValueError`` s) and the file system's
answers about the paths given."""


def run_command(func, args: argparse.Namespace) -> int:
    """Run a command: user errors as one line (exit 2), interruptions as one line (exit 128 + signal: 130 for
    Ctrl-C, 143 for SIGTERM)."""
    from .engine.trainer import TrainingInterrupted

    try:
        return func(args)
    except TrainingInterrupted as e:
        print(f"qgait: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during an import (qgait.data.errors.Interrupted)
        signum = getattr(e, "signum", 2)
        what = "SIGTERM" if signum == 15 else "Ctrl-C"
        print(f"qgait: interrupted ({what})", file=sys.stderr)
        return 128 + signum
    except USER_ERRORS as e:
        print(f"qgait: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, FileExistsError)) and e.filename:
        return f"{e.filename}: {e.strerror}"  # IsADirectoryError etc.: "[Errno 21] ..." reads badly
    return str(e)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
