"""Tests of src/convert.py (python -m src.dataset import|export) and of a fit without ground truth (issue 15).

- round trip: the shipped recording exported to NWB and imported back bins to the same spikes and
  input, bit for bit, and gives the same loss at the same theta and Z (numpy reference)
- Neo (a list of SpikeTrains, and a file neo.io reads) gives the same recording as NWB
- every bad input: exit status 2, one line naming the file, unit or option, nothing written
- an imported recording (no truth) is fitted end to end; its plots, report and free simulation are
  written without truth
"""
import csv
import os
import runpy
import sys

import numpy as np
import pytest

pytest.importorskip("pynwb")
neo = pytest.importorskip("neo")
pq = pytest.importorskip("quantities")

import simulate_with_trainedparams  # noqa: E402
import train_meso  # noqa: E402
from src import convert, neulvm, plots, report  # noqa: E402
from src.cli import run  # noqa: E402
from src.dataset import load_recording  # noqa: E402
from src.helper import bin_recording, make_window  # noqa: E402
from src.results import RunSummary, load_arrays, load_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "dataset", "3pop_noinput_small.npz")
NETWORK = ["--populations", "E1", "E2", "I", "--N", "400", "400", "200", "--conmat", "1", "0", "1", "0", "1", "1",
           "-1", "-1", "-1", "--asyn", repr(1000 / 3), repr(1000 / 3), repr(500 / 3)]
PRIOR = ["--amem", "50,50,50", "--J", "10,10,20", "--rp", "14.4,14.4,14.4", "--ft", "3.7,3.7,3.7"]
# 0.1 s of data after 0.1 s of history, an M-step on finite differences of the numpy reference (no
# TensorFlow compilation of the theta gradient), one or two iterations: the smallest fit with every part
TINY_FIT = ["--trial_length", "0.1", "--t_perbatch", "0.1", "--end_timepoint", "0.3", "--a_cutoff", "0.1",
            "--Emaxiters", "2", "--Mmaxiters", "1", "--max_EMsteps", "1", "--LOG_PER", "2", "--mstep_grad", "numeric",
            "--estep", "map"]


def call(main, argv, capsys):
    """(exit status, stdout, stderr) of a command line run in this process, as src.cli.run makes it."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped recording as NWB, written by the command line (in this process: a new one would
    import pynwb again)."""
    path = str(tmp_path_factory.mktemp("nwb") / "3pop.nwb")
    assert convert.main(["export", "--nwb", path, "--dataset", SHIPPED]) == 0
    return path


