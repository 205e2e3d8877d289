"""The main job (``qgait run``): import CASIA-B once, take the trained CPU-recipe FP model from the zoo (or train it
with ``--retrain``), quantize it with QGait W4A4 (two stages + IDC), evaluate that, print the FP vs W4A4 summary,
then deploy: export the W4A4 model as an int8 QDQ ONNX model with its learned steps (and packed 4-bit weights),
check its parity with the PyTorch fake-quantized model on the test subjects, and benchmark the FP32 and INT8
runtimes side by side.

``--quick`` is a first look in minutes: the same FP model, QAT cut to 20 + 10 iterations, 5 test subjects and a
short benchmark of four runtimes (:data:`QUICK_BENCH_VARIANTS`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import ExperimentConfig, load_config
from ..evaluation.report import format_comparison, rank1_row
from ..recipes import project_root, recipe_path
from .common import log, open_or_build_store, split_subjects
from .deploy import export_checkpoint, format_benchmark, parity_check, run_benchmark
from .quantize import run_quantize
from .train import run_train

ZOO_FP = Path("zoo") / "gaitbase_casiab_cpu"
"""The zoo folder of the trained CPU-recipe FP model (``model.pt``, ``results.json``), in the project folder."""

QUICK_BENCH_VARIANTS = ("torch_fp32_eager", "ort_fp32", "ort_int8_qat", "ort_int8_given")
"""The quick job's benchmark: PyTorch and ONNX Runtime FP32, the W8A8 int8 graph and the job's W4A4 export (the
compiling variants, torch.compile and PT2E + inductor, cost minutes on a slow CPU and run in the full job)."""


def describe_stages(cfg) -> str:
    """``stage 1 LSQ + STE, ...; stage 2 ...`` (plus ``+ IDC`` / ``+ IDD``, the soft quantizer and the batch-norm
    re-estimation where the config turns them on) for the main job's log."""
    q = cfg.quant
    names = {"ste": "STE", "soft_backward": "soft quantizer", "soft_forward": "soft quantizer (forward)"}
    parts = []
    for k, st in ((1, q.stage1), (2, q.stage2)):
        extra = "".join(f" + {name}" for name, c in (("IDC", q.idc), ("IDD", q.idd)) if c is not None and k in c.stages)
        parts.append(f"stage {k} {q.config.quantizer.upper()} + {names.get(st.rounding, st.rounding)}{extra}, "
                     f"{st.iterations} it at lr {st.lr:g}")
    if q.bn_reestimate_batches:
        parts.append(f"batch norms re-estimated on {q.bn_reestimate_batches} batches")
    return "; ".join(parts)


def zoo_checkpoint() -> Path | None:
    """``zoo/gaitbase_casiab_cpu/model.pt`` of the project folder (:func:`qgait.recipes.project_root`: the
    repository checkout), or None where it is not there (qgait installed without its repository)."""
    path = project_root() / ZOO_FP / "model.pt"
    return path if path.is_file() else None


def _zoo_results(fp_checkpoint: Path) -> tuple[dict | None, dict | None, Path | None]:
    """The FP model's ``{NM, BG, CL, mean}``, ``embedding_stats`` and report path from the ``results.json`` beside
    its checkpoint (a zoo folder's or a finished run's: its evaluation on all 50 test subjects), or Nones."""
    path = fp_checkpoint.parent / "results.json"
    if not path.is_file():
        return None, None, None
    res = json.loads(path.read_text())
    md = path.with_suffix(".md")
    return rank1_row(res), res.get("embedding_stats"), md if md.is_file() else path


