"""Deployment workflows: export a checkpoint, check parity, evaluate an exported model, embed and identify
sequences, benchmark the runtimes (``qgait export / embed / identify / bench``; docs/deployment.md).

A facade over the modules that do each job: :mod:`.export` (``export_checkpoint``), :mod:`.parity`
(``parity_check``, ``evaluate_onnx``), :mod:`.identify` (sequences, embedding, galleries, identification) and
:mod:`.bench` (the runtime benchmark). ``python -m qgait.workflows.deploy bench-child SPEC.json`` (internal) still
runs one benchmark variant, as ``python -m qgait.workflows.bench``."""

from __future__ import annotations

from .bench import BENCH_MODELS, BENCH_VARIANTS, format_benchmark, run_benchmark
from .export import export_checkpoint
from .identify import (SequenceItem, build_gallery, collect_sequences, embed_sequences, identify_sequences,
                       identify_stream)
from .parity import evaluate_onnx, parity_check

__all__ = [
    "export_checkpoint",
    "parity_check",
    "evaluate_onnx",
    "SequenceItem",
    "collect_sequences",
    "embed_sequences",
    "build_gallery",
    "identify_sequences",
    "identify_stream",
    "BENCH_MODELS",
    "BENCH_VARIANTS",
    "run_benchmark",
    "format_benchmark",
]


if __name__ == "__main__":
    import sys

    from .bench import _main

    sys.exit(_main(sys.argv[1:]))