@pytest.mark.filterwarnings("ignore:'src.dataset' found in sys.modules:RuntimeWarning")   # runpy, as -m does
def test_the_command_line_is_python_m_src_dataset(exported, tmp_path, monkeypatch, capsys):
    """`python -m src.dataset` runs src/convert.py's main (run here as __main__, as -m does); the export
    prints the import command that reads its file back."""
    monkeypatch.setattr(sys, "argv", ["src/dataset.py", "export", "--nwb", str(tmp_path / "x.nwb")])
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:
        runpy.run_module("src.dataset", run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code == 0 and f"import it with: python -m src.dataset import --nwb {tmp_path / 'x.nwb'}" in out
    monkeypatch.setattr(sys, "argv", ["src/dataset.py", "imprt"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("src.dataset", run_name="__main__")
    assert done.value.code == 2 and "expected a command, import or export, got imprt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def imported(exported, tmp_path_factory):
    """The exported file imported back: the path of the recording."""
    out = str(tmp_path_factory.mktemp("imported") / "3pop_imported.npz")
    assert convert.main(["import", "--nwb", exported, "--out", out, *NETWORK]) == 0
    return out


# ------------------------------------------------------------------ round trip

def test_round_trip_gives_the_same_binned_spikes_and_loss_bit_for_bit(imported):
    original, back = load_recording(SHIPPED), load_recording(imported)
    assert original.has_truth and not back.has_truth and back.seed is None and back.activity is None
    np.testing.assert_array_equal(back.spikes, original.spikes)
    assert back.populations == ("E1", "E2", "I") and back.unit_ids[1, 0] == "30"
    for name in ("N", "asyn", "conmat", "ref_t", "eps"):
        np.testing.assert_array_equal(getattr(back.network, name), getattr(original.network, name), err_msg=name)
    assert np.all(np.isnan(back.network.theta))
    # the initial rates are the recorded units' mean rates (Hz)
    np.testing.assert_allclose(back.network.init_rates, original.spikes.sum(axis=(1, 2)) / (30 * original.duration),
                               rtol=1e-12)
    Z, y, I_ext = bin_recording(original, 0.004)
    Z_back, y_back, I_back = bin_recording(back, 0.004)
    assert Z_back is None
    np.testing.assert_array_equal(y_back, y)
    np.testing.assert_array_equal(I_back, I_ext)
    window = dict(trial_length=1.0, t_perbatch=1.0, end_timepoint=2.0, a_cutoff=0.2)
    w, w_back = make_window(original, **window), make_window(back, **window)
    assert w_back.Z_true is None
    Z_fit = np.clip(w.Z_true, 1e-5, 1.0)
    for theta in (original.network.theta, original.network.theta * np.linspace(0.8, 1.2, 12)):
        loss = neulvm.losses(theta, w, Z_fit, backend="numpy")
        assert neulvm.losses(theta, w_back, Z_fit, backend="numpy") == loss, loss


def test_neo_gives_the_same_recording_as_nwb(imported, tmp_path, capsys):
    """The same spike trains as a list of neo.SpikeTrain (Python) and as a file neo.io reads (command line)."""
    rec = load_recording(SHIPPED)
    names = ("E1", "E2", "I")
    trains = [neo.SpikeTrain((np.flatnonzero(rec.spikes[a, j]) + 0.5) * rec.h * pq.s, t_start=0 * pq.s,
                             t_stop=rec.duration * pq.s, name=str(a * 30 + j), population=names[a])
              for a in range(3) for j in range(30)]
    units, span = convert.read_neo(trains)
    from_list, notes = convert.build_recording(units, "trains", list(names), [400, 400, 200], rec.network.conmat,
                                               rec.network.asyn, *span)
    nwb = load_recording(imported)
    block = neo.Block()
    block.segments.append(neo.Segment())
    block.segments[0].spiketrains.extend(trains)
    path = str(tmp_path / "units.mat")
    neo.io.NeoMatlabIO(path).write_block(block)
    out = str(tmp_path / "neo.npz")
    assert call(convert.main, ["import", "--neo", path, "--out", out, *NETWORK], capsys)[0] == 0
    for got in (from_list, load_recording(out)):
        np.testing.assert_array_equal(got.spikes, nwb.spikes)
        np.testing.assert_array_equal(got.I_ext, nwb.I_ext)
        np.testing.assert_array_equal(got.unit_ids, nwb.unit_ids)
        for key, value in nwb.network.to_dict().items():
            np.testing.assert_array_equal(getattr(got.network, key), value, err_msg=key)
    assert notes == [] and span == (0.0, rec.duration)


# ------------------------------------------------------------------ bad input

def small_nwb(path, units, column="population", intervals=True):
    """An NWB file with units [(id, population, spike times)] observed over 0..1 s."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    nwb = NWBFile(session_description="test", identifier="test", session_start_time=datetime(2022, 1, 1,
                                                                                              tzinfo=timezone.utc))
    if column:
        nwb.add_unit_column(column, "population")
    for unit_id, population, times in units:
        extra = {column: population} if column else {}
        if intervals:
            extra["obs_intervals"] = [[0.0, 1.0]]
        nwb.add_unit(id=unit_id, spike_times=times, **extra)
    with NWBHDF5IO(path, "w") as io:
        io.write(nwb)
    return path


GOOD = [(0, "A", [0.1, 0.2, 0.3]), (1, "A", [0.15, 0.5]), (2, "B", [0.05, 0.6]), (3, "B", [0.7])]
TWO = ["--populations", "A", "B", "--N", "10", "10", "--conmat", "1", "0", "0", "1", "--asyn", "100", "100",
       "--Nsampled", "2"]


def with_unit(k, **change):
    units = [list(u) for u in GOOD]
    for i, key in enumerate(("id", "population", "times")):
        if key in change:
            units[k][i] = change[key]
    return [tuple(u) for u in units]


@pytest.mark.parametrize("units, options, message", [
    (with_unit(0, times=[0.3, 0.1, 0.2]), [], "unit 0: spike times are not sorted (0.3 s before 0.1 s)"),
    (with_unit(0, times=[0.1, 0.1, 0.3]), [], "unit 0 has duplicate spike times (0.1 s twice)"),
    (with_unit(1, times=[-0.1, 0.5]), [], "unit 1 has negative spike times"),
    (with_unit(1, times=[0.1, np.nan]), [], "unit 1 has 1 non-finite spike times"),
    (GOOD, ["--t_stop", "0.65"], "unit 3 has 1 spikes outside the range 0..0.65 s"),
    (with_unit(0, times=[0.1, 0.102, 0.3, 0.301]), [],
     "2 spikes in 1 units follow the unit's previous spike by less than ref_t = 4 ms, which the model cannot "
     "produce (unit 0: 2); --drop_violations"),
    (with_unit(2, population=""), [], "unit 2 has no population"),
    (with_unit(2, population="C"), [], "unit 2 is in population 'C', which --populations (A B) does not list"),
    (with_unit(3, population="A"), [], "population B has 1 units, fewer than --Nsampled 2"),
    (GOOD, ["--population_column", "type"], "the Units table has no column 'type' (columns: population, "),
    (GOOD, ["--N", "10"], "--N must be 2 sizes >= 1"),
    (GOOD, ["--input", "stimulus"], "no TimeSeries 'stimulus' (--input)"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, units, options, message):
    source = small_nwb(str(tmp_path / "in.nwb"), units)
    out = tmp_path / "out.npz"
    status, _, err = call(convert.main, ["import", "--nwb", source, "--out", str(out), *TWO, *options], capsys)
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["in.nwb"]


@pytest.mark.parametrize("make, message", [
    (lambda p: open(p, "w").write("not hdf5"), "not an NWB file"),
    (lambda p: small_nwb(p, GOOD, intervals=False), "give the range with --t_start and --t_stop"),
    (lambda p: small_nwb(p, GOOD, column=""), "the Units table has no column 'population'"),
])
def test_files_that_are_not_what_the_import_reads(tmp_path, capsys, make, message):
    source = str(tmp_path / "in.nwb")
    make(source)
    status, _, err = call(convert.main, ["import", "--nwb", source, "--out", str(tmp_path / "o.npz"), *TWO], capsys)
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["in.nwb"]


def test_a_neo_pickle_is_never_loaded(tmp_path, capsys):
    from tests.conftest import malicious_pickle
    marker = tmp_path / "ran"
    source = malicious_pickle(tmp_path / "block.pkl", marker)
    status, _, err = call(convert.main, ["import", "--neo", source, "--out", str(tmp_path / "o.npz"), *TWO], capsys)
    assert status == 2 and "is a Python pickle; pickles are never loaded" in err, err
    assert not marker.exists() and sorted(os.listdir(tmp_path)) == ["block.pkl"]


@pytest.mark.parametrize("name, text, message", [
    ("map.csv", "unit_id,population\n0,A\n1,A\n2,B\n3,B\n", None),
    ("map.toml", '[units]\n0 = "A"\n1 = "A"\n2 = "B"\n3 = "B"\n', None),
    ("map.csv", "unit,population\n0,A\n", "map.csv: missing column 'unit_id'"),
    ("map.csv", "unit_id,population\n0,A\n1,A\n2,B\n", "unit 3 has no population"),
    ("map.toml", '[units]\n0 = "A"\n9 = "B"\n', "the mapping names unit 9, which is not in the data"),
])
def test_a_mapping_file_gives_the_populations(tmp_path, capsys, name, text, message):
    source = small_nwb(str(tmp_path / "in.nwb"), GOOD, column="")
    (tmp_path / name).write_text(text)
    out = tmp_path / "o.npz"
    status, _, err = call(convert.main, ["import", "--nwb", source, "--out", str(out), *TWO, "--mapping",
                                         str(tmp_path / name)], capsys)
    if message is None:
        assert status == 0, err
        np.testing.assert_array_equal(load_recording(out).unit_ids, [["0", "1"], ["2", "3"]])
    else:
        assert status == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_drop_violations_drops_the_later_spike_and_says_how_many(tmp_path, capsys):
    source = small_nwb(str(tmp_path / "in.nwb"), with_unit(0, times=[0.1, 0.102, 0.103, 0.3]))
    out = tmp_path / "o.npz"
    status, stdout, err = call(convert.main, ["import", "--nwb", source, "--out", str(out), *TWO,
                                              "--drop_violations"], capsys)
    assert status == 0 and "dropped 2 spikes closer than ref_t = 4 ms" in stdout, (stdout, err)
    spikes = load_recording(out).spikes
    np.testing.assert_array_equal(np.flatnonzero(spikes[0, 0]), [500, 1500])     # 0.1 s and 0.3 s at 0.2 ms


def test_the_input_is_taken_from_a_timeseries(tmp_path, capsys):
    from pynwb import NWBHDF5IO, TimeSeries
    source = str(tmp_path / "in.nwb")
    small_nwb(source, GOOD)
    with NWBHDF5IO(source, "a") as io:                      # a 1 kHz input: each value holds for 5 steps
        nwb = io.read()
        nwb.add_acquisition(TimeSeries(name="drive", data=np.arange(2000.0).reshape(1000, 2), unit="1/s",
                                       rate=1000.0, starting_time=0.0))
        io.write(nwb)
    out = tmp_path / "o.npz"
    status, _, err = call(convert.main, ["import", "--nwb", source, "--out", str(out), *TWO, "--input", "drive"],
                          capsys)
    assert status == 0, err
    rec = load_recording(out)
    np.testing.assert_array_equal(rec.I_ext, np.repeat(np.arange(2000.0).reshape(1000, 2).T, 5, axis=1))
    assert rec.input_kind == "recorded"


# ------------------------------------------------------------------ a fit without ground truth

def test_a_recording_without_truth_is_fitted_reported_and_simulated(imported, tmp_path, capsys, monkeypatch):
    save = str(tmp_path) + "/"
    argv = ["--dataset", imported, *TINY_FIT, "--SAVE_DIR", save]
    status, _, err = call(lambda a: run("train_meso.py", train_meso.main, a), argv + PRIOR[:4], capsys)
    assert status == 2 and err.count("\n") == 1 and "has no ground truth (no true parameters): give the prior " \
        "centre with --amem, --J, --rp, --ft (missing: --rp, --ft)" in err, err
    assert not os.path.exists(os.path.join(save, "data0.3"))

    summary = train_meso.main(argv + PRIOR)
    folder = os.path.join(save, "data0.3", "train0")
    on_disk = load_json(os.path.join(folder, "summary.json"))
    assert "theta_true" not in on_disk and on_disk["network"]["amem"] is None and on_disk["dataset"]["seed"] is None
    assert RunSummary.load(os.path.join(folder, "summary.json")).theta_true is None and summary.finished
    np.testing.assert_array_equal(summary.fitted_network().theta, summary.theta_final)
    for name in ("init.png", "E_0_0.png", "Eloss.png"):
        assert os.path.getsize(os.path.join(folder, name)) > 0, name

    # the activity plot: the raster and the estimate, no truth line
    labels = []
    original = plots.plt.Axes.plot
    monkeypatch.setattr(plots.plt.Axes, "plot", lambda ax, *a, **k: labels.append(k.get("label")) or original(
        ax, *a, **k))
    window = make_window(load_recording(imported), 0.004, 0.2, 0.2, 0.6, 0.2)
    plots.plot_activity(str(tmp_path / "activity.png"), window, np.full((1, 3, 50), 0.01), 0.004)
    assert labels.count("estimated") == 3 and "true" not in labels, labels
    monkeypatch.undo()

    # the report: parameters and reproducibility; the sections that need the truth say so
    assert report.main(["--result_dir", os.path.dirname(folder), "--quick"]) == 0
    text = open(os.path.join(os.path.dirname(folder), "report.md")).read()
    for section in report.NEEDS_TRUTH:
        assert f"## {section}\n\nNot measured: it needs" in text, section
    assert "## 2. Parameters" in text and "| amem_1 | n/a |" in text and "## 5. Reproducibility" in text
    numbers = load_json(os.path.join(os.path.dirname(folder), "report.json"))
    assert numbers["parameters"]["train0"]["parameters"][0]["true"] is None
    assert set(numbers["not_measured_without_ground_truth"]) == set(report.NEEDS_TRUTH)
    assert not any(name.startswith("report_") for name in os.listdir(os.path.dirname(folder)))

    # the sweep's summary: the fit's row without the measures that need the truth, and no oracle
    from src import sweep
    assert sweep.main(["summarize", save, "--oracle"]) == 0
    with open(os.path.join(save, "cells.csv")) as cells:
        (row,) = csv.DictReader(cells)
    assert row["run"] == "train0" and row["final_loss"] != ""
    assert all(row[k] == "" for k in row if k.startswith(("err_", "drive_", "r_", "rmse_"))), row
    assert not os.path.exists(os.path.join(save, "data0.3", "oracle.json"))

    # the free simulation needs only the summary
    assert simulate_with_trainedparams.main(["--result_dir", os.path.dirname(folder), "--duration", "1"]) == 0
    assert "n/a" in capsys.readouterr().out
    assert os.path.getsize(os.path.join(folder, "simulation_none_seed1.png")) > 0


def test_a_recording_without_truth_is_fitted_with_the_default_smc_e_step(imported, tmp_path, capsys):
    """The default E-step on data without ground truth: the fit, its report (into report_smc/, the
    sections that need the truth said so) and its free simulation, with no truth anywhere."""
    save = str(tmp_path) + "/"
    smc = [a for a in TINY_FIT if a not in ("--estep", "map")] + ["--particles", "20", "--SAVE_DIR", save]
    summary = train_meso.main(["--dataset", imported, *smc, *PRIOR])
    folder = os.path.join(save, "data0.3", "train0")
    assert summary.finished and summary.options["estep"] == "smc" and summary.theta_true is None
    est = load_arrays(os.path.join(folder, "E0_est_param"))
    assert np.isfinite(est["log_p_hat"]) and np.all(est["Z_q05"] <= est["Z_q95"])
    assert report.main(["--result_dir", os.path.dirname(folder), "--quick"]) == 0
    text = open(os.path.join(os.path.dirname(folder), "report_smc", "report.md")).read()
    for section in report.NEEDS_TRUTH:
        assert f"## {section}\n\nNot measured: it needs" in text, section
    assert "| amem_1 | n/a |" in text
    assert simulate_with_trainedparams.main(["--result_dir", os.path.dirname(folder), "--duration", "1"]) == 0
    assert "run " + folder in capsys.readouterr().out
