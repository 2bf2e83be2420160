"""Tests of src/cli.py: options from a dataclass, one-line errors, exit codes, software versions."""
import os
import platform
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import scipy

import src
from src.cli import REQUIRED, NoResult, UsageError, check, option, parse, run, software_versions

PROG = "script.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Options:
    duration: float = option(100.0, "simulated time (s)")
    seed: int = option(1, "seed of every random draw")
    name: str = option("run", "name of the output")
    onsets: list = option([20.0, 60.0], "pulse onsets (s)")
    quick: bool = option(False, "a small run")
    debug: bool = option(False, "show tracebacks")


@dataclass
class QuotedOptions:             # the annotations of a module with `from __future__ import annotations`
    duration: "float" = option(100.0, "simulated time (s)")
    seed: "int" = option(1, "seed")
    name: "str" = option("run", "name")
    onsets: "list" = option([20.0], "onsets (s)")
    quick: "bool" = option(False, "a small run")


QUICK = {"quick": {"duration": 1.0, "seed": 9, "onsets": [0.5]}}


def usage_error(argv, options_class=Options, presets=None):
    with pytest.raises(UsageError) as error:
        parse(options_class, argv, PROG, "doc", presets)
    message = str(error.value)
    assert "\n" not in message and message, message
    return message


# ----------------------------------------------------------------------------------------- parse
def test_defaults_and_a_fresh_list_each_time():
    first, second = parse(Options, [], PROG, "doc"), parse(Options, [], PROG, "doc")
    assert first == Options() == Options(duration=100.0, seed=1, name="run", onsets=[20.0, 60.0], quick=False)
    first.onsets.append(99.0)
    assert second.onsets == [20.0, 60.0] == Options().onsets


@pytest.mark.parametrize("options_class", [Options, QuotedOptions])
def test_values_are_converted_to_the_field_types(options_class):
    opt = parse(options_class, ["--duration", "2.5", "--seed", "3", "--name", "x y", "--onsets", "1", "2e-1", "3",
                                "--quick"], PROG, "doc")
    assert (opt.duration, opt.seed, opt.name, opt.onsets, opt.quick) == (2.5, 3, "x y", [1.0, 0.2, 3.0], True)
    assert type(opt.duration) is float and type(opt.seed) is int and all(type(v) is float for v in opt.onsets)
    assert parse(options_class, ["--duration=7", "--onsets", "4"], PROG, "doc").duration == 7.0


@pytest.mark.parametrize("argv, expected", [
    (["--durations", "2"], "unrecognized arguments: --durations 2"),
    (["--dur", "2"], "unrecognized arguments: --dur 2"),           # no abbreviations
    (["--q"], "unrecognized arguments: --q"),
    (["extra"], "unrecognized arguments: extra"),
    (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
    (["--duration", "2s"], "argument --duration: invalid float value: '2s'"),
    (["--onsets", "1", "x"], "argument --onsets: invalid float value: 'x'"),
    (["--duration"], "argument --duration: expected one argument"),
    (["--onsets"], "argument --onsets: expected at least one argument"),
    (["--quick", "yes"], "unrecognized arguments: yes"),
])
def test_bad_options_are_one_line_usage_errors(argv, expected):
    message = usage_error(argv)
    assert expected in message and message.endswith(f"({PROG} --help lists the options)"), message


@pytest.mark.parametrize("argv, expected", [
    (["--duration", "nan"], "--duration must be a finite number, got nan"),
    (["--duration", "inf"], "--duration must be a finite number, got inf"),
    (["--duration=-inf"], "--duration must be a finite number, got -inf"),   # "--duration -inf": -inf is an option
    (["--onsets", "1", "NaN", "2"], "--onsets must be a finite number, got nan"),
])
def test_non_finite_floats_are_refused(argv, expected):
    assert usage_error(argv) == expected


def test_a_preset_changes_the_defaults_and_an_explicit_option_wins():
    assert parse(Options, [], PROG, "doc", QUICK) == Options()                       # not asked for
    quick = parse(Options, ["--quick"], PROG, "doc", QUICK)
    assert (quick.duration, quick.seed, quick.onsets, quick.name, quick.quick) == (1.0, 9, [0.5], "run", True)
    for argv in (["--quick", "--duration", "5"], ["--duration", "5", "--quick"]):   # in either order
        opt = parse(Options, argv, PROG, "doc", QUICK)
        assert (opt.duration, opt.seed) == (5.0, 9), argv
    opt = parse(Options, ["--onsets", "3", "--quick"], PROG, "doc", QUICK)
    assert opt.onsets == [3.0] and opt.duration == 1.0


def test_help_lists_every_option_with_its_default_and_preset(capsys):
    with pytest.raises(SystemExit) as done:
        parse(Options, ["--help"], PROG, "The script's docstring.", QUICK)
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())       # argparse wraps lines
    assert out.startswith(f"usage: {PROG}") and "The script's docstring." in out
    for text in ("--duration DURATION simulated time (s) [default: 100.0; --quick: 1.0]",
                 "--seed SEED seed of every random draw [default: 1; --quick: 9]",
                 "--name NAME name of the output [default: 'run']",
                 "--onsets ONSETS [ONSETS ...] pulse onsets (s) [default: [20.0, 60.0]; --quick: [0.5]]",
                 "--quick a small run"):
        assert text in out, (text, out)


