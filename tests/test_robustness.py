"""Bad input, killed runs and untrusted files (issue 6): clear errors, nothing lost.

- every bad dataset or option: `python train_meso.py ...` exits with status 2 and one line that names
  the file, field or option, before anything is written (the dataset and result folders are unchanged)
- untrusted files: a pickle that would create a file when loaded is refused, and the file is not made
- non-finite losses in the M-step and the E-step are rejected, the run goes back to its last good state
- the likelihood at the edges of its domain, and property tests of the loader and the likelihood API
- a second run into the same folder is refused; Ctrl-C stops cleanly; a run SIGKILLed at 20 random
  moments leaves only complete files and --resume completes it
"""
import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from src import neulvm
from src.dataset import FORMAT, PARAMS, DatasetError, load_recording
from src.fast_np import SCHEMES
from src.em import NonFiniteError, e_step, m_step
from src.network import Network, winner_take_all
from src.results import (
    LOCK_NAME,
    FolderInUse,
    ResultFileError,
    folder_lock,
    load_arrays,
    load_json,
    remove_temporaries,
    save_arrays,
    save_json,
)
from src.window import Z_MAX, Z_MIN, Window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "dataset", "3pop_noinput_small.npz")
# 1 s of data after 0.2 s of history, as in tests/test_train_meso.py
SHORT = ["--trial_length", "1", "--t_perbatch", "1", "--end_timepoint", "2", "--a_cutoff", "0.2",
         "--Emaxiters", "20", "--Mmaxiters", "30"]
# the smallest run that still has every part: 0.2 s of data after 0.2 s of history, few iterations
TINY = ["--trial_length", "0.2", "--t_perbatch", "0.2", "--end_timepoint", "0.6", "--a_cutoff", "0.2",
        "--Emaxiters", "6", "--Mmaxiters", "6", "--max_EMsteps", "3", "--LOG_PER", "3"]
RECORDED_STEPS = 11_000  # 2.2 s of the shipped recording: enough for SHORT, small enough to rewrite often


# ---------------------------------------------------------------------------------------- helpers
def shipped_fields(n_steps=RECORDED_STEPS):
    """The fields of the shipped dataset, cut to its first n_steps steps of 0.2 ms."""
    with np.load(SHIPPED, allow_pickle=False) as archive:
        fields = {name: archive[name] for name in archive.files}
    for name in ("pop_spike_counts", "I_ext"):
        fields[name] = fields[name][..., :n_steps]
    fields["spikes"] = fields["spikes"][..., :n_steps]
    return fields


def write_npz(path, **fields):
    with open(path, "wb") as f:
        np.savez(f, **fields)
    return str(path)


class CreatesFile:
    """Unpickling this runs open(path, "w"), i.e. creates a file: a stand-in for a malicious payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"theta": np.zeros(12), "payload": CreatesFile(marker)}, f, protocol=pickle.HIGHEST_PROTOCOL)
    return str(path)


def malicious_npz(path, marker, base=None):
    """An .npz archive whose field 'Z' (or, with base, one of base's fields) is an object array."""
    fields = dict(base) if base is not None else {"theta": np.zeros(12)}
    fields["I_ext" if base is not None else "Z"] = np.array([CreatesFile(marker)], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **fields)           # allow_pickle is on when saving: this writes the pickle
    return str(path)


def snapshot(*folders):
    """{path: sha1 of the content} of every file under the folders: to show that nothing changed."""
    state = {}
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    state[path] = hashlib.sha1(f.read()).hexdigest()
            state[dirpath] = "folder"
    return state


def run_cli(args, timeout=180):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_meso.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_folder(save_dir, end="2", index=0):
    return os.path.join(str(save_dir), f"data{end}", f"train{index}")


# ------------------------------------------------------------------ bad datasets and options (CLI)
def dataset_case(change):
    """A function tmp -> dataset path: the shipped fields with `change` applied (None removes a field)."""
    def make(tmp):
        fields = shipped_fields()
        for name, value in change(fields).items():
            if value is None:
                del fields[name]
            else:
                fields[name] = value
        return write_npz(tmp / "rec.npz", **fields)
    return make


def text_file(content):
    def make(tmp):
        path = tmp / "rec.npz"
        path.write_bytes(content)
        return str(path)
    return make


def truncated(tmp):
    path = write_npz(tmp / "rec.npz", **shipped_fields())
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])          # a half-copied file
    return path


def single_npy(tmp):
    np.save(tmp / "rec.npy", np.zeros(3))
    return str(tmp / "rec.npy")


def renamed_pickle(tmp):
    return malicious_pickle(tmp / "rec.npz", tmp / "PWNED")


def npz_with_object_array(tmp):
    return malicious_npz(tmp / "rec.npz", tmp / "PWNED", base=shipped_fields())


