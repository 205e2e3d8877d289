"""LCPAQ's low-cost proxy search (issue 15, item 4): the proxy's config cut, the rank agreement with full runs
(Kendall tau against hand-computed cases, the regret), and a real proxy search on CASIA-B subjects from a shared
stage-1 checkpoint that ranks, records, evaluates FP once and resumes without rerunning."""

from __future__ import annotations

import json
import math

import pytest

from qgait.cli import build_parser, main
from qgait.config import load_config
from qgait.workflows.proxy_search import (Candidate, ProxySpec, format_ranking, proxy_config, rank_agreement,
                                          run_proxy_search)
from qgait.workflows.quantize import run_quantize
from qgait.workflows.train import run_train


def _quant(stage1=2, stage2=4, milestones=(3,)):
    return ["quant.calibration_batches=1",
            f"quant.stage1={{iterations: {stage1}, lr: 0.01, rounding: ste}}",
            f"quant.stage2={{iterations: {stage2}, lr: 0.001, milestones: {list(milestones)}, rounding: ste}}",
            "quant.config.weight_bits=4", "quant.config.act_bits=4", "train.save_every=1", "quant.plot=false"]


def test_rank_agreement_matches_hand_computed_cases():
    full = {"a": 74.0, "b": 73.0, "c": 72.0, "d": 70.0}
    same = rank_agreement({"a": 9.0, "b": 8.0, "c": 7.0, "d": 1.0}, full)
    assert same["kendall_tau"] == pytest.approx(1.0) and same["top1_match"] and same["regret"] == 0.0
    assert same["proxy_order"] == same["full_order"] == ["a", "b", "c", "d"]
    rev = rank_agreement({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, full)
    assert rev["kendall_tau"] == pytest.approx(-1.0) and not rev["top1_match"] and rev["regret"] == pytest.approx(4.0)
    # one discordant pair of 6 (b, c swapped): tau = (5 - 1) / 6
    one = rank_agreement({"a": 4.0, "b": 2.0, "c": 3.0, "d": 1.0, "only_proxy": 99.0}, full)
    assert one["n"] == 4 and one["kendall_tau"] == pytest.approx(4 / 6) and 0 < one["p_value"] <= 1
    assert one["top1_match"] and one["regret"] == 0.0  # the candidate missing from the full runs is left out


@pytest.mark.parametrize("proxy, message", [({"a": 1.0, "b": 2.0}, "at least 3"),
                                             ({"a": 1.0, "b": 2.0, "c": math.nan}, "non-finite")])
def test_rank_agreement_refuses_too_few_or_bad_scores(proxy, message):
    with pytest.raises(ValueError, match=message):
        rank_agreement(proxy, {"a": 1.0, "b": 2.0, "c": 3.0})


def test_proxy_spec_refuses_a_budget_that_cannot_run():
    with pytest.raises(ValueError, match="stage-2 iterations must be >= 1"):
        ProxySpec(0)
    with pytest.raises(ValueError, match="test subjects must be >= 2"):
        ProxySpec(5, test_subjects=1)


def test_proxy_config_cuts_stage2_and_the_test_subjects_only(small_config_file):
    cfg = load_config(small_config_file, _quant(stage1=5, stage2=10, milestones=(3, 8)))
    cut = proxy_config(cfg, ProxySpec(4, test_subjects=2, stage1_iterations=2), shared_stage1=True)
    assert cut.quant.stage2.iterations == 4 and cut.quant.stage2.milestones == [3]
    assert cut.quant.stage2.lr == cfg.quant.stage2.lr and cut.quant.stage2.rounding == cfg.quant.stage2.rounding
    assert cut.quant.stage1 == cfg.quant.stage1  # shared: stage 1 is reused, never cut
    assert cut.data.test_subjects_limit == 2 and cut.model == cfg.model
    assert cfg.quant.stage2.iterations == 10  # the candidate's own config is untouched
    own = proxy_config(cfg, ProxySpec(4, stage1_iterations=2), shared_stage1=False)
    assert own.quant.stage1.iterations == 2 and own.data.test_subjects_limit is None
    with pytest.raises(ValueError, match="fewer than the proxy's 11"):
        proxy_config(cfg, ProxySpec(11), shared_stage1=True)
    with pytest.raises(ValueError, match="no quant section"):
        proxy_config(load_config(small_config_file), ProxySpec(1), shared_stage1=True)


@pytest.fixture(scope="module")
def fp_and_stage1(small_config_file, tmp_path_factory):
    cfg = load_config(small_config_file)
    fp_dir = tmp_path_factory.mktemp("fp")
    run_train(cfg, fp_dir, progress=False, evaluate=False)
    shared = tmp_path_factory.mktemp("shared")
    run_quantize(load_config(small_config_file, _quant(stage2=0) + ["quant.evaluate_stage1=false"]),
                 fp_dir / "last.pt", shared, progress=False, fp_results={"NM": 0, "BG": 0, "CL": 0, "mean": 0})
    return fp_dir / "last.pt", shared


def test_proxy_search_on_real_subjects_ranks_records_and_resumes(small_config_file, fp_and_stage1, tmp_path,
                                                                  capsys):
    fp, shared = fp_and_stage1
    candidates = {
        "ste": Candidate(load_config(small_config_file, _quant())),
        "soft": Candidate(load_config(small_config_file, _quant() + ["quant.stage2.rounding=soft_backward"])),
        "lr_high": Candidate(load_config(small_config_file, _quant() + ["quant.stage2.lr=0.05"])),
    }
    spec = ProxySpec(2, test_subjects=2)
    report = run_proxy_search(candidates, fp, tmp_path / "proxy", spec, stage1_from=shared)
    assert set(report["candidates"]) == set(candidates) and sorted(report["ranking"]) == sorted(candidates)
    means = [report["candidates"][n]["rank1"]["mean"] for n in report["ranking"]]
    assert means == sorted(means, reverse=True) and all(0 <= m <= 100 for m in means)
    assert 0 <= report["fp"]["mean"] <= 100 and report["spec"]["stage2_iterations"] == 2
    for name in candidates:
        run = tmp_path / "proxy" / name
        steps = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        assert [(r["stage"], r["iteration"]) for r in steps] == [("stage2", 1), ("stage2", 2)]  # stage 1 reused
        assert report["candidates"][name]["seconds"] > 0
    # the FP model is evaluated once, by the first candidate, on the same two test subjects
    assert [n for n in candidates if (tmp_path / "proxy" / n / "fp_results.json").is_file()] == ["ste"]
    fp_res = json.loads((tmp_path / "proxy" / "ste" / "fp_results.json").read_text())
    assert len(fp_res["per_subject"]["subjects"]) == 2
    assert json.loads((tmp_path / "proxy" / "proxy_search.json").read_text())["ranking"] == report["ranking"]
    assert format_ranking(report).count("\n") == len(candidates) + 2

    # resumed: nothing retrained (the logs keep two iterations each), the same report
    again = run_proxy_search(candidates, fp, tmp_path / "proxy", spec, stage1_from=shared)
    assert again["ranking"] == report["ranking"] and again["candidates"] == report["candidates"]
    assert all(len((tmp_path / "proxy" / n / "train_log.jsonl").read_text().splitlines()) == 2 for n in candidates)


def test_proxy_search_refuses_one_candidate_and_an_unshortenable_one(small_config_file, tmp_path):
    cfg = load_config(small_config_file, _quant())
    with pytest.raises(ValueError, match="at least 2 candidates"):
        run_proxy_search({"a": Candidate(cfg)}, "fp.pt", tmp_path, ProxySpec(1))
    with pytest.raises(ValueError, match="fewer than the proxy's 9"):
        run_proxy_search({"a": Candidate(cfg), "b": Candidate(cfg)}, "fp.pt", tmp_path, ProxySpec(9))
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_cli_registers_proxy_search_with_documented_options(capsys):
    a = build_parser().parse_args(["proxy-search", "a.yaml", "b.yaml", "--from", "fp.pt", "--output-dir", "o",
                                   "--iterations", "30", "--test-subjects", "10", "--set", "train.seed=0"])
    assert [str(c) for c in a.configs] == ["a.yaml", "b.yaml"] and a.iterations == 30 and a.test_subjects == 10
    assert a.overrides == ["train.seed=0"] and a.stage1_from is None
    with pytest.raises(SystemExit) as e:
        main(["proxy-search", "--help"])
    assert e.value.code == 0 and "shared" in capsys.readouterr().out
    sub = next(x for x in build_parser()._actions if x.__class__.__name__ == "_SubParsersAction")
    for action in sub.choices["proxy-search"]._actions:
        assert action.help, action.dest


def test_cli_refuses_two_candidates_with_one_name(small_config_file, tmp_path, capsys):
    rc = main(["proxy-search", str(small_config_file), str(small_config_file), "--from", "fp.pt",
               "--output-dir", str(tmp_path / "o"), "--iterations", "1", "--set", "quant.stage2.iterations=2"])
    assert rc == 2 and "two candidates named 'tiny'" in capsys.readouterr().err