@dataclass
class WithPercent:
    band: float = option(0.9, "the 90% band")
    name: str = option("100%", "a default with a % sign")


def test_help_shows_percent_signs_as_written(capsys):
    """argparse %-formats help texts: a bare % in a help text or a default must not break --help."""
    with pytest.raises(SystemExit) as done:
        parse(WithPercent, ["--help"], PROG, "doc")
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--band BAND the 90% band [default: 0.9]" in out, out
    assert "--name NAME a default with a % sign [default: '100%']" in out, out


@pytest.mark.parametrize("program", ["train_meso", "simulate_with_trainedparams", "src.report",
                                     "src.microsim", "src.peers", "src.dataset import", "src.dataset export",
                                     "src.sweep"])
def test_every_program_prints_its_help(program):
    done = subprocess.run([sys.executable, "-m", *program.split(), "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage:"), (program, done.stderr[-500:])


@dataclass
class WithRequired:
    out: str = option(REQUIRED, "file to write")
    targets: list = option(None, "population indices (default all)", items=int)


def test_a_required_option_and_integer_lists(capsys):
    opt = parse(WithRequired, ["--out", "x.npz", "--targets", "0", "2"], PROG, "doc")
    assert opt.out == "x.npz" and opt.targets == [0, 2] and all(type(v) is int for v in opt.targets)
    assert parse(WithRequired, ["--out", "x.npz"], PROG, "doc").targets is None
    assert "the following arguments are required: --out" in usage_error([], WithRequired)
    assert "argument --targets: invalid int value: '1.5'" in usage_error(["--out", "x", "--targets", "1.5"],
                                                                         WithRequired)
    with pytest.raises(SystemExit):
        parse(WithRequired, ["--help"], PROG, "doc")
    out = " ".join(capsys.readouterr().out.split())
    assert "--out OUT file to write [required]" in out, out


def test_check_raises_the_first_failed_condition():
    check([(True, "fine")])
    with pytest.raises(UsageError, match="^--b must be > 0$"):
        check([(True, "--a"), (False, "--b must be > 0"), (False, "--c must be > 0")])


# ------------------------------------------------------------------------------------------- run
def raising(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error, status", [
    (NoResult("no trained run in result/: run train_meso.py first"), 1),
    (UsageError("--dt must be > 0, got 0.0"), 2),
    (ValueError("result/summary.json: not valid JSON"), 2),
    (FileNotFoundError(2, "No such file or directory"), 2),
    (PermissionError(13, "Permission denied"), 2),
])
def test_errors_become_one_line_and_an_exit_status(capsys, error, status):
    assert run(PROG, raising(error), ["--x"]) == status
    captured = capsys.readouterr()
    assert captured.err == f"{PROG}: error: {error}\n" and captured.out == "", captured


def test_interrupt_is_exit_130_with_its_message(capsys):
    assert run(PROG, raising(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == f"{PROG}: interrupted\n"
    assert run(PROG, raising(KeyboardInterrupt()), [], interrupted="stopped; rerun with --resume") == 130
    assert capsys.readouterr().err == f"{PROG}: stopped; rerun with --resume\n"
    assert run(PROG, raising(KeyboardInterrupt("interrupted during M-step 3")), []) == 130
    assert capsys.readouterr().err == f"{PROG}: interrupted during M-step 3\n"


@pytest.mark.parametrize("error", [UsageError("bad"), ValueError("bad"), FileNotFoundError(2, "gone")])
def test_debug_reraises(capsys, error):
    with pytest.raises(type(error)) as raised:
        run(PROG, raising(error), ["--debug"])
    assert raised.value is error and capsys.readouterr().err == ""


def test_a_bug_is_not_hidden():
    """Errors that are not about the input (a bug) keep their traceback, with or without --debug."""
    with pytest.raises(ZeroDivisionError):
        run(PROG, lambda argv: 1 / 0, [])


def test_exit_status_of_main_and_argv(monkeypatch):
    seen = []
    assert run(PROG, lambda argv: seen.append(argv), ["--a", "1"]) == 0          # None: success
    assert run(PROG, lambda argv: 3, []) == 3
    monkeypatch.setattr("sys.argv", [PROG, "--b", "2"])
    assert run(PROG, lambda argv: seen.append(argv)) == 0
    assert seen == [["--a", "1"], ["--b", "2"]]


# ------------------------------------------------------------------------------------- versions
def test_software_versions_names_a_missing_module_not_installed():
    versions = software_versions("pytest", "no_such_module_for_neulvm")
    assert versions == {"neulvm": src.__version__, "python": platform.python_version(), "numpy": np.__version__,
                        "scipy": scipy.__version__, "pytest": pytest.__version__,
                        "no_such_module_for_neulvm": "not installed"}