def shipped_copy(tmp):
    return write_npz(tmp / "rec.npz", **shipped_fields())


# (id, dataset maker, extra options, substrings the one-line message must contain)
BAD_INPUTS = [
    # the file
    ("missing file", lambda tmp: str(tmp / "absent.npz"), [], ["absent.npz", "no such file"]),
    ("a folder", lambda tmp: str(tmp), [], ["is a folder", "expected a dataset file"]),
    ("truncated file", truncated, [], ["rec.npz", "truncated or corrupted"]),
    ("text file", text_file(b"time,neuron\n0.1,3\n"), [], ["rec.npz", "not a readable .npz archive"]),
    ("single .npy", single_npy, [], ["rec.npy", "single .npy"]),
    ("pickle renamed .npz", renamed_pickle, [], ["rec.npz", "pickle"]),
    ("object array", npz_with_object_array, [], ["rec.npz", "'I_ext'", "pickled"]),
    ("other format", dataset_case(lambda f: {"format": np.str_("spikes-v0")}), [],
     ["rec.npz", "'format'", "neuLVM-recording-1"]),
    # missing keys, shapes, dtypes, values
    ("missing key", dataset_case(lambda f: {"spikes": None}), [], ["rec.npz", "missing field 'spikes'"]),
    ("wrong shape", dataset_case(lambda f: {"spikes": f["spikes"][:2]}), [], ["rec.npz", "'spikes'", "shape"]),
    ("steps disagree", dataset_case(lambda f: {"I_ext": f["I_ext"][:, :-5]}), [], ["rec.npz", "'I_ext'", "shape"]),
    ("float spikes", dataset_case(lambda f: {"spikes": f["spikes"].astype(float)}), [],
     ["rec.npz", "'spikes'", "dtype"]),
    ("float counts", dataset_case(lambda f: {"pop_spike_counts": f["pop_spike_counts"] * 1.0}), [],
     ["rec.npz", "'pop_spike_counts'", "dtype"]),
    ("NaN input", dataset_case(lambda f: {"I_ext": np.where(np.arange(RECORDED_STEPS) == 7, np.nan, f["I_ext"])}),
     [], ["rec.npz", "'I_ext'", "NaN or infinite"]),
    ("infinite parameter", dataset_case(lambda f: {"amem": np.array([50.0, np.inf, 50.0])}), [],
     ["rec.npz", "'amem'", "NaN or infinite"]),
    ("negative activity", dataset_case(lambda f: {"pop_spike_counts": f["pop_spike_counts"] - 3}), [],
     ["rec.npz", "'pop_spike_counts'", "[0, N]"]),
    ("spike entry 2", dataset_case(lambda f: {"spikes": f["spikes"] * np.uint8(2)}), [],
     ["rec.npz", "'spikes'", "only 0 and 1"]),
    ("spike entry -1", dataset_case(lambda f: {"spikes": -f["spikes"].astype(np.int8)}), [],
     ["rec.npz", "'spikes'", "only 0 and 1"]),
    ("negative rate constant", dataset_case(lambda f: {"asyn": -f["asyn"]}), [], ["rec.npz", "'asyn'", "> 0"]),
    # the recording against the options
    ("Nsampled > recorded", shipped_copy, ["--Nsampled", "31"], ["rec.npz", "Nsampled", "30 recorded neurons"]),
    ("window after the end", shipped_copy, ["--end_timepoint", "3"], ["rec.npz", "end_timepoint 3", "0..2.2 s"]),
    ("history before the start", shipped_copy, ["--end_timepoint", "1"], ["rec.npz", "a_cutoff 0.2", "0..2.2 s"]),
    ("dt not a multiple of h", shipped_copy, ["--dt", "0.0041"], ["rec.npz", "dt", "recording step h = 0.0002"]),
    ("window not whole bins", shipped_copy, ["--a_cutoff", "0.201"], ["a_cutoff", "whole multiple of dt"]),
    ("N differs", shipped_copy, ["--N", "400,400,100"], ["--N 400,400,100", "[400, 400, 200]", "rec.npz"]),
    ("M differs", shipped_copy, ["--M", "2", "--N", "400,400"], ["--M is 2", "3 populations", "rec.npz"]),
    # options alone
    ("lb = 0", shipped_copy, ["--lb", "0"], ["--lb and --ub", "0 < lb < ub"]),
    ("lb > ub", shipped_copy, ["--lb", "2", "--ub", "1"], ["0 < lb < ub", "lb=2.0, ub=1.0"]),
    ("dt = 0", shipped_copy, ["--dt", "0"], ["--dt must be > 0"]),
    ("dt NaN", shipped_copy, ["--dt", "nan"], ["--dt must be a finite number"]),
    ("E_LR < 0", shipped_copy, ["--E_LR", "-0.001"], ["--E_LR must be > 0"]),
    ("Emaxiters 0", shipped_copy, ["--Emaxiters", "0"], ["--Emaxiters must be >= 1"]),
    ("max_EMsteps 0", shipped_copy, ["--max_EMsteps", "0"], ["--max_EMsteps must be >= 1"]),
    ("N count vs M", shipped_copy, ["--N", "400,400"], ["--N must have 3 values", "--M 3"]),
    ("prior not numbers", shipped_copy, ["--amem", "50,abc,50"], ["--amem", "comma-separated numbers"]),
    ("unknown method", shipped_copy, ["--method", "BFGS"], ["--method must be one of", "'BFGS'"]),
    ("unknown option", shipped_copy, ["--learning_rate", "1"], ["unrecognized arguments: --learning_rate"]),
    ("not a number", shipped_copy, ["--dt", "4ms"], ["--dt", "invalid float value"]),
    ("batches disagree", shipped_copy, ["--t_perbatch", "0.3"], ["--B (1) must equal trial_length / t_perbatch"]),
    ("negative seed", shipped_copy, ["--train_Noinit", "-1"], ["--train_Noinit must be >= 0"]),
]


