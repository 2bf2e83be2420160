"""Tests of src/window.py: the ages of the observed neurons, the initial rate and the refractory bins
against direct computations, and the checks of every field."""
from fractions import Fraction

import numpy as np
import pytest

from src.network import Network, winner_take_all
from src.window import Window, refractory_bins


def spiky_window(seed=0, B=2, Nobs=4, K=7, T=12, p=0.15):
    """Random spikes, with the cases that matter forced in: a neuron silent throughout, one silent in
    the history that fires in the window, one that fires in the last history bin, one that fires in
    the first window bin."""
    rng = np.random.default_rng(seed)
    net = winner_take_all()
    y = (rng.random((B, net.M, Nobs, K + T)) < p).astype(float)
    y[0, 0, 0] = 0                      # never fires
    y[0, 1, 0, :] = 0                   # silent history, then fires once, in the middle of the window
    y[0, 1, 0, K + T // 2] = 1
    y[0, 2, 0, :] = 0
    y[0, 2, 0, K - 1] = 1               # fires in the last bin of the history only
    y[1, 0, 1, :] = 0
    y[1, 0, 1, K] = 1                   # fires in the first bin of the window only
    return Window(net=net, dt=0.004, K=K, y=y, I_ext=np.zeros((B, net.M, T)))


def ages_by_loop(y, K):
    """For each neuron and window bin t: t - 1 - (the bin of its last spike before t), all in history
    coordinates (the window's bin 0 is bin K); a neuron without a spike before t is taken to have
    fired at bin -1, K + 1 bins before the window."""
    B, M, Nobs, L = y.shape
    ages = np.empty((B, M, Nobs, L - K), dtype=int)
    for b in range(B):
        for m in range(M):
            for n in range(Nobs):
                for t in range(K, L):
                    before = [s for s in range(t) if y[b, m, n, s] == 1]
                    last = before[-1] if before else -1
                    ages[b, m, n, t - K] = t - 1 - last
    return ages


@pytest.mark.parametrize("seed, K, T", [(0, 7, 12), (1, 1, 5), (2, 20, 3)])
def test_obs_age_equals_a_loop_over_neurons(seed, K, T):
    window = spiky_window(seed=seed, K=K, T=T)
    ages = window.obs_age
    assert ages.shape == (window.B, 3, window.Nobs, T) and ages.dtype == np.int64
    np.testing.assert_array_equal(ages, ages_by_loop(window.y, K))


def test_obs_age_of_the_forced_cases():
    K, T = 7, 12
    ages = spiky_window(K=K, T=T).obs_age
    np.testing.assert_array_equal(ages[0, 0, 0], K + np.arange(T))               # silent: K, K+1, ...
    np.testing.assert_array_equal(ages[0, 1, 0, :7], K + np.arange(7))           # silent until bin 6
    np.testing.assert_array_equal(ages[0, 1, 0, 7:], np.arange(T - 7))           # then 0, 1, ... after it
    np.testing.assert_array_equal(ages[0, 2, 0], np.arange(T))                   # last history bin: age 0 at 0
    np.testing.assert_array_equal(ages[1, 0, 1, 1:], np.arange(T - 1))           # fired in window bin 0
    assert ages[1, 0, 1, 0] == K                                                 # not yet at bin 0 itself


def test_A0_is_the_mean_history_rate_of_the_observed_neurons():
    window = spiky_window(seed=3, K=9, T=4)
    expected = np.empty((window.B, window.M))
    for b in range(window.B):
        for m in range(window.M):
            spikes = sum(window.y[b, m, n, k] for n in range(window.Nobs) for k in range(window.K))
            expected[b, m] = spikes / (window.Nobs * window.K * window.dt)       # Hz
    np.testing.assert_allclose(window.A0, expected, rtol=1e-14)
    # spikes in the window do not count
    y = window.y.copy()
    y[..., window.K:] = 1 - y[..., window.K:]
    np.testing.assert_array_equal(Window(net=window.net, dt=window.dt, K=window.K, y=y, I_ext=window.I_ext).A0,
                                  window.A0)


@pytest.mark.parametrize("ref_t, dt", [("0.004", "0.004"), ("0.004", "0.002"), ("0.004", "0.001"), ("0.003", "0.001"),
                                       ("0.0041", "0.002"), ("0", "0.004"), ("0.002", "0.004"), ("0.0036", "0.0012"),
                                       ("0.0012", "0.0004"), ("0.01", "0.004")])
def test_refractory_bins_count_the_ages_below_ref_t(ref_t, dt):
    """n_ref = the number of ages k with k * dt < ref_t, counted in exact decimal arithmetic (0.0036 /
    0.0012 is 3.0000000000000004 in floating point, where a plain ceil gives 4)."""
    expected = sum(1 for k in range(100) if k * Fraction(dt) < Fraction(ref_t))
    assert refractory_bins(float(ref_t), float(dt)) == expected
    net = Network(**{**winner_take_all().to_dict(), "ref_t": float(ref_t)})
    window = Window(net=net, dt=float(dt), K=5, y=np.zeros((1, 3, 1, 8)), I_ext=np.zeros((1, 3, 3)))
    assert window.n_ref == expected


def test_sizes_and_conversions():
    window = Window(net=winner_take_all(), dt=np.float32(0.5), K=np.int64(3), y=np.ones((2, 3, 5, 10), bool),
                    I_ext=np.zeros((2, 3, 7), np.int32), Z_true=np.full((2, 3, 7), 0.5, np.float32))
    assert (window.B, window.M, window.Nobs, window.T, window.K) == (2, 3, 5, 7, 3)
    assert type(window.dt) is float and type(window.K) is int
    assert window.y.dtype == window.I_ext.dtype == window.Z_true.dtype == np.float64


GOOD = dict(net=winner_take_all(), dt=0.004, K=3, y=np.zeros((1, 3, 2, 8)), I_ext=np.zeros((1, 3, 5)))
BAD_FIELDS = [
    ("dt", 0.0), ("dt", -0.004), ("dt", float("nan")), ("dt", float("inf")), ("dt", "0.004"), ("dt", None),
    ("K", 0), ("K", 2.0), ("K", True), ("K", "3"),
    ("y", np.zeros((3, 2, 8))),                  # no batch axis
    ("y", np.zeros((1, 2, 2, 8))),               # M = 2, the network has 3
    ("y", np.zeros((1, 3, 2, 3))),               # no window bin after the K = 3 of history
    ("y", np.zeros((1, 3, 0, 8))),               # no observed neuron
    ("y", np.full((1, 3, 2, 8), 2.0)),
    ("y", np.full((1, 3, 2, 8), np.nan)),
    ("y", np.full((1, 3, 2, 8), "1")),
    ("y", np.zeros((1, 3, 2, 8), complex)),
    ("I_ext", np.zeros((1, 3, 4))),
    ("I_ext", np.full((1, 3, 5), np.inf)),
    ("I_ext", np.full((1, 3, 5), "x")),
    ("Z_true", np.zeros((1, 3, 4))),
    ("Z_true", np.array([None] * 15).reshape(1, 3, 5)),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v in BAD_FIELDS])
def test_a_bad_field_raises_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"^{field} ") as error:
        Window(**{**GOOD, field: value})
    assert "\n" not in str(error.value)


def test_net_must_be_a_network():
    with pytest.raises(TypeError, match="^net must be a src.network.Network, got dict"):
        Window(**{**GOOD, "net": winner_take_all().to_dict()})
    Window(**GOOD)          # and the good fields are good
