"""Tests of src/results.py: atomic writes, no NaN and no pickle in a result, the run folder's lock,
and RunSummary, the schema of summary.json."""
import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from src.network import Network, winner_take_all
from src.results import (
    LEGACY_SCHEME,
    LOCK_NAME,
    SUMMARY_FORMAT,
    FolderInUse,
    ResultFileError,
    RunSummary,
    folder_lock,
    load_arrays,
    load_json,
    remove_temporaries,
    save_arrays,
    save_json,
    save_text,
)
from tests.conftest import malicious_npz, malicious_pickle


# ------------------------------------------------------------------ untrusted files: no code is run
def test_pickle_as_a_result_file_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    renamed = malicious_pickle(tmp_path / "E0_est_param", marker)
    in_npz = malicious_npz(tmp_path / "minimizor_result_0", marker)
    with pytest.raises(ResultFileError, match="is a Python pickle"):
        load_arrays(renamed)
    with pytest.raises(ResultFileError, match="field 'Z' holds pickled Python objects"):
        load_arrays(in_npz)
    assert not marker.exists()
    # a sanity check of the test itself: unpickling does run the payload
    with open(renamed, "rb") as f:
        pickle.load(f)["payload"].close()
    assert marker.exists()


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read"),
    (b"", "not a readable .npz archive"),
    (b"time,neuron\n0.1,3\n", "not a readable .npz archive"),
    (b"PK\x03\x04 half an archive", "truncated or corrupted"),
])
def test_unreadable_result_archive_names_the_file(tmp_path, content, expected):
    path = tmp_path / "E0_est_param"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ResultFileError, match=expected) as error:
        load_arrays(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value), error.value


def test_arrays_round_trip_with_numbers_and_strings(tmp_path):
    Z = np.random.default_rng(0).uniform(0, 1, (1, 3, 5))
    save_arrays(tmp_path / "E0_est_param", theta=np.arange(12.0), Z=Z, loss_y=-1.25, scheme="exact", nit=7)
    back = load_arrays(tmp_path / "E0_est_param")
    assert sorted(back) == ["Z", "loss_y", "nit", "scheme", "theta"]
    np.testing.assert_array_equal(back["theta"], np.arange(12.0))
    np.testing.assert_array_equal(back["Z"], Z)
    assert (back["loss_y"], back["scheme"], back["nit"]) == (-1.25, "exact", 7)
    with pytest.raises(TypeError, match="only arrays, numbers and strings"):
        save_arrays(tmp_path / "other", x=np.array([object()], dtype=object))
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------------ one writer per run folder
def test_folder_lock_refuses_a_second_holder_and_removes_its_file(tmp_path):
    folder = str(tmp_path)
    with folder_lock(folder):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderInUse, match=f"in use by another training run \\(PID {os.getpid()}\\)"):
            with folder_lock(folder):
                pass
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"    # the refused holder changed nothing
    assert os.listdir(tmp_path) == []
    with folder_lock(folder):                    # free again
        pass


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


