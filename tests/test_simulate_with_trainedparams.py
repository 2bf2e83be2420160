"""Tests of simulate_with_trainedparams.py: run selection, clean errors, the files it writes.

The runs here are made by hand (a summary.json with the true parameters as the "fit"), so no
training is needed; the script only reads summary.json (the recording they name does not exist).
"""
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import simulate_with_trainedparams as script
from src.network import winner_take_all
from src.results import RunSummary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# a network that is not model.md's: the script must take N and the rest from the summary
NET = dataclasses.replace(winner_take_all(), N=np.array([300, 300, 150]), init_rates=np.array([18.0, 6.0, 24.0]))


def fake_run(folder, name, loss, theta, dataset="no/such/recording.npz", **options):
    """A run folder with a complete summary.json whose recording does not exist."""
    os.makedirs(os.path.join(folder, name))
    RunSummary(options={"dataset": dataset, "dt": 0.004, "a_cutoff": 1.0, "scheme": "exact", "Nsampled": 3,
                        **options},
               run_folder=os.path.join(folder, name), seed=0, dataset={"path": dataset, "seed": 7},
               network=NET.to_dict(), theta_names=[f"{g}_{a + 1}" for g in ("amem", "J", "rp", "ft") for a in range(3)],
               theta_true=NET.theta, prior_centre=NET.theta, theta_init=NET.theta, versions={},
               em_steps=[{"em_step": 0, "loss": loss}], finished=True, theta_final=np.asarray(theta),
               final_loss=loss, last_em_step=0).save(os.path.join(folder, name, "summary.json"))


@pytest.fixture
def runs(tmp_path):
    """Three complete runs (losses -1, -3, -2), one without summary.json, one with a truncated one."""
    folder = str(tmp_path / "data11")
    theta = winner_take_all().theta
    for name, loss, scale in (("train0", -1.0, 1.0), ("train1", -3.0, 1.1), ("train2", -2.0, 0.9)):
        fake_run(folder, name, loss, theta * scale)
    os.makedirs(os.path.join(folder, "train3"))                      # killed before its first EM step
    os.makedirs(os.path.join(folder, "train4"))
    with open(os.path.join(folder, "train4", "summary.json"), "w") as f:
        f.write('{"final_loss": ')                                     # cut while writing
    return folder


def run_script(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "simulate_with_trainedparams.py"), *args],
                          check=False, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("where", ["empty folder", "missing folder"])
def test_without_results_says_what_to_run_and_exits_1(tmp_path, where):
    folder = tmp_path / "data11"
    if where == "empty folder":
        folder.mkdir()
    out = run_script("--result_dir", str(folder), cwd=str(tmp_path))
    assert out.returncode == 1, out
    assert out.stderr.strip().count("\n") == 0, f"expected one line, got:\n{out.stderr}"
    assert "run bash 3pop_neuLVM.sh first" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--duration", "0"], "--duration must be > 0"),
    (["--input", "sine"], "--input must be none, pulses or ou"),
    (["--no_such_option", "1"], "unrecognized arguments"),
])
def test_bad_options_exit_2_in_one_line(tmp_path, args, message):
    out = run_script("--result_dir", str(tmp_path), *args, cwd=str(tmp_path))
    assert out.returncode == 2, out
    assert message in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr


def test_best_run_is_the_lowest_loss_and_broken_runs_are_skipped_with_a_warning(runs):
    with pytest.warns(UserWarning) as record:
        folder, summary = script.pick_run(script.parse_options(["--result_dir", runs]))
    assert os.path.basename(folder) == "train1" and summary.final_loss == -3.0
    skipped = " ".join(str(w.message) for w in record)
    assert "train3" in skipped and "train4" in skipped, skipped


