"""Gallery commands of the ``qgait`` command line: ``enroll`` (add sequences to a gallery file),
``gallery-info`` (what a gallery file holds, and whether a model may use it) and ``calibrate`` (store an open-set
rejection threshold in a copy of an exported model).

Hooked into ``qgait.cli.build_parser`` by :func:`add_gallery_commands`. Sequences are gathered and embedded as
``qgait embed`` does (:func:`qgait.workflows.deploy.collect_sequences`, :func:`~qgait.workflows.deploy.
embed_sequences`); the file is written by :func:`qgait.runtime.gallery.enroll_embeddings` (atomic, with the
model's identity). Errors (another model's gallery, corrupt files, unlabeled sequences) are ``ValueError`` s
naming the problem, printed by ``qgait.cli.run_command`` as ``qgait: error: ...`` (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def _cmd_enroll(a: argparse.Namespace) -> int:
    from .runtime import GaitEmbedder
    from .runtime.gallery import check_enrollable, enroll_embeddings
    from .runtime.identity import ModelIdentity
    from .workflows.deploy import collect_sequences, embed_sequences

    sources = list(a.sources) + ([a.store] if a.store else [])
    if not sources:
        raise ValueError("give sequence files (.pkl/.npy), OpenGait folders, or --store STORE to enroll")
    if a.label is not None and not a.label.strip():
        raise ValueError("--label must not be empty")
    if a.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {a.max_frames}")
    if a.threads is not None and a.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {a.threads}")
    emb = GaitEmbedder(a.model, threads=a.threads)
    model = ModelIdentity.of(emb)
    check_enrollable(a.gallery, model, a.adopt)  # before any embedding: another model's gallery fails at once
    items = collect_sequences(sources, a.subjects, a.conditions, a.views)
    if a.label is None:
        unlabeled = [it.source for it in items if it.subject is None]
        if unlabeled:
            raise ValueError(f"{len(unlabeled)} sequence(s) without a subject label (not in an OpenGait layout "
                             f"subject/condition/view/x.pkl nor in a store), e.g. {unlabeled[:3]}: give --label")
        labels = [it.subject for it in items]
    else:
        labels = [a.label] * len(items)
    check = {"check": False} if a.no_silhouette_check else {}  # the check is embed_sequences' default
    embeddings = embed_sequences(emb, items, a.max_frames, progress=not a.quiet, **check)
    info = [{"condition": it.condition, "view": it.view, "source": it.source} for it in items]
    res = enroll_embeddings(a.gallery, model, embeddings, labels, info, adopt_unknown=a.adopt)
    counts = Counter(labels)
    print(res.describe())
    print("enrolled: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return 0


def _cmd_gallery_info(a: argparse.Namespace) -> int:
    from .runtime import GaitEmbedder
    from .runtime.gallery_io import load_gallery

    g = load_gallery(a.gallery)
    subjects = Counter(g.labels)
    print(f"{a.gallery}: {len(g)} entries of {len(subjects)} subjects, embeddings {list(g.embeddings.shape[1:])}")
    print(f"model: {g.identity.describe() if g.identity else 'unknown (written without a model identity)'}")
    if a.model is not None:
        status = g.check(GaitEmbedder(a.model))
        print(f"{a.model}: {status}" + (" (the gallery records no model to check against)" if status == "unknown"
                                        else " (this model built the gallery)"))
    return 0


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from .workflows.calibrate import calibrate_model

    sources = list(a.sources) + ([a.store] if a.store else [])
    if not sources:
        raise ValueError("give calibration sequences: OpenGait folders, or --store STORE (with --subjects)")
    if a.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {a.max_frames}")
    output = a.output if a.output is not None else a.model.with_name(f"{a.model.stem}.calibrated{a.model.suffix}")
    res = calibrate_model(a.model, sources, output, target_fmr=a.fmr, metric=a.metric, subjects=a.subjects,
                          conditions=a.conditions, views=a.views, max_frames=a.max_frames, threads=a.threads,
                          progress=not a.quiet, check=not a.no_silhouette_check, overwrite=a.overwrite)
    from .runtime.rejection import RejectionThreshold

    th = RejectionThreshold.from_dict(res["rejection"])
    print(f"calibrated on {res['sequences']} sequences of {res['subjects']} subjects: {th.describe()}")
    print(f"wrote {res['output']} (the model with this threshold; qgait identify answers 'unknown' beyond it)")
    return 0


def add_gallery_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``enroll``, ``gallery-info`` and ``calibrate`` to the ``qgait`` sub-command parsers."""
    p = subparsers.add_parser(
        "enroll", help="add subjects' sequences to a gallery file (created when missing)",
        description="Embed sequences with an exported model and add them to a gallery .npz file, created when "
        "missing. The file records the model's identity (SHA-256 of the model file, export kind, input size, "
        "embedding shape): enrolling into, or identifying against, a gallery of another model is refused. The "
        "file is rewritten atomically (never half-written). Sequences: OpenGait .pkl / .npy files, OpenGait "
        "folders subject/condition/view/*.pkl, or a qgait store (--store), filtered by --subjects / "
        "--conditions / --views; each is labelled by its subject, or by --label.")
    p.add_argument("gallery", type=Path, help="gallery file (.npz; created when missing)")
    p.add_argument("sources", nargs="*", type=Path,
                   help="sequence files (.pkl/.npy uint8 [T, 64, 64|44]) or OpenGait folders")
    p.add_argument("--model", type=Path, required=True, help="exported model (.onnx or .qgpack)")
    p.add_argument("--store", type=Path, help="a qgait store to take sequences from")
    p.add_argument("--subjects", help="comma-separated subject ids to enroll (store / folder)")
    p.add_argument("--conditions", help="comma-separated conditions, e.g. nm-01,nm-02")
    p.add_argument("--views", help="comma-separated views, e.g. 090")
    p.add_argument("--label", help="label every enrolled sequence with this (default: its subject)")
    p.add_argument("--adopt", action="store_true",
                   help="add to a gallery written without a model identity (an older qgait), which then records "
                   "this model's; only if you know its entries were embedded by this model")
    p.add_argument("--max-frames", type=int, default=720, help="frames per sequence cap (default 720)")
    p.add_argument("--no-silhouette-check", action="store_true",
                   help="embed sequences that do not look like silhouettes (empty, noise, grey images) instead of "
                   "refusing them")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_enroll)

    p = subparsers.add_parser(
        "gallery-info", help="what a gallery file holds and which model built it",
        description="Print a gallery file's entries, subjects and recorded model identity; with --model, check "
        "that the model may use it (an error naming both models when it may not).")
    p.add_argument("gallery", type=Path, help="gallery file (.npz)")
    p.add_argument("--model", type=Path, help="exported model to check the gallery against")
    p.set_defaults(func=_cmd_gallery_info)

    p = subparsers.add_parser(
        "calibrate", help="store an open-set rejection threshold (for a target FMR) in a copy of a model",
        description="Embed calibration sequences with an exported model, choose the distance threshold of largest "
        "TAR at the target false match rate over every pair of calibration sequences, and write a copy of the "
        "model with the threshold in its metadata; qgait identify then answers 'unknown' for a probe whose nearest "
        "subject is farther. Calibrate on subjects the model was not trained on (e.g. part of the test "
        "subjects), and before enrolling: a gallery records the model file's SHA-256. With a gallery of N "
        "sequences, the rate of false alarms for people not enrolled is about N x FMR.")
    p.add_argument("model", type=Path, help="exported model (.onnx or .qgpack)")
    p.add_argument("sources", nargs="*", type=Path, help="OpenGait folders subject/condition/view/*.pkl")
    p.add_argument("--store", type=Path, help="a qgait store to take calibration sequences from")
    p.add_argument("--subjects", help="comma-separated calibration subject ids (store / folder)")
    p.add_argument("--conditions", help="comma-separated conditions, e.g. nm-01,nm-02")
    p.add_argument("--views", help="comma-separated views, e.g. 090")
    p.add_argument("--fmr", type=float, default=1e-3, help="target false match rate, a fraction (default 1e-3)")
    p.add_argument("--metric", choices=["euc", "cos"], default="euc",
                   help="the distance identify will use (default euc)")
    p.add_argument("-o", "--output", type=Path,
                   help="the calibrated copy (default: <model>.calibrated.onnx beside it; never the model itself; "
                   "an existing file is refused without --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--max-frames", type=int, default=720, help="frames per sequence cap (default 720)")
    p.add_argument("--no-silhouette-check", action="store_true",
                   help="embed sequences that do not look like silhouettes instead of refusing them")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_calibrate)


def build_gallery_parser() -> argparse.ArgumentParser:
    """A parser with only the gallery commands (for tests and ``python -m qgait.cli_gallery``)."""
    parser = argparse.ArgumentParser(prog="qgait", description=__doc__.splitlines()[0])
    add_gallery_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a gallery command; errors print ``qgait: error: ...`` and return 2 (as ``qgait.cli.main``)."""
    from .cli import run_command

    args = build_gallery_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
