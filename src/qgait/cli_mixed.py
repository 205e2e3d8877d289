"""Mixed-precision commands of the ``qgait`` command line: ``mixed-precision`` and ``proxy-search`` (issue 15,
LCPAQ).

Hooked into ``qgait.cli.build_parser`` by :func:`add_mixed_commands`; the work is
:func:`qgait.workflows.mixed.run_mixed_precision` and :func:`qgait.workflows.proxy_search.run_proxy_search`. Errors (a malformed or infeasible budget, an existing output,
a config without a ``quant`` section) are ``ValueError`` s printed by ``qgait.cli.run_command`` as
``qgait: error: ...`` (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


RUNTIME_NAMES = ("ideal", "onnxruntime", "pt2e")
"""``qgait.quant.mixed.RUNTIMES``' names (written out: building the parser imports no torch; a test checks)."""


def _bits(values: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{values!r}: give comma-separated bit widths such as 2,3,4,8") from None
    if not out or any(not 2 <= b <= 8 for b in out):
        raise argparse.ArgumentTypeError(f"{values!r}: bit widths must be 2..8, e.g. 2,3,4,8")
    return out


def _cmd_mixed(a: argparse.Namespace) -> int:
    from .workflows.mixed import format_result, run_mixed_precision

    report = run_mixed_precision(
        a.config, getattr(a, "from"), a.budget, a.output, runtime=a.runtime, weight_bits=a.weight_bits,
        act_bits=a.act_bits, batches=a.batches, probes=a.probes, p=a.p, k=a.k, mac_frames=a.mac_frames,
        seed=a.seed, frontier_points=a.frontier_points, frontier_png=a.frontier_png, overwrite=a.overwrite,
        progress=not a.quiet, method=a.method)
    print(format_result(report))
    return 0


def _cmd_proxy(a: argparse.Namespace) -> int:
    from .config import load_config
    from .workflows.proxy_search import Candidate, ProxySpec, format_ranking, run_proxy_search

    spec = ProxySpec(a.iterations, a.test_subjects, a.stage1_iterations)
    candidates: dict[str, Candidate] = {}
    for path in a.configs:
        cfg = load_config(path, a.overrides)
        name = Path(path).stem
        if name in candidates:
            raise ValueError(f"{path}: two candidates named {name!r} (candidates are named by their file's stem)")
        candidates[name] = Candidate(cfg, tuple(a.teachers or ()) if cfg.distill is not None else ())
    report = run_proxy_search(candidates, getattr(a, "from"), a.output_dir, spec, stage1_from=a.stage1_from,
                              progress=not a.quiet)
    print(format_ranking(report))
    return 0


def add_mixed_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mixed-precision`` and ``proxy-search`` to the ``qgait`` sub-command parsers."""
    p = subparsers.add_parser(
        "mixed-precision", help="choose per-layer bits under a size / BOPs budget and write a quantize config",
        description="Mixed precision (LCPAQ, docs/mixed_precision.md): Hessian sensitivity of each quantized layer "
        "of the FP model on real training batches, size and BOPs under a runtime profile, and the integer program "
        "that minimises the summed Hessian-weighted quantization error under the budget (residual branches tied). "
        "Writes OUTPUT (a quantize config layered over CONFIG that sets quant.config.bit_map), OUTPUT with .json "
        "(per-layer traces and standard errors, the choice, uniform references, the Pareto frontiers, the seconds "
        "of each part) and optionally the frontier PNG. Train the result with: qgait quantize OUTPUT --from "
        "FP_CKPT.",
        epilog="Budget: size=w3a3 (the weight size of uniform W3A3 under --runtime), size=<KiB>, bops=w3a3, "
        "bops=<GBOPs per --mac-frames-frame sequence>, or several comma-separated (size=w3a3,bops=w3a3). An "
        "infeasible budget is refused with the smallest feasible one.")
    p.add_argument("config", type=Path, help="quantize config (file or recipe name, e.g. qgait_w4a4_cpu) with a "
                   "quant section: its layers, exclusions and schedule; the written config is layered over it")
    p.add_argument("--from", required=True, type=Path, metavar="FP_CKPT",
                   help="full-precision checkpoint: a run's model.pt (with its head) or last.pt")
    p.add_argument("--budget", required=True, metavar="SPEC",
                   help="size=w3a3 | size=<KiB> | bops=w3a3 | bops=<GBOPs>, comma-separated for several")
    p.add_argument("--output", required=True, type=Path, metavar="OUT.yaml",
                   help="the quantize config to write (the report goes beside it as OUT.json)")
    p.add_argument("--runtime", choices=RUNTIME_NAMES, default="ideal",
                   help="hardware profile of sizes and BOPs: ideal (every width computed and stored at its bits), "
                   "onnxruntime (int8 kernels, <= 4-bit weights packed as nibbles), pt2e (int8); default ideal")
    p.add_argument("--weight-bits", type=_bits, default=(2, 3, 4, 8), metavar="B,B,...",
                   help="weight bit widths to choose from (default 2,3,4,8)")
    p.add_argument("--act-bits", type=_bits, default=(3, 4, 8), metavar="B,B,...",
                   help="activation bit widths to choose from (default 3,4,8)")
    p.add_argument("--batches", type=int, default=2, help="training batches of the Hessian estimate (default 2)")
    p.add_argument("--probes", type=int, default=4, help="Rademacher probes per batch and layer (default 4)")
    p.add_argument("--p", type=int, default=None, help="subjects per Hessian batch (default: the config's P)")
    p.add_argument("--k", type=int, default=2, help="sequences per subject in a Hessian batch (default 2)")
    p.add_argument("--mac-frames", type=int, default=30,
                   help="frames of the sequence whose MACs / BOPs are counted (default 30)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the batches and the probes, and of --method random (default 0)")
    p.add_argument("--method", choices=["lcpaq", "hessian", "random"], default="lcpaq",
                   help="lcpaq (default): minimum summed Omega under the budget; hessian: HAWQ-style, weight Omega "
                   "only, activations at the budget's uniform bits; random: a random allocation filling >= 97%% of "
                   "the budget (the baselines of docs/mixed_precision.md)")
    p.add_argument("--frontier-points", type=int, default=None, metavar="N",
                   help="sample each Pareto frontier at N budgets (default: the exact walk, every corner)")
    p.add_argument("--frontier-png", type=Path, default=None, metavar="PNG", help="also plot the frontiers here")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_mixed)

    p = subparsers.add_parser(
        "proxy-search", help="rank quantize configs with short proxy runs (LCPAQ's low-cost proxy search)",
        description="Low-cost proxy search (LCPAQ, docs/mixed_precision.md): each CONFIG (a candidate: learning "
        "rate, rounding, losses...) trains only the first --iterations iterations of its stage 2, from one shared "
        "stage-1 checkpoint (--stage1-from) or its own shortened stage 1, and is evaluated on the first "
        "--test-subjects test subjects; prints the candidates best first and writes OUTPUT_DIR/proxy_search.json "
        "(each candidate's run folder beside it; an interrupted search resumes).")
    p.add_argument("configs", nargs="+", type=Path, metavar="CONFIG",
                   help="quantize configs, one per candidate (named by the file's stem)")
    p.add_argument("--from", required=True, type=Path, metavar="FP_CKPT", help="full-precision checkpoint")
    p.add_argument("--output-dir", required=True, type=Path, help="folder of the proxy runs and the report")
    p.add_argument("--iterations", required=True, type=int, metavar="N",
                   help="stage-2 iterations of each proxy run (the first N of the candidate's stage 2)")
    p.add_argument("--test-subjects", type=int, default=None, metavar="N",
                   help="evaluate on the first N test subjects (default: all)")
    p.add_argument("--stage1-from", type=Path, default=None, metavar="RUN_DIR",
                   help="a finished quantize run whose stage 1 every candidate reuses")
    p.add_argument("--stage1-iterations", type=int, default=None, metavar="N",
                   help="without --stage1-from: each candidate's stage 1 cut to N iterations")
    p.add_argument("--teacher", dest="teachers", action="append", type=Path, metavar="CKPT",
                   help="distillation teacher for the candidates with a distill section (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every candidate's config (e.g. train.seed=0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_proxy)


def build_mixed_parser() -> argparse.ArgumentParser:
    """A parser with only the mixed-precision command (for tests and ``python -m qgait.cli_mixed``)."""
    parser = argparse.ArgumentParser(prog="qgait", description=__doc__.splitlines()[0])
    add_mixed_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; errors print ``qgait: error: ...`` and return 2 (as ``qgait.cli.main``)."""
    from .cli import run_command

    args = build_mixed_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
