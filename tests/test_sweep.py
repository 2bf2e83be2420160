"""src/sweep.py: a grid of train_meso.py fits on a Dask LocalCluster (issue 14).

One sweep of 4 tiny fits on 2 worker processes is run through everything the issue asks of it, once
(a fit costs ~15 s of TensorFlow start-up and compilation, so each check does not get its own):
a worker is SIGKILLed just after its fit started, then the sweep itself is SIGKILLed while fits run
(just started, which costs least), then the same command is run again to the end. Meanwhile the same
4 fits run one after the other through train_meso.main in a process of their own. The tests then
check: the same numbers as those; the killed worker reported, its fit run again and complete; the
rerun redoing no complete fit, and every result file whole, once. The grid checks and the summary need no cluster.
"""
import glob
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

psutil = pytest.importorskip("psutil", reason="the sweep needs dask and distributed: requirements-dask.txt")
pytest.importorskip("distributed", reason="the sweep needs dask and distributed: requirements-dask.txt")

import train_meso  # noqa: E402
from src import sweep  # noqa: E402
from src.cli import run  # noqa: E402
from src.results import RunSummary  # noqa: E402
from tests.test_train_meso import DATASET, ROOT, check_run_files  # noqa: E402

# the smallest fit with two EM steps; --LOG_PER 1000: one activity plot per E-step
TINY = ["--trial_length", "0.2", "--t_perbatch", "0.2", "--a_cutoff", "0.2", "--Emaxiters", "3", "--Mmaxiters", "3",
        "--max_EMsteps", "2", "--LOG_PER", "1000"]
GRID = ["--dataset", DATASET, "--end_timepoint", "0.6", "0.8", "--train_Noinit", "0", "1", "--estep", "map"]
POLL = 0.2   # s between looks at the processes


def sweep_command(out):
    return [sys.executable, "-m", "src.sweep", *GRID, "--out", str(out), "--workers", "2", "--dashboard", "none",
            "--log_every", "1", "--", *TINY]


def fits_of(out):
    """{run folder: train_meso.py options} of the grid, as the sweep builds them."""
    opt, fit_argv = sweep.parse_options([*GRID, "--out", str(out), "--", *TINY])
    return {fit.folder: list(fit.argv) for fit, _ in sweep.make_fits(opt, fit_argv)}


def fit_children(process):
    """{train_meso.py process: its run folder} of the fits under the sweep process."""
    fits = {}
    try:
        for child in process.children(recursive=True):
            cmdline = child.cmdline()
            if sweep.TRAIN_MESO in cmdline:
                argv = cmdline[cmdline.index(sweep.TRAIN_MESO) + 1:]
                fits[child] = train_meso.run_folder(train_meso.parse_options(argv))
    except psutil.Error:                      # a process ended meanwhile: look again later
        return {}
    return fits


def wait_for(condition, what, process):
    """Poll until condition() is true; fails if the sweep ended first. No time limit (see tests/)."""
    while not condition():
        assert process.poll() is None, f"the sweep ended before {what}"
        time.sleep(POLL)


def finished(folder):
    path = os.path.join(folder, "summary.json")
    return os.path.exists(path) and RunSummary.load(path).finished


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    out = root / "sweep"
    fits = fits_of(out)
    baseline = {}

    def one_by_one():     # the same fits one after the other, through train_meso.main in one fresh process
        argvs = []
        for folder, argv in fits.items():
            argv = [a for a in argv if a != "--resume"]
            argv[argv.index("--SAVE_DIR") + 1] = str(root / "one_by_one" / os.path.relpath(folder, str(out))) + os.sep
            argvs.append(argv)
        subprocess.run([sys.executable, "-c", f"import train_meso\nfor argv in {argvs!r}: train_meso.main(argv)"],
                       cwd=ROOT, check=True, capture_output=True)
        for folder, argv in zip(fits, argvs):
            baseline[folder] = RunSummary.load(os.path.join(train_meso.run_folder(train_meso.parse_options(argv)),
                                                            "summary.json"))

    reference = threading.Thread(target=one_by_one)
    reference.start()

    first_log = open(root / "first.log", "w")
    first = subprocess.Popen(sweep_command(out), cwd=ROOT, stdout=first_log, stderr=subprocess.STDOUT)
    watched = psutil.Process(first.pid)
    # 1. SIGKILL the worker process of the first fit that has started
    def started():
        return [(c, f) for c, f in fit_children(watched).items()
                if os.path.exists(f + ".out") and "start (PID" in open(f + ".out").read()]
    wait_for(lambda: started(), "a fit started", first)
    victim_child, victim = started()[0]
    victim_child.parent().send_signal(signal.SIGKILL)
    # 2. SIGKILL the sweep once the victim's fit is complete again and another fit has started
    wait_for(lambda: finished(victim) and any(not finished(f) for c, f in started()),
             "the killed fit completed while another ran", first)
    running = [f for f in fit_children(watched).values() if not finished(f)]
    first.send_signal(signal.SIGKILL)
    first.wait()
    first_log.close()
    # the fits of the dead sweep stop on their own (their workers died: SIGTERM); wait for them
    psutil.wait_procs([p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])])
    complete = {f: digest(os.path.join(f, "summary.json")) for f in fits if finished(f)}
    attempts = {f: open(f + ".out").read().count("== attempt") for f in fits if os.path.exists(f + ".out")}
    # 3. the same command again, to the end
    second = subprocess.run(sweep_command(out), cwd=ROOT, capture_output=True, text=True)
    reference.join()
    return {"out": out, "fits": fits, "baseline": baseline, "victim": victim, "running": running,
            "complete": complete, "attempts": attempts, "first": open(root / "first.log").read(), "second": second}


