"""Deployment benchmark: FP32 / INT8 runtimes side by side for the full GaitBase and the CPU recipe model.

Variants (each measured in its own process, threads pinned to the cores):
FP32 PyTorch eager, FP32 torch.compile (inductor), FP32 ONNX Runtime, INT8 ONNX Runtime with the learned QDQ
steps (a ``quantize_`` W8A8 model calibrated on real or random frames), INT8 ONNX Runtime static PTQ, INT8 PyTorch
PT2E + inductor with the learned steps. Batch-1 latency of one 30-frame sequence and batch-8 throughput, median
and IQR over repeated runs after warm-up, file size, peak RSS delta.

Usage::

    python benchmarks/bench_deploy.py                       # both models, 10 repeats
    python benchmarks/bench_deploy.py --quick --models cpu  # a fast smoke run
    python benchmarks/bench_deploy.py --store stores/casia-b --output-dir runs/bench_deploy

Same as ``qgait bench``; writes ``bench_deploy.json`` / ``bench_deploy.md`` to ``--output-dir``, by default a new
folder ``results/bench/bench_deploy_<date>_<cpu>[_<k>]/`` (an earlier run is never overwritten).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from qgait.cli_deploy import build_deploy_parser

    from _record import record_path  # benchmarks/_record.py

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--output-dir" or a.startswith("--output-dir=") for a in argv):
        argv += ["--output-dir", str(record_path("bench_deploy").with_suffix(""))]
    parser = build_deploy_parser()
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())  # options: those of `qgait bench --help`
