"""Deployment commands of the ``qgait`` command line: ``export``, ``embed``, ``identify``, ``bench``.

Hooked into ``qgait.cli.build_parser`` by :func:`add_deploy_commands`; each command is a thin wrapper over
:mod:`qgait.workflows.deploy`. Errors (missing or corrupt model files, bad sequences, empty galleries) are
``ValueError`` / ``FileNotFoundError`` subclasses with a message naming the problem, which ``qgait.cli.main``
prints as ``qgait: error: ...`` (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_export(a: argparse.Namespace) -> int:
    from .data.store import SequenceStore
    from .workflows.deploy import export_checkpoint, parity_check
    from .workflows.outputs import check_outputs, staged

    # check what can fail before the export and the (long) parity run, so that no finished work is lost
    subjects = a.parity_subjects.split(",") if a.parity_subjects else None
    calib_subjects = a.calib_subjects.split(",") if a.calib_subjects else None
    if a.parity_store is not None:
        if a.format != "onnx":
            raise ValueError("--parity-store checks an ONNX export (use --format onnx)")
        if not subjects:
            raise ValueError("--parity-store needs --parity-subjects (e.g. 075,076)")
        SequenceStore.open(a.parity_store).check_known(subjects=subjects)
    if a.calib_store is not None and calib_subjects:
        SequenceStore.open(a.calib_store).check_known(subjects=calib_subjects)
    if a.report is not None:
        check_outputs([a.report], [a.checkpoint], a.overwrite)
        Path(a.report).parent.mkdir(parents=True, exist_ok=True)
    report = export_checkpoint(
        a.checkpoint, a.output, fmt=a.format, int8=a.int8, pack_int4=a.pack_int4, calib_store=a.calib_store,
        calib_subjects=calib_subjects,
        calib_sequences=a.calib_sequences, calib_frames=a.calib_frames, first_input=a.first_input,
        requant={"auto": "auto", "on": True, "off": False}[a.requant], ptq_method=a.ptq_method,
        conv_kernel=a.conv_kernel, match_bias=not a.no_match_bias, float_weights=a.float_weights,
        overwrite=a.overwrite,
    )
    print(f"wrote {report['output']} ({report['kind']}, {report['bytes'] / 1e6:.2f} MB; checkpoint "
          f"{report['checkpoint_bytes'] / 1e6:.2f} MB)")
    if "packed" in report:
        p = report["packed"]
        print(f"wrote {p['path']} (packed 4-bit weights, {p['bytes'] / 1e6:.3f} MB vs ONNX "
              f"{p['onnx_bytes'] / 1e6:.3f} MB)")
    if a.parity_store is not None:
        par = parity_check(a.checkpoint, report["output"], a.parity_store, subjects, evaluate=not a.no_rank1,
                           max_frames=a.max_frames, protocol=a.protocol, progress=not a.quiet)
        report["parity"] = par
        print(f"parity on {par['sequences']} sequences: cosine mean {par['cosine_mean']:.6f}, min "
              f"{par['cosine_min']:.6f}")
        if "torch" in par:
            print("rank-1 PyTorch: " + ", ".join(f"{k} {v:.1f}" for k, v in par["torch"].items()))
            print("rank-1 exported: " + ", ".join(f"{k} {v:.1f}" for k, v in par["onnx"].items()))
    if a.report is not None:
        with staged([a.report]) as (tmp,):
            tmp.write_text(json.dumps(report, indent=2, default=str))
    return 0


def _cmd_embed(a: argparse.Namespace) -> int:
    import numpy as np

    from .runtime import GaitEmbedder
    from .workflows.deploy import collect_sequences, embed_sequences
    from .workflows.outputs import check_outputs, staged

    sources = list(a.sequences) + ([a.store] if a.store else [])
    if not sources:
        raise ValueError("give sequence files (.pkl/.npy), an OpenGait folder, or --store STORE")
    path = Path(a.output)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: the output is a .npy file (its sequence list goes beside it as .json)")
    check_outputs([path, path.with_suffix(".json")], [a.model, *sources], a.overwrite)
    try:
        indices = [int(i) for i in a.indices.split(",")] if a.indices else None
    except ValueError:
        raise ValueError(f"--indices {a.indices!r}: expected comma-separated store indices, e.g. 0,5,12") from None
    items = collect_sequences(sources, a.subjects, a.conditions, a.views, indices)
    emb = GaitEmbedder(a.model, threads=a.threads)
    out = embed_sequences(emb, items, a.max_frames, progress=not a.quiet, check=not a.no_silhouette_check)
    with staged([path, path.with_suffix(".json")]) as (npy, meta):
        with open(npy, "wb") as f:
            np.save(f, out)
        meta.write_text(json.dumps([it.describe() for it in items], indent=1))
    print(f"wrote {path} {list(out.shape)} and {path.with_suffix('.json')} ({len(items)} sequences)")
    return 0


def _cmd_identify_stream(a: argparse.Namespace) -> int:
    from .workflows.deploy import identify_stream

    if a.save_gallery is not None:
        raise ValueError("--stream does not save a gallery (build it with qgait enroll, then pass it as --gallery)")

    def show(probe: dict, u: dict) -> None:
        if a.json:
            return
        if u["frames"] <= a.every:
            print(f"probe {probe['source']} (subject {probe['subject'] or 'unknown'}), frame by frame:")
        margin = f", margin {u['margin']:.4f}" if u["margin"] is not None else ""
        nearest = f" (nearest {u['nearest']})" if u["label"] == "unknown" and "nearest" in u else ""
        print(f"  {u['frames']:4d} frames: {u['label']}{nearest}  distance {u['distance']:.4f}{margin}"
              + ("  (firm)" if u["firm"] else ""), flush=True)

    res = identify_stream(
        a.model, a.gallery, a.probe, every=a.every, firm_after=a.firm_after, gallery_subjects=a.gallery_subjects,
        gallery_conditions=a.gallery_conditions, gallery_views=a.gallery_views, probe_subjects=a.probe_subjects,
        probe_conditions=a.probe_conditions, probe_views=a.probe_views, metric=a.metric, max_frames=a.max_frames,
        threads=a.threads, progress=not a.quiet, check=not a.no_silhouette_check, on_update=show,
        threshold=a.threshold,
    )
    if a.json:
        print(json.dumps(res, indent=1))
    return 0


def _cmd_identify(a: argparse.Namespace) -> int:
    from .workflows.deploy import identify_sequences

    if a.stream:
        return _cmd_identify_stream(a)

    res = identify_sequences(
        a.model, a.gallery, a.probe, a.top_k, gallery_subjects=a.gallery_subjects,
        gallery_conditions=a.gallery_conditions, gallery_views=a.gallery_views, probe_subjects=a.probe_subjects,
        probe_conditions=a.probe_conditions, probe_views=a.probe_views, metric=a.metric, max_frames=a.max_frames,
        save_gallery=a.save_gallery, threads=a.threads, progress=not a.quiet, check=not a.no_silhouette_check,
        overwrite=a.overwrite, threshold=a.threshold,
    )
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    for r in res:
        p = r["probe"]
        print(f"probe {p['source']} (subject {p['subject'] or 'unknown'}):")
        for k, (label, dist) in enumerate(r["top"], 1):
            print(f"  {k}. {label}  distance {dist:.4f}")
        d = r["decision"]
        if d is not None:
            at = f" (FMR {d['target_fmr']:.0e})" if d["target_fmr"] is not None else ""
            verdict = (f"{d['label']} (distance {d['distance']:.4f} <= threshold {d['threshold']:.4f}{at})"
                       if d["known"] else
                       f"unknown (nearest {r['top'][0][0]} at {d['distance']:.4f} > threshold {d['threshold']:.4f}{at})")
            print(f"  decision: {verdict}")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from .workflows.deploy import format_benchmark, run_benchmark

    res = run_benchmark(
        models=a.models.split(","), variants=a.variants.split(",") if a.variants else None, repeats=a.repeats,
        warmup=a.warmup, frames=a.frames, batch=a.batch, threads=a.threads, store=a.store,
        checkpoint=a.checkpoint, quick=a.quick, out_dir=a.output_dir, quant_checkpoint=a.quant_checkpoint,
    )
    print(format_benchmark(res))
    return 0


def _filters(p: argparse.ArgumentParser, prefix: str = "", what: str = "sequences") -> None:
    dash = f"--{prefix}-" if prefix else "--"
    p.add_argument(f"{dash}subjects", help=f"comma-separated subject ids of the {what} to use (store / folder)")
    p.add_argument(f"{dash}conditions", help=f"comma-separated conditions of the {what}, e.g. nm-01,nm-02")
    p.add_argument(f"{dash}views", help=f"comma-separated views of the {what}, e.g. 090")


def _silhouette_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-silhouette-check", action="store_true",
                   help="embed sequences even when they do not look like binary silhouettes (empty, noise, grey or "
                   "colour images, inverted: refused by default, with the reason)")


def add_deploy_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``, ``embed``, ``identify`` and ``bench`` to the ``qgait`` sub-command parsers."""
    from .workflows.deploy import BENCH_MODELS, BENCH_VARIANTS

    p = subparsers.add_parser(
        "export", help="export a model.pt to ONNX (FP32, int8 QDQ with learned steps, ORT PTQ) or PT2E",
        description="Export a saved model (model.pt: qgait-model or qgait-quant-model). FP checkpoint: FP32 ONNX "
        "with batch norm folded, or with --int8 ONNX Runtime static PTQ calibrated on --calib-store. Quantized "
        "checkpoint: int8 QDQ ONNX with the learned step sizes (nothing re-calibrated; --calib-store only sets "
        "the ranges of the residual convs' requantization). --format pt2e writes a torch.export .pt2 program "
        "(PT2E int8 graph) instead.")
    p.add_argument("checkpoint", type=Path, help="model.pt written by qgait train / qgait quantize")
    p.add_argument("--format", choices=["onnx", "pt2e"], default="onnx",
                   help="onnx (default): an .onnx file for ONNX Runtime; pt2e: a torch.export .pt2 program")
    p.add_argument("--int8", action="store_true",
                   help="int8 export: implied for a quantized checkpoint; post-training quantization (needs "
                   "--calib-store) for an FP checkpoint")
    p.add_argument("--pack-int4", action="store_true",
                   help="also write a .qgpack file with the <= 4-bit weights packed two per byte")
    p.add_argument("--output", "-o", type=Path,
                   help="output file, or a folder to write the default name into (default: beside the checkpoint, "
                   "model.onnx / model.int8.onnx / .pt2); an existing file is refused without --overwrite")
    p.add_argument("--calib-store", type=Path, help="store of real silhouettes for calibration")
    p.add_argument("--calib-subjects", help="comma-separated calibration subjects (default: the CASIA-B training "
                   "subjects in the store)")
    p.add_argument("--calib-sequences", type=int, default=16, help="calibration sequences (default 16)")
    p.add_argument("--calib-frames", type=int, default=30, help="frames per calibration sequence (default 30)")
    p.add_argument("--ptq-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="ONNX Runtime calibration method for --int8 of an FP checkpoint (default minmax)")
    p.add_argument("--first-input", choices=["auto", "uint8", "float"], default="auto",
                   help="quantized checkpoint: quantize the first conv's exact input at 1/255 (uint8; exact for "
                   "64x44 frames) or keep it float; auto (default): uint8 at 64x44 or with 8-bit activations, "
                   "float otherwise")
    p.add_argument("--requant", choices=["auto", "on", "off"], default="auto",
                   help="quantized checkpoint: requantize the residual convs' outputs (uint8, min-max over the "
                   "calibration store) so that ONNX Runtime runs them as QLinearConv; auto (default): whenever "
                   "--calib-store is given, at every bit width (below 8 bits the file is no longer bit-faithful, "
                   "cosine about 0.993, with rank-1 kept: docs/deployment.md); off: exact, slower")
    p.add_argument("--conv-kernel", choices=["qlinear", "integer"], default="qlinear",
                   help="quantized checkpoint: QDQ around Conv, fused by ORT to QLinearConv (default), or "
                   "ConvInteger + float epilogue (exact, slow in ONNX Runtime)")
    p.add_argument("--no-match-bias", action="store_true",
                   help="quantized checkpoint: round the int32 biases to s_x*s_w (ORT's default) instead of "
                   "matching the float bias's decisions")
    p.add_argument("--float-weights", action="store_true",
                   help="quantized checkpoint: float weights for the convs ONNX Runtime runs in float (faster, "
                   "larger file, those layers not packed)")
    p.add_argument("--parity-store", type=Path,
                   help="after exporting, compare the ONNX model with the checkpoint on this store's sequences")
    p.add_argument("--parity-subjects", help="comma-separated test subjects for the parity check, e.g. 075,076")
    p.add_argument("--no-rank1", action="store_true", help="parity check: embeddings only, skip the rank-1")
    p.add_argument("--protocol", help="parity check: the rank-1 comparison's protocol (gait3d, grew, ou-mvlp, ccpg, "
                   "sustech1k...; default: the one qgait train / quantize recorded in the checkpoint, else casia-b)")
    p.add_argument("--max-frames", type=int, default=720, help="frame cap per sequence in the parity check")
    p.add_argument("--report", type=Path, help="write the export (and parity) report as JSON here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (never the checkpoint itself)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "embed", help="embed silhouette sequences with an exported model",
        description="Embed sequences with an exported ONNX model (ONNX Runtime): OpenGait .pkl files (read with a "
        "numpy-only unpickler), .npy arrays, OpenGait folders or a qgait store (--store, with filters or "
        "--indices). Writes the embeddings [N, c, p] as .npy and the list of sequences as .json beside it.")
    p.add_argument("model", type=Path, help="exported model (.onnx or .qgpack)")
    p.add_argument("sequences", nargs="*", type=Path,
                   help="sequence files (.pkl/.npy uint8 [T, 64, 64|44]) or OpenGait folders")
    p.add_argument("--store", type=Path, help="a qgait store to take sequences from")
    p.add_argument("--indices", help="comma-separated store indices (instead of the filters)")
    _filters(p)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .npy file (never an input; an existing one is refused without --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output .npy / .json")
    p.add_argument("--max-frames", type=int, default=720, help="frames per sequence cap (default 720)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    _silhouette_check(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_embed)

    p = subparsers.add_parser(
        "identify", help="rank gallery subjects for probe sequences",
        description="Embed a gallery and probe sequences with an exported model and print, for every probe, the "
        "top-k gallery subjects (each scored by its nearest gallery sequence) with the part-averaged Euclidean "
        "distance. Gallery and probes: a qgait store, an OpenGait folder subject/condition/view/*.pkl, or "
        ".pkl / .npy files (a file has a subject label only in that layout, named <view>.pkl or "
        "<subject>-<condition>-<view>...; otherwise its subject is reported as unknown); a gallery can also be a "
        ".npz saved with --save-gallery. Subject, condition and view ids that the sources do not hold are refused. "
        "Raw PNG frames need `qgait data pretreat` first; sequences that do not look like silhouettes are refused "
        "(--no-silhouette-check).")
    p.add_argument("model", type=Path, help="exported model (.onnx or .qgpack)")
    p.add_argument("--gallery", nargs="+", type=Path, required=True,
                   help="gallery source(s): store, OpenGait folder, .pkl files, or a saved gallery .npz")
    _filters(p, "gallery", "gallery sequences")
    p.add_argument("--probe", nargs="+", type=Path, required=True, help="probe source(s): .pkl/.npy files, store "
                   "or OpenGait folder")
    _filters(p, "probe", "probe sequences")
    p.add_argument("--top-k", type=int, default=5, help="subjects to list per probe (default 5)")
    p.add_argument("--metric", choices=["euc", "cos"], default="euc",
                   help="euc: part-averaged Euclidean distance (default); cos: 1 - mean part cosine")
    p.add_argument("--save-gallery", type=Path, help="save the gallery embeddings as .npz for reuse (never an "
                   "input; an existing file is refused without --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save-gallery file")
    p.add_argument("--max-frames", type=int, default=720, help="frames per sequence cap (default 720)")
    p.add_argument("--threads", type=int,
                   help="ONNX Runtime threads (default: all cores; with --stream 1, measured fastest for one stream)")
    _silhouette_check(p)
    p.add_argument("--threshold", default="model",
                   help="open-set rejection: 'model' (default) answers 'unknown' beyond the threshold stored by "
                   "qgait calibrate (ranks only when the model has none); a distance to use instead; 'off' ranks "
                   "only")
    p.add_argument("--stream", action="store_true",
                   help="identify frame by frame: push each probe's frames in order into a streaming embedder "
                   "and print the decision every --every frames as it firms up")
    p.add_argument("--every", type=int, default=5, help="with --stream: frames between decisions (default 5)")
    p.add_argument("--firm-after", type=int, default=3,
                   help="with --stream: a decision is firm after this many updates with the same label (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_identify)

    p = subparsers.add_parser(
        "bench", help="benchmark FP32 / INT8 runtimes (PyTorch, torch.compile, ONNX Runtime, PT2E inductor)",
        description="Build the benchmark models (random weights, or --checkpoint), export them (FP32 ONNX, W8A8 "
        "QDQ with learned steps, ORT PTQ, PT2E .pt2) and time every variant in its own process with pinned "
        "threads: batch-1 latency and batch-N throughput (median and IQR), file size, peak RSS delta. Variants: "
        + ", ".join(f"{k} ({v})" for k, v in BENCH_VARIANTS.items()) + ".")
    p.add_argument("--models", default="full,cpu", help=f"comma-separated, of {','.join(BENCH_MODELS)} "
                   "(default full,cpu)")
    p.add_argument("--variants", help="comma-separated subset of the variants (default all)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs before timing (default 3)")
    p.add_argument("--frames", type=int, default=30, help="frames per sequence (default 30)")
    p.add_argument("--batch", type=int, default=8, help="sequences per throughput batch (default 8)")
    p.add_argument("--threads", type=int, help="threads for every runtime (default: all cores)")
    p.add_argument("--store", type=Path, help="store of real silhouettes for calibration (default: random frames)")
    p.add_argument("--checkpoint", type=Path, help="benchmark this FP model.pt instead of random weights")
    p.add_argument("--quant-checkpoint", type=Path,
                   help="with --checkpoint: a trained quantized model.pt (qgait quantize) to time as the "
                   "ort_int8_given variant")
    p.add_argument("--quick", action="store_true", help="3 repeats and 1 warm-up")
    p.add_argument("--output-dir", type=Path, help="write bench_deploy.json and bench_deploy.md here")
    p.set_defaults(func=_cmd_bench)


def build_deploy_parser() -> argparse.ArgumentParser:
    """A parser with only the deployment commands (for tests and ``python -m qgait.cli_deploy``)."""
    parser = argparse.ArgumentParser(prog="qgait", description=__doc__.splitlines()[0])
    add_deploy_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a deployment command; errors print ``qgait: error: ...`` and return 2, Ctrl-C prints one line and returns
    130 (as ``qgait.cli.main``)."""
    from .cli import run_command

    args = build_deploy_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