@pytest.mark.long
def test_sweep_gives_the_numbers_of_fits_run_one_by_one(scenario):
    assert scenario["second"].returncode == 0, scenario["second"].stdout + scenario["second"].stderr
    assert set(scenario["baseline"]) == set(scenario["fits"])
    for folder, expected in scenario["baseline"].items():
        got = RunSummary.load(os.path.join(folder, "summary.json"))
        assert got.finished and len(got.em_steps) == len(expected.em_steps) == 2, folder
        np.testing.assert_array_equal(got.theta_init, expected.theta_init, err_msg=folder)
        np.testing.assert_array_equal(got.theta_final, expected.theta_final, err_msg=folder)
        assert got.final_loss == expected.final_loss, (folder, got.final_loss, expected.final_loss)


@pytest.mark.long
def test_killed_worker_is_reported_and_its_fit_run_again(scenario):
    victim = scenario["victim"]
    lines = [line for line in scenario["first"].splitlines() if "FAILED (attempt 1)" in line]
    assert len(lines) == 1 and "died during the fit" in lines[0] and "running it once more" in lines[0], lines
    end, restart = os.path.basename(os.path.dirname(victim))[4:], os.path.basename(victim)[5:]
    assert f"end_timepoint={end} " in lines[0] and f"train_Noinit={restart} " in lines[0], (victim, lines)
    assert open(victim + ".out").read().count("== attempt") == 2
    assert victim in scenario["complete"], "the fit of the killed worker did not complete in the first sweep"


@pytest.mark.long
def test_killed_sweep_rerun_redoes_no_complete_fit_and_loses_nothing(scenario):
    out, complete = scenario["out"], scenario["complete"]
    assert 1 <= len(complete) < len(scenario["fits"]), complete
    assert f"{len(scenario['fits'])} fits in {out} ({len(complete)} complete already)" in scenario["second"].stdout
    for folder, before in complete.items():                   # not redone: untouched
        assert digest(os.path.join(folder, "summary.json")) == before, folder
        assert open(folder + ".out").read().count("== attempt") == scenario["attempts"][folder], folder
    for folder in scenario["running"]:                        # stopped cleanly when the sweep died, then resumed
        text = open(folder + ".out").read()
        assert "interrupted during" in text and text.count("== attempt") == scenario["attempts"][folder] + 1, text
    runs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(str(out), "**", "summary.json"), recursive=True))
    assert runs == sorted(scenario["fits"]), runs             # each fit once, where the grid says
    for folder in runs:
        assert check_run_files(folder) == ([0, 1], []), folder    # every file whole, no temporaries


# ------------------------------------------------------------------ without a cluster

