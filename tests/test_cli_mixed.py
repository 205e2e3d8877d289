"""``qgait mixed-precision``'s command line without a search: registration, the runtime names, and the errors
raised before any work (a malformed budget, bad bit lists, a config without a quant section, an output that is an
input). The search itself: tests/workflows/test_mixed_workflow.py."""

from __future__ import annotations

import pytest

from qgait.cli import build_parser, main


def test_registered_with_the_library_runtimes():
    from qgait.cli_mixed import RUNTIME_NAMES
    from qgait.quant.mixed import RUNTIMES

    assert tuple(RUNTIMES) == RUNTIME_NAMES
    a = build_parser().parse_args(["mixed-precision", "cfg.yaml", "--from", "fp.pt", "--budget", "size=w3a3",
                                   "--output", "o.yaml"])
    assert a.weight_bits == (2, 3, 4, 8) and a.act_bits == (3, 4, 8) and a.runtime == "ideal"
    assert a.batches == 2 and a.probes == 4 and not a.overwrite


def test_help_lists_the_command_and_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "mixed-precision" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["mixed-precision", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "size=w3a3" in out and "qgait quantize OUTPUT --from" in out
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for action in sub.choices["mixed-precision"]._actions:
        assert action.help, action.dest


@pytest.mark.parametrize("budget, message", [
    ("size", "'size' is not KEY=VALUE"),
    ("latency=3", "unknown budget 'latency'"),
    ("size=w3", "neither wNaM"),
    ("size=0", "must be a positive number of KiB"),
])
def test_malformed_budget_is_one_line_before_any_work(tmp_path, capsys, budget, message):
    out = tmp_path / "o.yaml"
    rc = main(["mixed-precision", str(tmp_path / "missing.yaml"), "--from", str(tmp_path / "missing.pt"),
               "--budget", budget, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("qgait: error: --budget")
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--probes", "0"], "--probes must be at least 1, got 0"),
    (["--frontier-points", "1"], "--frontier-points must be at least 2"),
    (["--frontier-png", "f.jpg"], "f.jpg: the frontier plot is a PNG"),
])
def test_bad_values_are_one_line_before_any_work(tmp_path, capsys, extra, message):
    rc = main(["mixed-precision", str(tmp_path / "missing.yaml"), "--from", str(tmp_path / "missing.pt"),
               "--budget", "size=w3a3", "--output", str(tmp_path / "o.yaml"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("flag, value", [("--weight-bits", "2,9"), ("--act-bits", "four"), ("--runtime", "tpu")])
def test_bad_options_are_argparse_errors(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["mixed-precision", "c.yaml", "--from", "f.pt", "--budget", "size=w3a3", "--output",
              str(tmp_path / "o.yaml"), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_config_without_quant_section_and_output_checks(small_config_file, tmp_path, capsys):
    fp = tmp_path / "fp.pt"
    fp.write_bytes(b"not read: the config is refused first")
    base = ["mixed-precision", str(small_config_file), "--from", str(fp), "--budget", "size=w3a3"]
    assert main(base + ["--output", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no quant section" in err and err.count("\n") == 1
    assert main(base + ["--output", str(fp.with_suffix(".json"))]) == 2
    assert "give a .yaml file name" in capsys.readouterr().err
    assert main(base + ["--output", str(small_config_file), "--overwrite"]) == 2  # never over its own input
    assert "this is an input of the command" in capsys.readouterr().err