def run_main_job(quick: bool = False, data: str | Path | None = None, out_root: str | Path = "runs",
                 progress: bool = True, retrain: bool = False, fp_checkpoint: str | Path | None = None) -> dict:
    """The main job (module docstring); returns the summary (also ``out_root/main_job_<cpu|quick>.json``).

    Args:
        data: CASIA-B source folder (OpenGait pickles or per-subject archives); default: the recipe's.
        out_root: folder that receives one run folder per stage.
        retrain: train the FP model (``gaitbase_casiab_cpu``, or ``gaitbase_casiab_quick`` with ``quick``) instead
            of starting from the zoo's checkpoint; also done, with a note, when the zoo is not there.
        fp_checkpoint: start from this FP ``model.pt`` (a CPU-recipe model) instead of the zoo's.

    Raises:
        ValueError: both ``retrain`` and ``fp_checkpoint``.
        ConfigError / CheckpointError / ValueError: see :func:`run_train`, :func:`run_quantize`,
            :func:`run_deploy` (an FP checkpoint of another architecture or input size is refused before QAT).
    """
    if retrain and fp_checkpoint is not None:
        raise ValueError("--retrain trains the FP model, --from gives one: choose one of them")
    quick_or_cpu = "quick" if quick else "cpu"
    cfg_path = recipe_path(f"gaitbase_casiab_{quick_or_cpu}")
    q_path = recipe_path(f"qgait_w4a4_{quick_or_cpu}")
    overrides = []
    if data is not None:
        data = Path(data).resolve()
        overrides += [f"data.source={data}", f"data.store={Path(out_root).resolve() / 'stores' / data.name}"]
    cfg = load_config(cfg_path, overrides)
    q_cfg = load_config(q_path, overrides)
    t0 = time.perf_counter()
    fp_dir, q_dir = Path(out_root) / cfg.name, Path(out_root) / q_cfg.name
    reports: dict[str, Path] = {}
    fp_results = fp_stats = None
    if fp_checkpoint is None and not retrain:
        fp_checkpoint = zoo_checkpoint()
        if fp_checkpoint is None:
            log(f"no {ZOO_FP / 'model.pt'} in {project_root()} (qgait installed without its repository): the FP "
                "model is trained first")
    if fp_checkpoint is not None and not quick:
        # the evaluation beside a zoo (or finished run's) model.pt is on the recipe's 50 test subjects, reused;
        # --quick evaluates on 5
        fp_results, fp_stats, zoo_report = _zoo_results(Path(fp_checkpoint))
        if zoo_report is not None:
            reports["FP32"] = zoo_report
    if fp_checkpoint is None:
        log(f"[1/3] full-precision training: {cfg_path.name} -> {fp_dir}")
        fp = run_train(cfg, fp_dir, progress=progress)
        fp_results, fp_name = fp.get("eval"), f"{cfg.name} FP32"
        qat_from, bench_fp = fp_dir / "last.pt", fp_dir / "model.pt"
        if (fp_dir / "results.md").is_file():
            reports["FP32"] = fp_dir / "results.md"
    else:
        fp_checkpoint = Path(fp_checkpoint)
        log(f"[1/3] full-precision model: {fp_checkpoint} (trained; `qgait run --retrain` trains it again)")
        fp = {"checkpoint": str(fp_checkpoint), "eval": fp_results}
        fp_name = f"{fp_checkpoint.parent.name} FP32"
        qat_from = bench_fp = fp_checkpoint
    log(f"[2/3] QGait W4A4 ({describe_stages(q_cfg)}): {q_path.name} -> {q_dir}")
    q = run_quantize(q_cfg, qat_from, q_dir, progress=progress, fp_results=fp_results, fp_embedding_stats=fp_stats)
    if fp_results is None:  # evaluated by the QAT run on its test subjects
        fp["eval"] = q["stages"].get("fp")
        reports["FP32"] = q_dir / "fp_results.md"
    summary = {"fp": fp, "qgait_w4a4": q}
    table = {fp_name: fp.get("eval") or {}}
    table.update({f"{q_cfg.name} {k}": v for k, v in q["stages"].items() if k != "fp"})
    for stage in ("stage1", "stage2"):
        if (q_dir / f"{stage}_results.md").is_file():
            reports[f"W4A4 {stage}"] = q_dir / f"{stage}_results.md"
    summary["table"] = format_comparison(table)
    print("\n## CASIA-B rank-1 (%), FP vs W4A4\n\n" + summary["table"])
    print("Full tables (rank-1 per probe view, view x view per set): "
          + "; ".join(f"{k} {v}" for k, v in reports.items()) + "\n")
    log(f"[3/3] deployment: int8 export of {q_dir / 'model.pt'}, parity on the test subjects, benchmark")
    deploy = run_deploy(q_cfg, bench_fp, q_dir / "model.pt", Path(out_root) / "deploy", quick, progress,
                        bench_variants=QUICK_BENCH_VARIANTS if quick else None)
    summary["deploy"] = deploy
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print("\n## int8 export: parity with the PyTorch fake-quantized model\n\n" + deploy["parity_table"])
    print("\n## FP32 vs INT8 runtimes\n\n" + deploy["bench_table"])
    out = Path(out_root) / f"main_job_{quick_or_cpu}.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"Summary, deployment report and benchmark: {out}, {Path(out_root) / 'deploy'} "
          f"({summary['wall_seconds'] / 60:.1f} min)")
    return summary