@pytest.mark.parametrize("make_dataset, options, expected", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, make_dataset, options, expected):
    data_dir, save_dir = tmp_path / "data", tmp_path / "results"
    data_dir.mkdir()
    save_dir.mkdir()
    dataset = make_dataset(data_dir)
    before = snapshot(data_dir, save_dir)
    args = ["--dataset", dataset, *SHORT, "--SAVE_DIR", str(save_dir) + "/"] + options
    started = time.time()
    out = run_cli(args)
    seconds = time.time() - started
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1 and lines[0].startswith("train_meso.py: error: "), out.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in out.stderr + out.stdout
    assert snapshot(data_dir, save_dir) == before, "a refused run changed the dataset or result folder"
    assert not (data_dir / "PWNED").exists(), "loading the dataset ran code from it"
    print(f"{seconds:.1f} s: {lines[0]}")


def test_debug_shows_the_traceback(tmp_path):
    out = run_cli(["--dataset", str(tmp_path / "absent.npz"), "--debug"])
    assert out.returncode != 0 and "Traceback" in out.stderr and "DatasetError" in out.stderr


# ------------------------------------------------------------ untrusted result files: no code is run
def test_pickle_as_a_result_or_dataset_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    renamed = malicious_pickle(tmp_path / "E0_est_param", marker)
    in_npz = malicious_npz(tmp_path / "minimizor_result_0", marker)
    with pytest.raises(ResultFileError, match="is a Python pickle"):
        load_arrays(renamed)
    with pytest.raises(ResultFileError, match="field 'Z' holds pickled Python objects"):
        load_arrays(in_npz)
    with pytest.raises(DatasetError, match="is a Python pickle"):
        load_recording(renamed)
    with pytest.raises(DatasetError, match="missing field|pickled"):
        load_recording(in_npz)
    assert not marker.exists()
    # a sanity check of the test itself: unpickling does run the payload
    with open(renamed, "rb") as f:
        pickle.load(f)["payload"].close()
    assert marker.exists()


def resumable_folder(tmp_path):
    """A run folder as train_meso.py leaves it after EM step 0 of SHORT on the shipped dataset."""
    folder = run_folder(tmp_path / "results")
    os.makedirs(folder)
    options = {"trial_length": 1.0, "t_perbatch": 1.0, "end_timepoint": 2.0, "a_cutoff": 0.2, "dt": 0.004,
               "scheme": "exact",
               "with_input": 0, "M": 3, "N": "", "Nsampled": 3, "B": 1, "lb": 0.4, "ub": 2.0, "amem": "", "J": "",
               "rp": "", "ft": "", "sampled_spike_history_smoothed_w": 400.0, "train_Noinit": 0,
               "method": "L-BFGS-B", "mstep_grad": "exact"}
    theta = winner_take_all().theta
    summary = {"options": options, "em_steps": [{"em_step": 0, "loss": 1.0}], "e_history": [], "m_points": [],
               "theta_init": theta.tolist(), "finished": False, "dataset": {"seed": 7}}
    save_json(os.path.join(folder, "summary.json"), summary)
    save_arrays(os.path.join(folder, "E0_est_param"), theta=theta, Z=np.full((1, 3, 250), 0.01))
    return folder