def test_invalid_cell_fails_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "sweep"
    status = run(sweep.PROG, sweep.main, [*GRID, "--Nsampled", "3", "40", "--out", str(out), "--", *TINY])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "cell dataset=3pop_noinput_small.npz end_timepoint=0.6 Nsampled=40 train_Noinit=0" in err, err
    assert "Nsampled must be between 1 and the 30 recorded neurons" in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv, expected", [
    (["--", "--Nsampled", "5"], "--Nsampled after -- is set by the sweep for each fit; give it as a grid axis"),
    (["--", "--SAVE_DIR", "x/"], "--SAVE_DIR after -- is set by the sweep for each fit; leave it out"),
    (["--train_Noinit", "0", "0"], "--train_Noinit lists a value twice"),
    (["--", "--max_EMsteps", "-1"], "max_EMsteps must be >= 1 (or 0 for the E-step's default), got -1"),
    (["--scheme", "rk4"], "scheme=rk4"),
    (["--dataset", "/nonexistent/rec.npz"], "/nonexistent/rec.npz: no such file"),
    (["--cluster", "sge"], "--cluster must be one of slurm, pbs, got 'sge'"),
])
def test_bad_grid_is_one_line_naming_what(tmp_path, capsys, argv, expected):
    out = tmp_path / "sweep"
    assert run(sweep.PROG, sweep.main, ["--out", str(out), "--end_timepoint", "0.6", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_grid_file_and_command_line(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'out = "{tmp_path}/g"\ndataset = "{DATASET}"\nend_timepoint = [0.6, 0.8]\nNsampled = [1, 3]\n'
                    'train_Noinit = [0, 1, 2]\n[fit]\ntrial_length = 0.2\nt_perbatch = 0.2\na_cutoff = 0.2\n')
    opt, fit_argv = sweep.parse_options(["--grid", str(grid), "--Nsampled", "2"])      # the command line wins
    assert (opt.end_timepoint, opt.Nsampled, opt.train_Noinit, opt.dataset) == ([0.6, 0.8], [2], [0, 1, 2], [DATASET])
    assert fit_argv == ["--trial_length", "0.2", "--t_perbatch", "0.2", "--a_cutoff", "0.2"]
    fits = sweep.make_fits(opt, fit_argv)
    assert len(fits) == 6 and not any(complete for _, complete in fits)
    assert fits[0][0].folder == os.path.join(str(tmp_path), "g", "3pop_noinput_small", "N2_exact_smc", "data0.6",
                                             "train0")
    grid.write_text("end_timepoint = [0.6]\nworkerz = 3\n")
    with pytest.raises(sweep.UsageError, match=f"--grid {grid}: unknown key 'workerz'"):
        sweep.parse_options(["--grid", str(grid)])
    grid.write_text("end_timepoint = ['soon']\n")
    with pytest.raises(sweep.UsageError, match="end_timepoint must be a list of float values"):
        sweep.parse_options(["--grid", str(grid)])


@pytest.mark.long
def test_summarize_tables_and_figures(scenario):
    from src.report import measure_parameters
    out = str(scenario["out"])
    assert sweep.main(["summarize", out]) == 0
    rows, _ = sweep.fit_rows(out)
    assert len(rows) == 4
    for row in rows:
        s = RunSummary.load(os.path.join(out, row["cell"], row["run"], "summary.json"))
        expected = measure_parameters({row["run"]: s})[row["run"]]["parameters"]
        assert [row[f"err_{p['name']}"] for p in expected] == [p["rel_error"] for p in expected]
        assert row["final_loss"] == s.final_loss and -1 <= row["r_E1"] <= 1 and row["rmse_E1"] >= 0
    cells = open(os.path.join(out, "cells.csv")).read().splitlines()
    assert len(cells) == 3                                  # a header and the 2 grid cells
    for cell in ("data0.6", "data0.8"):
        mine = [r for r in rows if r["cell"].endswith(cell)]
        best = min(mine, key=lambda r: r["final_loss"])
        line = next(c for c in cells[1:] if f"/{cell}," in c)
        assert line.startswith(f"2,{best['cell']},{best['run']},"), (line, best)
    for name in ("fits.csv", "summary.md", "errors_vs_window.png", "spread_over_windows.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name


def test_summarize_oracle_is_the_m_step_on_the_true_activity_of_the_fits_window(tmp_path, monkeypatch):
    """--oracle: a row of E-step "oracle" per window whose errors are those of src.em.oracle_fit on the
    window built here from the fit's options (Nsampled 2, so a window of the default Nsampled would
    differ), kept in oracle.json and read from there the second time."""
    from src import em
    from src.dataset import load_recording
    from src.helper import make_window
    out = tmp_path / "sweep"
    train_meso.main(["--dataset", DATASET, "--end_timepoint", "0.6", "--Nsampled", "2", "--SAVE_DIR", f"{out}/",
                     *TINY, "--max_EMsteps", "1", "--estep", "map"])
    assert sweep.main(["summarize", str(out), "--oracle"]) == 0
    window = make_window(load_recording(DATASET), 0.004, 0.2, 0.2, 0.6, 0.2, 2)
    theta, _ = em.oracle_fit(window, "exact")
    truth = window.net.theta
    lines = [line.split(",") for line in open(out / "cells.csv").read().splitlines()]
    header, rows = lines[0], [dict(zip(lines[0], line)) for line in lines[1:]]
    assert [r["estep"] for r in rows] == ["map", "oracle"]
    names = [k for k in header if k.startswith("err_")]
    np.testing.assert_allclose([float(rows[1][k]) for k in names], (theta - truth) / truth, rtol=0, atol=1e-9)
    assert "E-step oracle" in open(out / "summary.md").read()
    # r and RMSE of the fit's latent, by hand: its last E-step's Z against the window's truth, both
    # smoothed 20 ms (5 bins of 4 ms), in Hz, the batches laid end to end.
    from scipy.ndimage import gaussian_filter1d
    run_folder = out / "data0.6" / "train0"
    last = RunSummary.load(run_folder / "summary.json").em_steps[-1]["em_step"]
    Z_fit = np.load(run_folder / f"E{last}_est_param", allow_pickle=False)["Z"]
    fit_hz, true_hz = (gaussian_filter1d(Z.transpose(1, 0, 2).reshape(3, -1), 5.0, mode="nearest") / 0.004
                       for Z in (Z_fit, window.Z_true))
    fit_row = sweep.fit_rows(str(out))[0][0]
    for a, name in enumerate(("E1", "E2", "I")):
        assert fit_row[f"r_{name}"] == pytest.approx(np.corrcoef(fit_hz[a], true_hz[a])[0, 1], abs=1e-9)
        rmse = np.sqrt(np.mean((fit_hz[a] - true_hz[a]) ** 2))
        assert fit_row[f"rmse_{name}"] == pytest.approx(rmse, abs=1e-9)
    # drive: h0 - ft at the window's true mean activity, fitted minus true, for the fit and the oracle
    A = window.Z_true.mean(axis=(0, 2)) / 0.004
    def drive(th):                                                          # noqa: E306
        amem, J, rp, ft = np.reshape(th, (4, 3))
        return rp + (A * J) @ window.net.conmat / amem - ft
    fitted = RunSummary.load(run_folder / "summary.json").theta_final
    oracle_row = sweep.oracle_rows(str(out), [fit_row])[0]
    for a, name in enumerate(("E1", "E2", "I")):
        assert fit_row[f"drive_{name}"] == pytest.approx(drive(fitted)[a] - drive(truth)[a], abs=1e-9)
        assert oracle_row[f"drive_{name}"] == pytest.approx(drive(theta)[a] - drive(truth)[a], abs=1e-9)
    monkeypatch.setattr(em, "oracle_fit", lambda *a, **k: pytest.fail("the kept oracle was computed again"))
    assert sweep.main(["summarize", str(out), "--oracle"]) == 0


def test_window_spread_is_over_the_windows_of_each_setting():
    """Percentiles by hand: fitted / true 0.4, 1.0, 2.0 over three windows -> median 1.0, quartiles
    0.7 and 1.5 (linear interpolation), and of the drive's differences -1, 0, 2 -> 0, -0.5, 1; a setting
    with one window, and cells without truth, are left out."""
    def cell(end, estep, err):
        return {"dataset": "rec.npz", "end_timepoint": end, "Nsampled": 3, "scheme": "exact", "estep": estep,
                "err_J_1": err, "drive_E1": None if err is None else {-0.6: -1.0, 0.0: 0.0, 1.0: 2.0}.get(err, 0.3)}
    cells = [cell(35, "map", -0.6), cell(44, "map", 0.0), cell(65, "map", 1.0), cell(80, "map", None),
             cell(35, "smc", 0.1)]
    (row,) = sweep.window_spread(cells, ["J_1"])
    assert (row["estep"], row["windows"]) == ("map", 3)
    np.testing.assert_allclose(row["spread_J_1"], [1.0, 0.7, 1.5, 0.4, 2.0], rtol=1e-12)
    np.testing.assert_allclose(row["spread_drive_E1"], [0.0, -0.5, 1.0, -1.0, 2.0], rtol=1e-12)


def test_time_left_counts_the_running_fits_and_the_slots():
    """Fits of 100 s on average: nothing known before one ends; two slots busy for 90 and 10 s with 4
    fits left: (4 * 100 + 10 + 90) / 2 = 250 s; the last two running: the later one's 90 s; a running
    fit past the mean counts as about to end."""
    assert sweep.time_left(5, [], [10.0, 20.0]) is None
    assert sweep.time_left(4, [80.0, 120.0], [90.0, 10.0]) == pytest.approx(250.0)
    assert sweep.time_left(0, [100.0], [90.0, 10.0]) == pytest.approx(90.0)
    assert sweep.time_left(2, [100.0], [150.0]) == pytest.approx(200.0)
    assert sweep.time_left(0, [100.0], []) == 0.0


def test_a_fit_does_not_inherit_the_malloc_setting_dask_gives_its_workers(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in every worker; a fit started from a worker runs without
    it (it made fits 1.2-1.5x slower), keeps the rest of the environment, and keeps a value of the user's own."""
    import dask
    dask_value = dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(dask_value))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = sweep.fit_environment()
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env["OMP_NUM_THREADS"] == "1" and env["PATH"] == os.environ["PATH"]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert sweep.fit_environment()["MALLOC_TRIM_THRESHOLD_"] == "1000000"