def format_parity(parity: dict, export: dict) -> str:
    """Markdown table of :func:`qgait.workflows.deploy.parity_check`'s result (rank-1 of both, cosine, sizes)."""
    lines = ["| model | NM | BG | CL | mean | file MB |", "|---|---|---|---|---|---|"]
    for name, key, size in (("PyTorch fake-quant", "torch", export["checkpoint_bytes"]),
                            (f"ONNX Runtime {export['kind']}", "onnx", export["bytes"])):
        r = parity.get(key)
        if r is None:
            continue
        lines.append(f"| {name} | {r['NM']:.2f} | {r['BG']:.2f} | {r['CL']:.2f} | {r['mean']:.2f} | {size / 1e6:.2f} |")
    if export.get("packed"):
        lines.append(f"| packed 4-bit weights (`.qgpack`) | | | | | {export['packed']['bytes'] / 1e6:.2f} |")
    lines += ["", f"Embedding cosine (ONNX Runtime vs PyTorch) over {parity['sequences']} test sequences: mean "
                  f"{parity['cosine_mean']:.5f}, min {parity['cosine_min']:.5f}."]
    return "\n".join(lines) + "\n"


def run_deploy(cfg: ExperimentConfig, fp_checkpoint: str | Path, q_checkpoint: str | Path, out_dir: str | Path,
               quick: bool = False, progress: bool = True, bench_variants: Sequence[str] | None = None) -> dict:
    """The deployment step of the main job (issue 4): export, parity, benchmark.

    1. ``q_checkpoint`` (a ``qgait-quant-model``) -> ``out_dir/<name>.int8.onnx`` (replaced if there: the folder
       is the job's): int8 QDQ with the learned steps
       and the export defaults (:func:`qgait.export.export_qdq`; residual requantization, calibrated on real
       training sequences of ``cfg``'s store, only for 8-bit activation grids); with weights of 4 bits or fewer
       also the packed ``.qgpack``.
    2. Parity on ``cfg``'s test subjects: embedding cosine and NM/BG/CL rank-1 of ONNX Runtime vs PyTorch.
    3. Benchmark (:func:`qgait.workflows.deploy.run_benchmark`): the trained CPU model (``fp_checkpoint``, its
       W8A8 and PTQ int8 variants, and ``q_checkpoint``'s export as ``ort_int8_given``) and, unless ``quick``,
       the full-size GaitBase (random weights: speed does not depend on the weights' values);
       ``bench_variants``: a subset of :data:`qgait.workflows.deploy.BENCH_VARIANTS` (default all).

    Returns:
        ``{"export", "parity", "bench", "parity_table", "bench_table"}``; also written to
        ``out_dir/deploy.json`` and ``out_dir/bench_deploy.md``.

    Raises:
        CheckpointError: a checkpoint is missing or corrupt. ValueError: ``cfg`` and the checkpoints disagree.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = open_or_build_store(cfg.data, progress)
    split = split_subjects(store, cfg.data)
    pack = cfg.quant is not None and cfg.quant.config.weight_bits <= 4
    export = export_checkpoint(q_checkpoint, out_dir / f"{cfg.name}.int8.onnx", calib_store=store.path,
                               calib_subjects=split.train_subjects, pack_int4=pack, overwrite=True)
    log(f"exported {export['output']} ({export['bytes'] / 1e6:.2f} MB); parity on {len(split.test_subjects)} "
        "test subjects")
    parity = parity_check(q_checkpoint, export["output"], store, split.test_subjects, size=cfg.data.input_size,
                          max_frames=cfg.data.test_max_frames, protocol=cfg.eval.protocol, progress=progress)
    bench = run_benchmark(models=("cpu",), variants=bench_variants, checkpoint=fp_checkpoint,
                          quant_checkpoint=q_checkpoint, store=store.path, quick=quick)
    if not quick:
        full_variants = [v for v in bench_variants if v != "ort_int8_given"] if bench_variants else None
        full = run_benchmark(models=("full",), variants=full_variants, store=store.path)
        bench["results"].update(full["results"])
        bench["config"]["models"] = ["cpu", "full"]
    out = {"export": export, "parity": parity, "bench": bench, "parity_table": format_parity(parity, export),
           "bench_table": format_benchmark(bench)}
    (out_dir / "deploy.json").write_text(json.dumps(out, indent=2, default=str))
    (out_dir / "bench_deploy.md").write_text(out["bench_table"])
    return out