def test_save_text_is_atomic(tmp_path, monkeypatch):
    """UTF-8 text, replaced whole; a writer that dies after writing (here: in fsync) keeps the old file
    and leaves no temporary."""
    path = tmp_path / "report.md"
    save_text(path, "# old\n")
    save_text(path, "# Report\n\nτ_m = 20 ms, µ = 1\n")
    assert path.read_bytes() == "# Report\n\nτ_m = 20 ms, µ = 1\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["report.md"]
    written = []

    def dies(fd):
        written.append(os.fstat(fd).st_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", dies)
    with pytest.raises(KeyboardInterrupt):
        save_text(path, "# new, never complete\n")
    monkeypatch.undo()
    assert written == [len("# new, never complete\n")], written       # it died with the new text written
    assert path.read_bytes() == "# Report\n\nτ_m = 20 ms, µ = 1\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["report.md"]


def test_json_round_trip_and_unreadable_json(tmp_path):
    save_json(tmp_path / "a.json", {"theta": np.arange(3.0), "n": np.int64(4), "name": "x"})
    assert load_json(tmp_path / "a.json") == {"theta": [0.0, 1.0, 2.0], "n": 4, "name": "x"}
    (tmp_path / "b.json").write_text('{"theta": [1, 2')
    with pytest.raises(ResultFileError, match=re.escape(f"{tmp_path / 'b.json'}: not valid JSON")):
        load_json(tmp_path / "b.json")
    with pytest.raises(ResultFileError, match=re.escape(f"{tmp_path / 'c.json'}: cannot read")):
        load_json(tmp_path / "c.json")


# ------------------------------------------------------------------------------------ RunSummary
def a_summary(**changes):
    """A RunSummary as train_meso.py writes it after two EM steps (JSON-native values, so that a round
    trip can be compared with ==)."""
    net = winner_take_all()
    names = [f"{g}_{a + 1}" for g in ("amem", "J", "rp", "ft") for a in range(3)]
    theta_init = (net.theta * np.linspace(0.5, 1.5, 12)).tolist()
    theta_final = (net.theta * np.linspace(0.9, 1.1, 12)).tolist()
    fields = dict(
        options={"dataset": "dataset/3pop_noinput_small.npz", "trial_length": 1.0, "dt": 0.004, "a_cutoff": 0.2,
                 "scheme": "exact", "N": "", "resume": False, "max_EMsteps": 2},
        run_folder="result/x/data2/train0", seed=0,
        dataset={"path": "dataset/3pop_noinput_small.npz", "seed": 7, "version": "0.1.0"},
        network={k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in net.to_dict().items()},
        theta_names=names, theta_true=net.theta.tolist(), prior_centre=net.theta.tolist(), theta_init=theta_init,
        versions={"neulvm": "0.1.0", "numpy": np.__version__, "tensorflow": "not installed"},
        em_steps=[{"em_step": e, "M": {"loss": 2.0 - e, "loss_start": 3.0 - e, "nit": 5, "message": "ok",
                                       "nonfinite": None},
                   "theta": theta_final, "loss_y": 1.5 - e, "loss_Z": 0.25, "loss": 1.75 - e, "E_steps": 4,
                   "E_seconds": 0.5, "E_nonfinite": None} for e in (0, 1)],
        e_history=[[0, 1.9, 0.3], [0, 1.8, 0.25], [1, 0.8, 0.25]], m_points=[[0, 2.0, 0.3], [2, 0.9, 0.25]],
        finished=True, theta_final=theta_final, final_loss=0.75, last_em_step=1, seconds=12.5)
    fields.update(changes)
    return RunSummary(**fields)


def test_summary_round_trip_field_by_field(tmp_path):
    path = tmp_path / "summary.json"
    original = a_summary()
    original.save(path)
    back = RunSummary.load(path)
    for f in dataclasses.fields(RunSummary):
        if f.name != "path":
            assert getattr(back, f.name) == getattr(original, f.name), f.name
    assert back.path == str(path) and back.format == SUMMARY_FORMAT == load_json(path)["format"]
    # numpy values (as train_meso.py holds them) are written as the same numbers
    as_arrays = a_summary(theta_final=np.asarray(original.theta_final), final_loss=np.float64(0.75))
    as_arrays.save(tmp_path / "arrays.json")
    assert RunSummary.load(tmp_path / "arrays.json") == original


def test_summary_of_an_unfinished_run_omits_its_unset_fields(tmp_path):
    path = tmp_path / "summary.json"
    a_summary(em_steps=[], e_history=[], m_points=[], finished=False, theta_final=None, final_loss=None,
              last_em_step=None, seconds=None).save(path)
    on_disk = load_json(path)
    assert not {"theta_final", "final_loss", "last_em_step", "seconds"} & set(on_disk), sorted(on_disk)
    back = RunSummary.load(path)
    assert (back.theta_final, back.final_loss, back.em_steps, back.finished) == (None, None, [], False)
    with pytest.raises(ResultFileError, match=re.escape(f"{path}: the run has no complete EM step yet")):
        back.fitted_network()


def test_summary_of_the_previous_format_is_read(tmp_path):
    """A summary.json written before the "format" key (format 1) reads as the same summary; saved again,
    it is of the current format."""
    path = tmp_path / "summary.json"
    a_summary().save(path)
    data = load_json(path)
    del data["format"]
    save_json(path, data)
    back = RunSummary.load(path)
    assert back == a_summary() and back.format == SUMMARY_FORMAT
    back.save(tmp_path / "again.json")
    assert load_json(tmp_path / "again.json") == dict(data, format=SUMMARY_FORMAT)


def without(key):
    def change(data):
        del data[key]
    return change


def setting(key, value):
    def change(data):
        data[key] = value
    return change


@pytest.mark.parametrize("change, expected", [
    (without("theta_names"), "not the summary of a train_meso.py run (missing theta_names)"),
    (without("options"), "not the summary of a train_meso.py run (missing options)"),
    (lambda data: data.clear(), "missing options, run_folder, seed, dataset"),
    (setting("format", 3), "summary format 3; this version of neuLVM reads formats 1 and 2"),
    (setting("format", "2"), "summary format '2'"),
    (lambda data: data["theta_init"].pop(), "theta_init must be 12 finite numbers"),
    (lambda data: data["theta_final"].append(1.0), "theta_final must be 12 finite numbers"),
    (lambda data: data.update(theta_names=data["theta_names"][:4]), "theta_true must be 4 finite numbers"),
    (lambda data: data["theta_final"].__setitem__(3, float("nan")), "theta_final must be 12 finite numbers"),
    (lambda data: data["theta_true"].__setitem__(0, float("inf")), "theta_true must be 12 finite numbers"),
    (lambda data: data["theta_init"].__setitem__(0, "1.0"), "theta_init must be 12 finite numbers"),
    (setting("final_loss", "low"), "final_loss must be a number, got 'low'"),
])
def test_a_json_that_is_not_a_summary_is_refused_naming_the_file(tmp_path, change, expected):
    path = tmp_path / "summary.json"
    a_summary().save(path)
    data = load_json(path)
    change(data)
    path.write_text(json.dumps(data))            # json.dumps writes NaN and Infinity, save_json would refuse
    with pytest.raises(ResultFileError, match=re.escape(expected)) as error:
        RunSummary.load(path)
    assert str(error.value).startswith(f"{path}: "), error.value


@pytest.mark.parametrize("content", ['[1, 2, 3]', '"summary"', "null"])
def test_a_json_that_is_not_an_object_is_refused(tmp_path, content):
    path = tmp_path / "summary.json"
    path.write_text(content)
    with pytest.raises(ResultFileError, match=re.escape(f"{path}: not the summary of a train_meso.py run")):
        RunSummary.load(path)


def test_summary_without_a_scheme_reads_as_euler_and_says_so_once(tmp_path, capsys):
    path = tmp_path / "summary.json"
    summary = a_summary()
    del summary.options["scheme"]
    summary.save(path)
    capsys.readouterr()
    back = RunSummary.load(path)
    assert back.scheme == LEGACY_SCHEME == "euler"
    assert back.scheme == "euler" and RunSummary.load(path).scheme == "euler"   # asked three times
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} was written before the integrator was recorded" in err, err
    assert "read as scheme 'euler'" in err, err
    # a summary that has its scheme says nothing
    a_summary(options=dict(a_summary().options, scheme="euler")).save(tmp_path / "euler.json")
    assert RunSummary.load(tmp_path / "euler.json").scheme == "euler" and capsys.readouterr().err == ""


