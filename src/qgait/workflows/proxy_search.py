"""Low-cost proxy search of quantization hyperparameters (LCPAQ's third module; issue 15, item 4).

LCPAQ (arXiv 2402.17706, section 3.3; ``../shared/docs/methods.md`` 3) ranks candidate quantization
hyperparameters with short *proxy* runs instead of full QAT runs, which is where most of its search-time saving
comes from. Our proxy, measured against full runs in ``docs/mixed_precision.md`` ("Proxy search"):

- every candidate starts from one shared stage-1 checkpoint (``stage1_from``: the fair protocol's shared start,
  ``docs/lowbit.md``), so that only what the candidate changes is trained;
- it trains the first ``stage2_iterations`` iterations of the candidate's stage 2 (its learning rate, rounding,
  losses; a schedule over the stage, such as the soft quantizer's alpha, is compressed into the shorter stage);
- it evaluates on the first ``test_subjects`` test subjects only (rank-1 of the dataset's protocol).

How well the proxy ranking predicts the full-run ranking is :func:`rank_agreement` (Kendall's tau-b, its p-value,
and the regret of picking the proxy's best).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import ExperimentConfig
from .common import log

__all__ = ["ProxySpec", "Candidate", "proxy_config", "run_proxy_search", "rank_agreement", "format_ranking"]


@dataclass(frozen=True)
class ProxySpec:
    """The proxy's budget.

    Attributes:
        stage2_iterations: iterations of stage 2 the proxy trains (the first ones of each candidate's stage 2).
        test_subjects: the proxy evaluates on the first N test subjects (``None``: all of them).
        stage1_iterations: without a shared stage-1 start, the proxy's stage-1 iterations (``None``: the
            candidate's own); ignored when ``stage1_from`` is given (stage 1 is then reused, not trained).
    """

    stage2_iterations: int
    test_subjects: int | None = None
    stage1_iterations: int | None = None

    def __post_init__(self) -> None:
        if self.stage2_iterations < 1:
            raise ValueError(f"proxy stage-2 iterations must be >= 1, got {self.stage2_iterations}")
        if self.test_subjects is not None and self.test_subjects < 2:
            raise ValueError(f"proxy test subjects must be >= 2 (a gallery and a probe), got {self.test_subjects}")
        if self.stage1_iterations is not None and self.stage1_iterations < 0:
            raise ValueError(f"proxy stage-1 iterations must be >= 0, got {self.stage1_iterations}")


@dataclass(frozen=True)
class Candidate:
    """One candidate: its quantize config and the distillation teachers its ``distill`` terms need."""

    config: ExperimentConfig
    teachers: tuple[str | Path, ...] = field(default_factory=tuple)


def _shorten(stage, iterations: int):
    return stage.model_copy(update={"iterations": iterations,
                                    "milestones": [m for m in stage.milestones if m < iterations]})


def proxy_config(cfg: ExperimentConfig, spec: ProxySpec, shared_stage1: bool) -> ExperimentConfig:
    """``cfg`` cut to the proxy's budget: stage 2 shortened to ``spec.stage2_iterations`` (milestones past it
    dropped), stage 1 to ``spec.stage1_iterations`` unless it is shared, evaluation on the first
    ``spec.test_subjects`` test subjects.

    Raises:
        ValueError: ``cfg`` has no ``quant`` section, no stage 2, or a stage 2 shorter than the proxy's (a proxy
            must be cheaper than the run it predicts).
    """
    q = cfg.quant
    if q is None:
        raise ValueError(f"config {cfg.name!r} has no quant section: nothing to search")
    if q.stage2.iterations < spec.stage2_iterations:
        raise ValueError(f"config {cfg.name!r}: its stage 2 has {q.stage2.iterations} iterations, fewer than the "
                         f"proxy's {spec.stage2_iterations}")
    update = {"stage2": _shorten(q.stage2, spec.stage2_iterations)}
    if not shared_stage1 and spec.stage1_iterations is not None:
        update["stage1"] = _shorten(q.stage1, min(spec.stage1_iterations, q.stage1.iterations))
    data = cfg.data.model_copy(update={"test_subjects_limit": spec.test_subjects}) if spec.test_subjects else cfg.data
    return cfg.model_copy(update={"quant": q.model_copy(update=update), "data": data})


def run_proxy_search(candidates: Mapping[str, Candidate], fp_checkpoint: str | Path, out_dir: str | Path,
                     spec: ProxySpec, stage1_from: str | Path | None = None, progress: bool = False) -> dict:
    """Run each candidate's proxy (``out_dir/<name>/``, a ``qgait quantize`` run folder) and rank them.

    Resumable: a candidate whose ``out_dir/<name>/proxy.json`` exists is not rerun (an interrupted one resumes
    from its checkpoints). The FP model is evaluated once, on the proxy's test subjects, by the first candidate
    run; its seconds are not counted in that candidate's.

    Args:
        candidates: name -> :class:`Candidate` (at least 2).
        fp_checkpoint: the FP checkpoint every candidate quantizes.
        stage1_from: a finished run folder whose stage 1 every candidate reuses (``qgait quantize
            --stage1-from``); without it each candidate trains its own (cut by ``spec.stage1_iterations``).

    Returns:
        ``{"spec", "stage1_from", "fp": {NM, BG, CL, mean}, "candidates": {name: {"rank1": {...}, "seconds",
        "config"}}, "ranking": [names, best proxy mean rank-1 first], "seconds": total}``; also written to
        ``out_dir/proxy_search.json``.

    Raises:
        ValueError: fewer than 2 candidates, or a candidate :func:`proxy_config` refuses (before any training).
    """
    from .quantize import run_quantize

    if len(candidates) < 2:
        raise ValueError(f"a proxy search ranks at least 2 candidates, got {len(candidates)}")
    out_dir = Path(out_dir)
    configs = {name: proxy_config(c.config, spec, stage1_from is not None) for name, c in candidates.items()}
    results: dict[str, dict] = {}
    fp: dict | None = None
    for name, cand in candidates.items():
        run_dir = out_dir / name
        record = run_dir / "proxy.json"
        if record.is_file():
            results[name] = json.loads(record.read_text())
            fp = fp or results[name].get("fp")
            continue
        log(f"proxy {name}: {spec.stage2_iterations} stage-2 iterations, "
            f"{spec.test_subjects or 'all'} test subjects")
        t0 = time.perf_counter()
        summary = run_quantize(configs[name], fp_checkpoint, run_dir, progress=progress, fp_results=fp,
                               stage1_from=stage1_from, teachers=list(cand.teachers) or None)
        seconds = time.perf_counter() - t0
        fp_path = run_dir / "fp_results.json"
        if fp is None and fp_path.is_file():
            seconds -= json.loads(fp_path.read_text()).get("eval_seconds", 0.0)
        fp = fp or summary["stages"]["fp"]
        final = summary["stages"].get("stage2") or summary["stages"].get("final")
        results[name] = {"rank1": final, "seconds": round(seconds, 1), "config": configs[name].name, "fp": fp}
        tmp = record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results[name], indent=1) + "\n")
        tmp.replace(record)
    ranking = sorted(results, key=lambda n: -results[n]["rank1"]["mean"])
    report = {"spec": asdict(spec), "stage1_from": str(stage1_from) if stage1_from else None, "fp": fp,
              "candidates": {n: {k: v for k, v in r.items() if k != "fp"} for n, r in results.items()},
              "ranking": ranking, "seconds": round(sum(r["seconds"] for r in results.values()), 1)}
    (out_dir / "proxy_search.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def rank_agreement(proxy: Mapping[str, float], full: Mapping[str, float]) -> dict:
    """How well the proxy's scores rank the candidates as the full runs do (higher score = better).

    Over the candidates present in both: Kendall's tau-b (``scipy.stats.kendalltau``; 1 = same order, -1 =
    reversed, ties counted as tau-b does) with its two-sided p-value under independence; whether the proxy's best
    is the full runs' best; and the *regret*: the full-run score of the best candidate minus that of the
    proxy's best (0 when the proxy picks the winner; in the scores' unit).

    Returns:
        ``{"n", "kendall_tau", "p_value", "top1_match", "regret", "proxy_order", "full_order"}``.

    Raises:
        ValueError: fewer than 3 common candidates (a rank correlation of 2 is +-1 by construction), or a
            non-finite score.
    """
    from scipy.stats import kendalltau

    names = [n for n in proxy if n in full]
    if len(names) < 3:
        raise ValueError(f"rank agreement needs at least 3 candidates in both rankings, got {len(names)}: {names}")
    bad = [n for n in names if not (math.isfinite(proxy[n]) and math.isfinite(full[n]))]
    if bad:
        raise ValueError(f"non-finite scores for {bad}")
    p = [float(proxy[n]) for n in names]
    f = [float(full[n]) for n in names]
    res = kendalltau(p, f)
    best_proxy = max(names, key=lambda n: proxy[n])
    best_full = max(f)
    return {"n": len(names), "kendall_tau": float(res.statistic), "p_value": float(res.pvalue),
            "top1_match": full[best_proxy] == best_full, "regret": best_full - float(full[best_proxy]),
            "proxy_order": sorted(names, key=lambda n: -proxy[n]), "full_order": sorted(names, key=lambda n: -full[n])}


def format_ranking(report: Mapping) -> str:
    """A text table of :func:`run_proxy_search`'s report: the candidates best first, rank-1 and seconds."""
    spec = report["spec"]
    lines = [f"proxy: {spec['stage2_iterations']} stage-2 iterations, "
             f"{spec['test_subjects'] or 'all'} test subjects; FP on them: {report['fp']['mean']:.2f}",
             f"{'rank':>4}  {'candidate':<32} {'NM':>6} {'BG':>6} {'CL':>6} {'mean':>6} {'seconds':>8}"]
    for i, name in enumerate(report["ranking"], 1):
        c = report["candidates"][name]
        r = c["rank1"]
        lines.append(f"{i:>4}  {name:<32} {r['NM']:6.2f} {r['BG']:6.2f} {r['CL']:6.2f} {r['mean']:6.2f} "
                     f"{c['seconds']:8.1f}")
    lines.append(f"total proxy time {report['seconds']:.0f} s")
    return "\n".join(lines)
