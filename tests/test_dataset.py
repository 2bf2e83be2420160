"""Tests of src/dataset.py: round trip, refusal of broken files, and the shipped dataset."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from src import __version__
from src.dataset import FORMAT, PARAMS, DatasetError, Recording, load_recording, save_recording
from src.microsim import MICRO_DT, dominance
from src.network import winner_take_all
from tests.conftest import malicious_npz, malicious_pickle

SHIPPED = Path(__file__).resolve().parents[1] / "dataset" / "3pop_noinput_small.npz"


def small_recording(n_steps=500, seed=0):
    """A synthetic but consistent recording: recorded spikes are a subset of the population counts."""
    rng = np.random.default_rng(seed)
    net = winner_take_all()
    spikes = (rng.random((3, 30, n_steps)) < 0.01).astype(np.uint8)
    counts = spikes.sum(axis=1).astype(np.int32) + rng.poisson(1.0, (3, n_steps)).astype(np.int32)
    return Recording(network=net, h=MICRO_DT, pop_spike_counts=counts, spikes=spikes, I_ext=rng.normal(size=(3, n_steps)),
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
    assert (back.h, back.seed, back.version, back.input_kind, back.delay_steps) == (MICRO_DT, 0, __version__, "given", 1)
    for name, value in rec.network.to_dict().items():
        np.testing.assert_array_equal(getattr(back.network, name), value, err_msg=name)
    np.testing.assert_allclose(back.activity, rec.pop_spike_counts / (rec.network.N[:, None] * MICRO_DT))
    assert back.duration == pytest.approx(500 * MICRO_DT)
    assert fields_of(path)["format"] == FORMAT


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "rec.npz"
    save_recording(path, small_recording(seed=1))
    save_recording(path, small_recording(seed=2))  # replaces the old file
    assert load_recording(path).seed == 2
    assert os.listdir(tmp_path) == ["rec.npz"]


def test_the_folder_of_a_new_recording_is_made(tmp_path):
    # python -m src.microsim --out result/sweeps/data/wta200s.npz on a fresh clone: result/ does not exist
    path = tmp_path / "new" / "data" / "rec.npz"
    save_recording(path, small_recording(seed=3))
    assert load_recording(path).seed == 3


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
    (dict(pop_spike_counts=None), "pop_spike_counts"),  # part of the ground truth: all of it or none
    (dict(J=None, amem=None), "amem"),
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


def test_a_pickle_dataset_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    renamed = malicious_pickle(tmp_path / "rec.npz", marker)
    in_npz = malicious_npz(tmp_path / "other.npz", marker)
    with pytest.raises(DatasetError, match="is a Python pickle"):
        load_recording(renamed)
    with pytest.raises(DatasetError, match="missing field|pickled"):
        load_recording(in_npz)
    save_recording(tmp_path / "good.npz", small_recording())
    corrupt(tmp_path / "good.npz", I_ext=None)
    with_payload = malicious_npz(tmp_path / "with_payload.npz", marker, base=fields_of(tmp_path / "good.npz"))
    with pytest.raises(DatasetError, match="field 'I_ext' holds pickled Python objects"):
        load_recording(with_payload)
    assert not marker.exists()
    # a sanity check of the test itself: unpickling does run the payload
    with open(renamed, "rb") as f:
        pickle.load(f)["payload"].close()
    assert marker.exists()


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
    assert rec.duration == pytest.approx(11.0) and rec.h == MICRO_DT and rec.input_kind == "none"
    assert rec.spikes.shape == (3, 30, 55_000) and not rec.I_ext.any()
    _, switches = dominance(rec.pop_spike_counts, rec.network.N, rec.h)
    assert np.any(switches > 1.0), f"switches at {switches} s"
    assert SHIPPED.stat().st_size < 2_000_000


# --------------------------------------------------------------- property test of the loader
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
    path = str(tmp_path / "rec.npz")
    write_npz(path, **fields)
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