@pytest.mark.parametrize("damage, expected", [
    ("pickle", "is a Python pickle"),
    ("object array", "holds pickled Python objects"),
    ("truncated summary", "summary.json: not valid JSON"),
    ("other options", "--resume: --trial_length is 0.5"),
])
def test_resume_refuses_untrusted_or_foreign_files(tmp_path, damage, expected):
    folder = resumable_folder(tmp_path)
    marker = tmp_path / "PWNED"
    options = list(SHORT)
    if damage == "pickle":
        malicious_pickle(os.path.join(folder, "E0_est_param"), marker)
    elif damage == "object array":
        malicious_npz(os.path.join(folder, "E0_est_param"), marker)
    elif damage == "truncated summary":
        text = open(os.path.join(folder, "summary.json")).read()
        open(os.path.join(folder, "summary.json"), "w").write(text[:len(text) // 2])
    else:
        options[options.index("--trial_length") + 1] = "0.5"
        options[options.index("--t_perbatch") + 1] = "0.5"
    before = snapshot(tmp_path)
    out = run_cli(["--dataset", SHIPPED, *options, "--SAVE_DIR", str(tmp_path / "results") + "/", "--resume"])
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and expected in out.stderr, out.stderr
    assert snapshot(tmp_path) == before
    assert not marker.exists()


# ------------------------------------------------------------------------ one writer per run folder
def test_second_run_into_a_locked_folder_is_refused(tmp_path):
    folder = run_folder(tmp_path)
    os.makedirs(folder)
    with folder_lock(folder):                    # as a running train_meso.py holds it
        before = snapshot(tmp_path)
        out = run_cli(["--dataset", SHIPPED, *SHORT, "--SAVE_DIR", str(tmp_path) + "/"])
        assert out.returncode == 2, out.stderr
        assert f"{folder} is in use by another training run (PID {os.getpid()})" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert snapshot(tmp_path) == before
        with pytest.raises(FolderInUse):
            with folder_lock(folder):            # a second holder in this process is refused too
                pass
    assert os.listdir(folder) == []              # released and removed


def test_a_stale_lock_of_a_dead_process_does_not_block(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")
    with folder_lock(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / LOCK_NAME).exists()


# -------------------------------------------------------------- atomic files, never a NaN in a result
def test_no_nan_or_infinity_is_written(tmp_path):
    save_arrays(tmp_path / "E0_est_param", theta=np.ones(12))
    with pytest.raises(ValueError, match="'Z'.*NaN or infinite"):
        save_arrays(tmp_path / "E0_est_param", theta=np.ones(12), Z=np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_json(tmp_path / "summary.json", {"final_loss": float("inf")})
    np.testing.assert_array_equal(load_arrays(tmp_path / "E0_est_param")["theta"], np.ones(12))
    assert sorted(os.listdir(tmp_path)) == ["E0_est_param"]


def test_a_writer_that_dies_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "E0_est_param"
    save_arrays(path, theta=np.ones(12))

    def dies_half_way(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_arrays(path, theta=np.zeros(12))
    np.testing.assert_array_equal(load_arrays(path)["theta"], np.ones(12))
    assert os.listdir(tmp_path) == ["E0_est_param"]
    (tmp_path / ".E1_est_param.x1y2.tmp").write_bytes(b"PK")   # what a SIGKILL during a write leaves
    assert remove_temporaries(str(tmp_path)) == [".E1_est_param.x1y2.tmp"]
    assert os.listdir(tmp_path) == ["E0_est_param"]


# --------------------------------------------------------------------------- non-finite EM steps
class NaNRegion:
    """A stand-in for MesoModel: loss = |theta - 2|^2 + |Z - 0.9|^2, NaN where theta[0] > 1.5 or Z > 0.7,
    so both steps head for the NaN region."""

    def _loss(self, theta, Z):
        theta, Z = np.asarray(theta, float), np.asarray(Z, float)
        if theta[0] > 1.5 or Z.max() > 0.7:
            return np.nan, np.full(theta.shape, np.nan), np.full(Z.shape, np.nan)
        return np.sum((theta - 2) ** 2) + np.sum((Z - 0.9) ** 2), 2 * (theta - 2), 2 * (Z - 0.9)

    def losses(self, theta, Z):
        return self._loss(theta, Z)[0], 0.0

    def value_and_grad(self, wrt, theta, Z):
        loss, g_theta, g_Z = self._loss(theta, Z)
        return loss, 0.0, g_theta if wrt == "theta" else g_Z


def test_mstep_rejects_a_nonfinite_loss_and_keeps_the_best_finite_point():
    model, Z = NaNRegion(), np.full((1, 1, 4), 0.5)
    theta0 = np.ones(4)
    theta, info = m_step(model, theta0, Z, [(0.1, 10.0)] * 4, maxiter=50)
    assert info["nonfinite"] is not None, info
    assert np.all(np.isfinite(theta)) and theta[0] <= 1.5, theta
    assert np.isfinite(info["loss"]) and info["loss"] <= info["loss_start"], info
    with pytest.raises(NonFiniteError):
        m_step(model, np.full(4, 1.6), Z, [(0.1, 10.0)] * 4)


def test_estep_rejects_a_nonfinite_loss_and_returns_the_best_latent():
    model, theta = NaNRegion(), np.ones(4)
    Z, info = e_step(model, theta, np.full((1, 1, 4), 0.5), lr=0.05, maxiters=100)
    assert info["nonfinite"] is not None and info["steps"] == info["nonfinite"], info
    assert np.all(Z <= 0.7) and np.isfinite(info["loss"]), (Z, info)
    assert info["loss"] == pytest.approx(model.losses(theta, Z)[0])
    with pytest.raises(NonFiniteError):
        e_step(model, theta, np.full((1, 1, 4), 0.8))


@pytest.mark.slow
def test_training_survives_injected_nan_steps(tmp_path, monkeypatch):
    """A NaN in the 2nd M-step evaluation and in the 3rd E-step iteration of EM step 0: both rejected and
    logged, the run finishes, and no file holds a NaN."""
    import train_meso
    from src.LIFmesoCell import MesoModel

    original, calls = MesoModel.value_and_grad, {"theta": 0, "Z": 0}

    def sometimes_nan(self, wrt, theta=None, Z=None):
        loss_y, loss_Z, grad = original(self, wrt, theta=theta, Z=Z)
        calls[wrt] += 1
        if (wrt, calls[wrt]) in (("theta", 2), ("Z", 3)):
            return loss_y * np.nan, loss_Z, grad * np.nan
        return loss_y, loss_Z, grad

    monkeypatch.setattr(MesoModel, "value_and_grad", sometimes_nan)
    summary = train_meso.main(["--dataset", SHIPPED, *TINY, "--max_EMsteps", "2",
                               "--SAVE_DIR", str(tmp_path) + "/"])
    folder = run_folder(tmp_path, end="0.6")
    log = open(os.path.join(folder, "train.log")).read()
    assert "M-step 0: a non-finite loss or gradient (evaluation 2) was rejected" in log, log
    assert "E-step 0: a non-finite loss or gradient at iteration 2 was rejected" in log, log
    assert summary["finished"] and summary["em_steps"][0]["E_nonfinite"] == 2
    for step in summary["em_steps"]:
        assert step["M"]["loss"] <= step["M"]["loss_start"] and step["loss"] <= step["M"]["loss"] + 1e-12
    check_run_files(folder)

    # a run killed after its last EM step but before its final save: --resume only finishes it
    path = os.path.join(folder, "summary.json")
    unfinished = dict(load_json(path), finished=False)
    del unfinished["seconds"]
    save_json(path, unfinished)
    again = train_meso.main(["--dataset", SHIPPED, *TINY, "--max_EMsteps", "2",
                             "--SAVE_DIR", str(tmp_path) + "/", "--resume"])
    assert again["finished"] and again["final_loss"] == summary["final_loss"]
    assert again["theta_final"].tolist() == summary["theta_final"].tolist()
    assert len(again["em_steps"]) == len(summary["em_steps"]) and load_json(path)["finished"]


# ------------------------------------------------------------- the likelihood at its domain's edges
@pytest.fixture(scope="module")
def edge_window():
    """Batch 0: 0.2 s of the shipped data with observed neuron 0 of each population silent; batch 1:
    the same window without any spike."""
    w = neulvm.load_window(SHIPPED, trial_length=0.2, t_perbatch=0.2, end_timepoint=0.6, a_cutoff=0.2)
    y = np.concatenate([w.y, np.zeros_like(w.y)])          # (2, M, Nobs, K+T)
    y[0, :, 0] = 0
    assert y[0].sum() > 0 and y[1].sum() == 0
    return Window(net=w.net, dt=w.dt, K=w.K, y=y, I_ext=np.zeros((2, w.M, w.T)))


@pytest.fixture(scope="module")
def edge_model(edge_window):
    from src.LIFmesoCell import MesoModel
    return MesoModel(edge_window, edge_window.net.theta, np.full((2, 3, edge_window.T), 0.01), "exact")


TRUTH = winner_take_all().theta
EDGE_THETA = {"lower bounds": 0.4 * TRUTH, "upper bounds": 2.0 * TRUTH,
              "alternating": np.where(np.arange(12) % 2, 0.4, 2.0) * TRUTH,   # worst case measured: loss ~1e32
              "alternating'": np.where(np.arange(12) % 2, 2.0, 0.4) * TRUTH}
EDGE_Z = {"Z_MIN": Z_MIN, "Z_MAX": Z_MAX, "both": None}


@pytest.mark.parametrize("theta_name", list(EDGE_THETA))
@pytest.mark.parametrize("Z_name", list(EDGE_Z))
def test_finite_loss_and_gradient_at_the_edges(edge_window, edge_model, theta_name, Z_name):
    theta, shape = EDGE_THETA[theta_name], (2, 3, edge_window.T)
    Z = np.full(shape, EDGE_Z[Z_name]) if EDGE_Z[Z_name] else np.where(np.arange(shape[-1]) % 2, Z_MIN, Z_MAX)
    Z = np.broadcast_to(Z, shape).copy()
    reference = neulvm.losses(theta, edge_window, Z, backend="numpy")
    assert np.all(np.isfinite(reference)), reference
    for wrt in ("theta", "Z"):
        loss_y, loss_Z, grad = (np.asarray(v) for v in edge_model.value_and_grad(wrt, theta=theta, Z=Z))
        assert np.isfinite(loss_y) and np.isfinite(loss_Z) and np.all(np.isfinite(grad)), (wrt, loss_y, loss_Z)
        np.testing.assert_allclose([loss_y, loss_Z], reference, rtol=1e-9, err_msg=f"{theta_name}, {Z_name}")


# ------------------------------------------------------------------------------- property tests
def valid_fields(M, N, n_steps, rng):
    """The fields of a small consistent recording of M populations of N neurons, all of them recorded."""
    spikes = (rng.random((M, N, n_steps)) < 0.2).astype(np.uint8)
    params = dict(N=np.full(M, N), amem=np.full(M, 50.0), rp=np.full(M, 14.4), ft=np.full(M, 3.7),
                  J=np.full(M, 10.0), asyn=np.full(M, 300.0), init_rates=np.full(M, 5.0))
    return dict(format=np.str_(FORMAT), version=np.str_("test"), seed=np.int64(1), h=np.float64(2e-4),
                pop_spike_counts=spikes.sum(1).astype(np.int32), spikes=spikes, I_ext=np.zeros((M, n_steps)),
                input_kind=np.str_("none"), conmat=np.eye(M), ref_t=np.float64(0.004), eps=np.float64(1.0),
                delay_steps=np.int64(1), **params)


FIELDS = ("format", "version", "seed", "h", "pop_spike_counts", "spikes", "I_ext", "input_kind", "conmat",
          "ref_t", "eps", "delay_steps", *PARAMS)
ANY_ARRAY = hnp.arrays(
    dtype=st.sampled_from([np.bool_, np.int8, np.uint8, np.int32, np.int64, np.uint64, np.float32, np.float64,
                           np.complex128, np.dtype("<U4"), np.dtype("M8[s]")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))


def small_array_like(value):
    """Same shape and dtype as value, any values (NaN, infinities and extremes included)."""
    if value.dtype.kind in "U":
        return st.just(np.str_("x"))
    return hnp.arrays(dtype=value.dtype, shape=value.shape)


@st.composite
def mutated_recordings(draw):
    """A valid small recording with up to three fields removed or replaced by random arrays."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    fields = valid_fields(draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6)), rng)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        how = draw(st.sampled_from(["remove", "same shape", "anything"]))
        if how == "remove":
            del fields[name]
        elif how == "same shape":
            fields[name] = draw(small_array_like(np.asarray(fields[name])))
        else:
            fields[name] = draw(ANY_ARRAY)
    return fields


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=mutated_recordings())
def test_loader_raises_dataset_error_or_returns_a_consistent_recording(tmp_path, fields):
    path = write_npz(tmp_path / "rec.npz", **fields)
    try:
        rec = load_recording(path)
    except DatasetError as error:
        message = str(error)
        assert message.startswith(path + ": ") and "\n" not in message, message
        event("refused")
        return
    event("loaded")
    M, steps = rec.pop_spike_counts.shape
    assert rec.spikes.shape[0] == M and rec.spikes.shape[2] == steps and rec.I_ext.shape == (M, steps)
    assert np.all(np.isfinite(rec.I_ext)) and np.all(np.isfinite(rec.network.theta)) and rec.h > 0
    assert set(np.unique(rec.spikes)) <= {0, 1}
    assert np.all((rec.pop_spike_counts >= 0) & (rec.pop_spike_counts <= rec.network.N[:, None]))
    assert np.all(np.isfinite(rec.activity))


@st.composite
def likelihood_inputs(draw):
    """A window of random shape and content (mostly valid, sometimes not), theta in the M-step's box and
    Z in the latent's box (sometimes of the wrong shape)."""
    M, B, Nobs = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    K, T = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dt = draw(st.floats(1e-4, 8e-3))        # forward Euler needs dt * amem < 1: amem <= 2 x 50 in the box
    spike_values = draw(st.sampled_from([(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0, 2.0), (0.0, np.nan)]))
    y = draw(hnp.arrays(np.float64, (B, M, Nobs, K + T), elements=st.sampled_from(spike_values)))
    # |I_ext| up to 1e4 potential units / s (40x the largest synaptic drive of the example network):
    # stronger inhibition underflows log P (test_strong_inhibition_keeps_log_p_finite)
    big = draw(st.sampled_from([1e2, 1e3, 1e4]))
    I_ext = draw(hnp.arrays(np.float64, (B, M, T), elements=st.floats(-big, big) | st.sampled_from([0.0, 5.0])))
    if draw(st.integers(0, 9)) == 0:
        I_ext[..., 0] = np.nan
    net = winner_take_all() if M == 3 else Network(
        N=draw(st.lists(st.integers(1, 500), min_size=M, max_size=M)), amem=[50.0] * M, rp=[14.4] * M,
        ft=[3.7] * M, J=[10.0] * M, conmat=np.where(np.eye(M) > 0, 1.0, -1.0), asyn=[300.0] * M,
        init_rates=[5.0] * M)
    theta = net.theta * np.asarray(draw(st.lists(st.floats(0.4, 2.0), min_size=4 * M, max_size=4 * M)))
    Z = draw(hnp.arrays(np.float64, (B, M, T), elements=st.floats(Z_MIN, Z_MAX)))
    if draw(st.integers(0, 9)) == 0:
        Z = Z[..., :-1]
    return dict(net=net, dt=dt, K=K, y=y, I_ext=I_ext), theta, Z


@settings(max_examples=80, deadline=None, derandomize=True)
@given(inputs=likelihood_inputs())
def test_likelihood_raises_value_error_or_returns_finite_numbers(inputs):
    window_fields, theta, Z = inputs
    try:
        window = Window(**window_fields)
        loss_y, loss_Z = neulvm.losses(theta, window, Z, backend="numpy")
    except ValueError as error:
        assert "\n" not in str(error) and str(error)
        event("refused")
        return
    event("finite losses")
    assert np.isfinite(loss_y) and np.isfinite(loss_Z), (loss_y, loss_Z)


def test_strong_inhibition_keeps_log_p_finite():
    """Found by the property test above: an observed spike after 5 bins of an input of -1e5 units / s
    (V - ft < -745, where exp underflows). Both backends, and the TensorFlow gradient."""
    net = winner_take_all()
    y = np.zeros((1, 3, 1, 6))
    y[0, 0, 0, -1] = 1
    window = Window(net=net, dt=0.004, K=1, y=y, I_ext=np.full((1, 3, 5), -1e5))
    Z = np.full((1, 3, 5), Z_MAX)
    loss_y, loss_Z = neulvm.losses(net.theta, window, Z, backend="numpy")
    assert np.isfinite(loss_y) and np.isfinite(loss_Z), (loss_y, loss_Z)
    assert loss_y * 15 > 745, loss_y     # log P of the spike is below -745, where the naive formula gave -inf
    np.testing.assert_allclose(neulvm.losses(net.theta, window, Z), (loss_y, loss_Z), rtol=1e-12)
    from src.LIFmesoCell import MesoModel
    for wrt in ("theta", "Z"):
        *_, grad = MesoModel(window, net.theta, Z, "exact").value_and_grad(wrt)
        assert np.all(np.isfinite(grad.numpy())), wrt


# -------------------------------------------------------------------------- Ctrl-C and SIGKILL
def check_run_files(folder):
    """Every file of a run folder loads, and no number in it is NaN. Returns (complete EM steps, names
    of the temporary files a killed writer left)."""
    from matplotlib.image import imread

    temporaries = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if re.fullmatch(r"\..*\.tmp.*", name):
            temporaries.append(name)
        elif name == "summary.json":
            json.dumps(load_json(path), allow_nan=False)       # valid, and no NaN in it
        elif name.endswith(".png"):
            assert imread(path).size > 0, name
        elif name == "train.log":
            open(path, encoding="ascii").read()
        elif name == LOCK_NAME:
            assert re.fullmatch(r"\d*\n?", open(path).read()), name
        else:
            assert re.fullmatch(r"init_param|minimizor_result_\d+|E\d+_est_param", name), name
            for key, value in load_arrays(path).items():
                if key == "scheme":
                    assert str(value) in SCHEMES, (name, value)
                else:
                    assert np.all(np.isfinite(value)), (name, key)
    steps = []
    if os.path.exists(os.path.join(folder, "summary.json")):
        steps = [s["em_step"] for s in load_json(os.path.join(folder, "summary.json"))["em_steps"]]
        assert steps == list(range(len(steps))), steps
        for e in steps:
            for name in (f"E{e}_est_param", f"minimizor_result_{e}"):
                assert os.path.exists(os.path.join(folder, name)), f"{name} of a complete EM step is missing"
    return steps, temporaries


def start_run(save_dir, index, resume):
    args = [sys.executable, os.path.join(ROOT, "train_meso.py"), "--dataset", SHIPPED, *TINY,
            "--train_Noinit", str(index), "--SAVE_DIR", str(save_dir) + "/"] + (["--resume"] if resume else [])
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def wait_for_log(process, log, size_before, text="start (PID", timeout=120):
    """Wait until the run appends `text` to its log (or ends)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(log) and text in open(log).read()[size_before:]:
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    folder = run_folder(tmp_path, end="0.6")
    run = start_run(tmp_path, 0, resume=False)
    wait_for_log(run, os.path.join(folder, "train.log"), 0, text="bins of")   # M-step 0 begins
    time.sleep(0.5)
    assert run.poll() is None, "the run ended before it could be interrupted"
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130, run.stderr.read()
    stderr = run.stderr.read().strip()
    assert len(stderr.splitlines()) == 1 and "interrupted during" in stderr and "--resume" in stderr, stderr
    last = open(os.path.join(folder, "train.log")).read().strip().splitlines()[-1]
    assert re.search(r"interrupted during (E-step|M-step|the saving of EM step) \d", last), last
    assert "continue with: python train_meso.py" in last and last.endswith("--resume"), last
    steps, temporaries = check_run_files(folder)
    assert temporaries == [] and not os.path.exists(os.path.join(folder, LOCK_NAME))


def phase_of(log):
    """What a run was doing when it was killed, from the last line it logged."""
    lines = log.strip().splitlines()
    last = lines[-1] if lines else ""
    if re.search(r"M-step \d+:", last):
        return "in an E-step"
    if re.search(r"E-step \d+:", last):
        return "saving an EM step or in the next M-step"
    if "bins of" in last:
        return "compiling or in an M-step"
    return "in the start-up (imports, initial files)"


KILLS = 10          # about 12 s each; they cover the three phases of KILL_AFTER
# A kill comes a random time after a random one of these lines of the run's log: "start" covers the
# imports and the initial files, "bins of" the compilation and an M-step, "M-step" an E-step, the
# saving of its results and the next M-step (each EM step of TINY takes about a second)
KILL_AFTER = {"start (PID": 6.0, "bins of": 4.0, "M-step": 3.0}   # log text: the delay's range in s


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_resume_completes(tmp_path):
    """Kill a tiny run with SIGKILL at KILLS random moments (KILL_AFTER; each restart is a --resume, a run
    that finishes before its kill is checked and replaced by a new one). After every kill each file in the
    folder loads and the files of complete EM steps are all still there; a last --resume completes."""
    rng = np.random.default_rng(2022)
    index, resume, kills, resumed, completed, lost = 0, False, 0, 0, 0, 0
    complete_before, phases = set(), []
    started = time.time()
    while kills < KILLS:
        folder = run_folder(tmp_path, end="0.6", index=index)
        log = os.path.join(folder, "train.log")
        size = os.path.getsize(log) if os.path.exists(log) else 0
        run = start_run(tmp_path, index, resume)
        resumed += resume
        anchor = rng.choice(list(KILL_AFTER))
        delay = rng.uniform(0, KILL_AFTER[anchor])
        wait_for_log(run, log, size, text=anchor)
        time.sleep(delay)
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
            run.wait()
            kills += 1
            phases.append(phase_of(open(log).read()[size:]))
            resume = True
        else:
            assert run.returncode == 0, run.stderr.read()
            assert load_json(os.path.join(folder, "summary.json"))["finished"]
            completed += 1
            index, resume, complete_before = index + 1, False, set()
        steps, _ = check_run_files(folder)
        present = {f"E{e}_est_param" for e in steps} | {f"minimizor_result_{e}" for e in steps}
        lost += len(complete_before - present)
        complete_before = present if resume else set()
    if resume:                                          # the last killed run, to the end
        run = start_run(tmp_path, index, resume=True)
        resumed += 1
        assert run.wait(timeout=300) == 0, run.stderr.read()
        completed += 1
    for i in range(index + 1):
        folder = run_folder(tmp_path, end="0.6", index=i)
        steps, temporaries = check_run_files(folder)
        summary = load_json(os.path.join(folder, "summary.json"))
        assert summary["finished"] and steps and temporaries == [], (i, steps, temporaries)
        assert not os.path.exists(os.path.join(folder, LOCK_NAME))
        final = load_arrays(os.path.join(folder, f"E{steps[-1]}_est_param"))
        np.testing.assert_array_equal(final["theta"], summary["theta_final"])
        assert summary["final_loss"] == pytest.approx(final["loss_y"] + final["loss_Z"], rel=1e-12)
    print(f"\nSIGKILL: {kills} kills ({', '.join(f'{n} {p}' for p, n in Counter(phases).most_common())}); "
          f"{resumed} resumes; {completed} runs completed; {lost} files of complete EM steps lost; "
          f"{time.time() - started:.0f} s")
    assert lost == 0