def test_smc_runs_stand_for_a_folder_that_holds_both_kinds(runs):
    """With MAP and SMC runs in one folder, the best SMC run is the one simulated (the default E-step),
    although its final loss (-log p_hat per bin) is above the MAP runs' (joint loss): the two kinds
    are never ranked together, and src.runs names the best of each."""
    from src.runs import best_run
    theta = winner_take_all().theta
    fake_run(runs, "smc0", -0.4, theta * 1.3, estep="smc")
    fake_run(runs, "smc1", -0.5, theta * 1.2, estep="smc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # the broken runs of the fixture
        folder, summary = script.pick_run(script.parse_options(["--result_dir", runs]))
        assert os.path.basename(folder) == "smc1" and summary.final_loss == -0.5
        assert best_run(runs, "map")[0] == "train1"
    listing = subprocess.run([sys.executable, "-m", "src.runs", runs], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 0, listing
    assert f"best run (--estep map): {os.path.join(runs, 'train1')}" in listing.stdout, listing.stdout
    assert f"best run (--estep smc): {os.path.join(runs, 'smc1')}" in listing.stdout, listing.stdout


@pytest.mark.parametrize("option, value", [("Nsampled", 10), ("dt", 0.002), ("scheme", "euler")])
def test_runs_of_other_settings_in_one_folder_are_not_ranked_together(tmp_path, option, value):
    """A run with more observed neurons (or finer bins, or the other integrator) has a loss of other
    data or another model: picking the lowest of the folder would be a silent wrong choice."""
    folder = str(tmp_path / "data11")
    theta = winner_take_all().theta
    fake_run(folder, "train0", -1.0, theta)
    fake_run(folder, "other0", -9.0, theta, **{option: value})
    with pytest.raises(script.UsageError, match=f"other0 and train0 were fitted with --{option} "):
        script.pick_run(script.parse_options(["--result_dir", folder]))
    out = run_script("--result_dir", folder, cwd=str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "give each setting its own --SAVE_DIR" in out.stderr and "Traceback" not in out.stderr
    listing = subprocess.run([sys.executable, "-m", "src.runs", folder], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 2 and f"--{option}" in listing.stderr, listing


def test_run_option_picks_that_run_and_a_partial_one_is_an_error(runs):
    folder, _ = script.pick_run(script.parse_options(["--result_dir", runs, "--run", "train2"]))
    assert os.path.basename(folder) == "train2"
    with pytest.raises(script.NoResult, match="run bash 3pop_neuLVM.sh first"):
        script.pick_run(script.parse_options(["--result_dir", runs, "--run", "train3"]))
    with pytest.raises(script.UsageError, match="no such run folder"):
        script.pick_run(script.parse_options(["--result_dir", runs, "--run", "train9"]))


@pytest.mark.parametrize("kind", ["none", "pulses"])
def test_simulates_the_fitted_model_and_writes_png_svg_and_the_seed(runs, kind, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # the broken runs of the fixture
        status = script.main(["--result_dir", runs, "--duration", "3", "--seed", "5", "--input", kind,
                              "--pulse_onsets", "1", "--pulse_amplitude", "50"])
    assert status == 0
    base = os.path.join(runs, "train1", f"simulation_{kind}_seed5")
    for ext in ("png", "svg", "json"):
        assert os.path.getsize(f"{base}.{ext}") > 0, ext
    with open(base + ".json") as f:
        record = json.load(f)
    assert record["seed"] == 5 and record["options"]["input"] == kind
    np.testing.assert_allclose(record["theta"], NET.theta * 1.1, rtol=1e-12,
                               err_msg="the simulated model must carry the best run's fitted theta")
    # the recording of the fake run does not exist: the fixed parameters are the summary's network
    assert record["network"]["N"] == [300, 300, 150] and record["network"]["init_rates"] == [18.0, 6.0, 24.0]
    assert record["scheme"] == "exact" and record["dt"] == 0.004 and record["a_cutoff"] == 1.0
    assert "final loss -3.000000" in capsys.readouterr().out


def test_input_is_the_bin_average_of_the_microscopic_input():
    opt = script.parse_options(["--input", "pulses", "--pulse_onsets", "0.002", "--pulse_duration", "0.004",
                                "--pulse_amplitude", "10", "--pulse_target", "0"])
    I_ext = script.external_input(opt, 3, 5, 0.004)
    # the pulse covers 2-6 ms: half of bin 0 and half of bin 1
    np.testing.assert_allclose(I_ext[0], [5, 5, 0, 0, 0], err_msg="pulse input per 4 ms bin")
    assert not I_ext[1:].any()


def test_a_real_run_whose_recording_was_moved_away_simulates_from_its_summary_alone(tmp_path, capsys):
    """Train a tiny run on a copy of the shipped recording, move the copy away: the script rebuilds
    the model from summary.json, and its simulation equals one of the recording's network with the
    fitted theta (same seed, scheme, dt), bin for bin."""
    import shutil

    import train_meso
    from src import neulvm
    from src.dataset import load_recording
    shipped = os.path.join(REPO, "dataset", "3pop_noinput_small.npz")
    copy = str(tmp_path / "recording.npz")
    shutil.copy(shipped, copy)
    summary = train_meso.main(["--dataset", copy, "--trial_length", "2", "--t_perbatch", "2", "--end_timepoint", "3",
                               "--max_EMsteps", "1", "--Emaxiters", "2", "--Mmaxiters", "2", "--estep", "map",
                               "--SAVE_DIR", str(tmp_path / "res") + "/"])
    os.rename(copy, str(tmp_path / "moved.npz"))
    folder = os.path.join(str(tmp_path / "res"), "data3")
    assert script.main(["--result_dir", folder, "--duration", "2", "--seed", "3"]) == 0
    with open(os.path.join(folder, "train0", "simulation_none_seed3.json")) as f:
        record = json.load(f)
    net = load_recording(shipped).network.with_theta(summary.theta_final)
    expected = neulvm.simulate(net, 2.0, 3, scheme="exact")
    np.testing.assert_array_equal(record["mean_rates_Hz"], expected["A"].mean(axis=1))
    assert record["network"]["N"] == net.N.tolist() and record["scheme"] == "exact"