def test_summary_with_an_unknown_scheme_is_refused(tmp_path):
    path = tmp_path / "summary.json"
    a_summary(options=dict(a_summary().options, scheme="rk4")).save(path)
    with pytest.raises(ResultFileError, match=re.escape(f"{path}: options.scheme: ") + ".*'rk4'"):
        RunSummary.load(path).scheme


def test_the_fitted_model_is_rebuilt_from_the_summary_alone(tmp_path):
    path = tmp_path / "summary.json"
    a_summary(options=dict(a_summary().options, dt=0.002, a_cutoff=0.5)).save(path)
    back = RunSummary.load(path)
    assert (back.dt, back.a_cutoff, back.scheme) == (0.002, 0.5, "exact")
    fitted, true = back.fitted_network(), back.true_network()
    assert isinstance(fitted, Network) and isinstance(true, Network)
    np.testing.assert_array_equal(fitted.theta, a_summary().theta_final)
    np.testing.assert_array_equal(true.theta, winner_take_all().theta)
    assert not np.array_equal(fitted.theta, true.theta)
    for name, value in winner_take_all().to_dict().items():     # the fixed parameters are the stored ones
        if name not in ("amem", "J", "rp", "ft"):
            np.testing.assert_array_equal(getattr(fitted, name), value, err_msg=name)
    broken = a_summary(network={"N": [1, 2]})
    broken.path = "summary.json"
    with pytest.raises(ResultFileError, match="summary.json: field 'network' is not a network"):
        broken.fitted_network()
