"""Tests of src/dataset.py: round trip, refusal of broken files, and the shipped dataset."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from src import __version__
from src.dataset import FORMAT, DatasetError, Recording, load_recording, save_recording
from src.microsim import H, dominance
from src.network import winner_take_all

SHIPPED = Path(__file__).resolve().parents[1] / "dataset" / "3pop_noinput_small.npz"


def small_recording(n_steps=500, seed=0):
    """A synthetic but consistent recording: recorded spikes are a subset of the population counts."""
    rng = np.random.default_rng(seed)
    net = winner_take_all()
    spikes = (rng.random((3, 30, n_steps)) < 0.01).astype(np.uint8)
    counts = spikes.sum(axis=1).astype(np.int32) + rng.poisson(1.0, (3, n_steps)).astype(np.int32)
    return Recording(network=net, h=H, pop_spike_counts=counts, spikes=spikes, I_ext=rng.normal(size=(3, n_steps)),
                     seed=seed, version=__version__, input_kind="given", delay_steps=1)


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def fields_of(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_round_trip(tmp_path):
    rec = small_recording()
    path = tmp_path / "rec.npz"
    save_recording(path, rec)
    back = load_recording(path)
    for name in ("pop_spike_counts", "spikes", "I_ext"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rec, name), err_msg=name)
    assert back.spikes.dtype == np.uint8 and back.pop_spike_counts.dtype == np.int32
    assert (back.h, back.seed, back.version, back.input_kind, back.delay_steps) == (H, 0, __version__, "given", 1)
    for name, value in rec.network.to_dict().items():
        np.testing.assert_array_equal(getattr(back.network, name), value, err_msg=name)
    np.testing.assert_allclose(back.activity, rec.pop_spike_counts / (rec.network.N[:, None] * H))
    assert back.duration == pytest.approx(500 * H)
    assert fields_of(path)["format"] == FORMAT


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "rec.npz"
    save_recording(path, small_recording(seed=1))
    save_recording(path, small_recording(seed=2))  # replaces the old file
    assert load_recording(path).seed == 2
    assert os.listdir(tmp_path) == ["rec.npz"]


def corrupt(path, **changes):
    """Rewrite the archive at path with some fields replaced (None = removed)."""
    arrays = fields_of(path)
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    write_npz(path, **arrays)


@pytest.mark.parametrize("change, field", [
    (dict(spikes=None), "spikes"),
    (dict(format=np.str_("other-format")), "format"),
    (dict(spikes=np.zeros((3, 30, 500))), "spikes"),  # float, not uint8
    (dict(spikes=np.full((3, 30, 500), 2, np.uint8)), "spikes"),
    (dict(spikes=np.zeros((3, 5, 500), np.uint8)), "spikes"),  # too few recorded neurons
    (dict(spikes=np.zeros((3, 30, 499), np.uint8)), "spikes"),
    (dict(pop_spike_counts=np.full((3, 500), -1, np.int32)), "pop_spike_counts"),
    (dict(pop_spike_counts=np.zeros((2, 500), np.int32)), "pop_spike_counts"),
    (dict(pop_spike_counts=np.zeros((3, 500), np.int32)), "spikes"),  # more recorded spikes than counted
    (dict(I_ext=np.full((3, 500), np.nan)), "I_ext"),
    (dict(amem=np.array([50.0, np.nan, 50.0])), "amem"),
    (dict(N=np.array([400.0, 400.0, 200.0])), "N"),
    (dict(h=np.float64(-1.0)), "h"),
    (dict(seed=np.array([1, 2])), "seed"),
    (dict(version=np.array([1.0])), "version"),
    (dict(I_ext=np.array([object()], dtype=object)), "I_ext"),  # a pickle: never loaded
    (dict(spikes=np.full((3, 30, 500), -1, np.int8)), "spikes"),
    (dict(amem=np.array([50.0, 0.0, 50.0])), "amem"),
    (dict(asyn=np.array([-1.0, 300.0, 300.0])), "asyn"),
    (dict(init_rates=np.array([-5.0, 5.0, 5.0])), "init_rates"),
    (dict(ref_t=np.float64(-0.004)), "ref_t"),
])
def test_broken_fields_are_refused(tmp_path, change, field):
    path = tmp_path / "rec.npz"
    save_recording(path, small_recording())
    corrupt(path, **change)
    with pytest.raises(DatasetError, match=field) as error:
        load_recording(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("dtype", [bool, np.int64, np.uint8])
def test_spikes_of_any_integer_dtype_holding_0_and_1_are_accepted(tmp_path, dtype):
    path = tmp_path / "rec.npz"
    save_recording(path, small_recording())
    spikes = fields_of(path)["spikes"]
    corrupt(path, spikes=spikes.astype(dtype))
    back = load_recording(path)
    assert back.spikes.dtype == np.uint8
    np.testing.assert_array_equal(back.spikes, spikes)


def test_object_field_message_says_pickle(tmp_path):
    path = tmp_path / "rec.npz"
    save_recording(path, small_recording())
    corrupt(path, I_ext=np.array([object()], dtype=object))
    with pytest.raises(DatasetError, match="field 'I_ext' holds pickled Python objects"):
        load_recording(path)


def test_a_folder_or_a_pickle_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="is a folder"):
        load_recording(tmp_path)
    path = tmp_path / "rec.npz"
    path.write_bytes(pickle.dumps({"spikes": [1, 0]}, protocol=2))
    with pytest.raises(DatasetError, match="is a Python pickle"):
        load_recording(path)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_recording(tmp_path / "absent.npz")


def test_not_an_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("this is not an archive\n")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_recording(path)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(DatasetError, match="single .npy"):
        load_recording(tmp_path / "array.npy")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "rec.npz"
    save_recording(path, small_recording(n_steps=5000))
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(DatasetError, match=str(path)):
        load_recording(path)


def test_flipped_bytes(tmp_path):
    """Corruption inside a compressed member is caught by the CRC / inflate checks."""
    path = tmp_path / "rec.npz"
    save_recording(path, small_recording(n_steps=5000))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=str(path)):
        load_recording(path)


def test_shipped_dataset():
    """dataset/3pop_noinput_small.npz: 11 s of the paper's network, no input, one switch after 1 s."""
    rec = load_recording(SHIPPED)
    net = winner_take_all()
    for name, value in net.to_dict().items():
        np.testing.assert_array_equal(getattr(rec.network, name), value, err_msg=name)
    assert rec.duration == pytest.approx(11.0) and rec.h == H and rec.input_kind == "none"
    assert rec.spikes.shape == (3, 30, 55_000) and not rec.I_ext.any()
    _, switches = dominance(rec.pop_spike_counts, rec.network.N, rec.h)
    assert np.any(switches > 1.0), f"switches at {switches} s"
    assert SHIPPED.stat().st_size < 2_000_000
