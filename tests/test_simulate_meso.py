"""The compiled free simulation (src/LIFmesoCell.simulate, behind src/neulvm.simulate, model.md
section 5) against the numpy reference (src/fast_np.simulate) and against the microscopic network.

Seeds are fixed, so every test is deterministic; the tolerances are chosen so that another seed
would fail with a negligible probability (reasoning next to each assert).
"""
import numpy as np
import pytest

from src import fast_np, microsim, neulvm
from src.LIFmesoCell import simulate
from src.network import Network, winner_take_all

DT = 0.004          # s, the model's bin
K = 250             # age bins (1 s)
# |t| of the two-sample statistic at which a false failure has probability ~1e-6 (normal: 4.9; with
# ~30 degrees of freedom the t tail is heavier, P(|t_30| > 6) ~ 1e-6)
K_SIGMA = 6.0


def uncoupled(rp, N, rates):
    """Populations of the winner-take-all type with no coupling: each one a renewal process under the
    constant drive rp (potential units), started at the given rates (Hz)."""
    M = len(rp)
    return Network(N=N, amem=[50.0] * M, rp=rp, ft=[3.7] * M, J=[0.0] * M, conmat=np.zeros((M, M)),
                   asyn=[1000 / 3] * M, ref_t=0.004, eps=1.0, init_rates=rates)


def test_same_seed_same_output():
    net = winner_take_all()
    first, again = neulvm.simulate(net, 2.0, seed=3), neulvm.simulate(net, 2.0, seed=3)
    other = neulvm.simulate(net, 2.0, seed=4)
    T = int(round(2.0 / neulvm.DT))
    assert first["Z"].shape == (3, T) and first["spikes"].shape == (3, 3, T) and first["I_ext"].shape == (3, T)
    assert first["seed"] == 3 and first["dt"] == neulvm.DT
    np.testing.assert_allclose(first["A"], first["Z"] / neulvm.DT)
    for key in ("Z", "spikes"):
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert not np.array_equal(first["Z"], other["Z"])
    assert set(np.unique(first["spikes"])) <= {0.0, 1.0} and np.all(first["Z"] >= 0)


def test_large_N_follows_the_reference_trajectory():
    """With N = 1e15 the noise of Z (sd sqrt(Zbar/N) ~ 1e-9) vanishes: both simulators run the same
    deterministic equations (coupled network, external input), whatever their random numbers."""
    net = winner_take_all()
    net = Network(**{**net.to_dict(), "N": [10**15] * 3})
    T = 500
    I_ext = np.random.default_rng(0).normal(0, 20, (1, 3, T))
    A0 = net.init_rates[None]
    Z_xla, _ = simulate(net, DT, K, T, A0, np.random.default_rng(1), I_ext)
    Z_np, _ = fast_np.simulate(net, DT, K, T, A0, np.random.default_rng(2), I_ext, Nobs=1)
    # the noise (1e-9) against rates of 5-25 Hz (Z ~ 0.02-0.1): relative differences ~1e-7
    np.testing.assert_allclose(Z_xla, Z_np, rtol=1e-5, atol=1e-9)


def test_rates_match_the_reference_statistically():
    """Two uncoupled populations (6.7 and 19 Hz), B = 16 independent batches of 5 s in each simulator:
    mean population rates and observed-neuron rates agree within K_SIGMA standard errors."""
    net = uncoupled(rp=[6.0, 8.4], N=[400, 200], rates=[6.7, 19.0])
    B, T, Nobs = 16, 1250, 2
    A0 = np.repeat(net.init_rates[None], B, 0)
    runs = {"xla": simulate(net, DT, K, T, A0, np.random.default_rng(11), Nobs=Nobs),
            "numpy": fast_np.simulate(net, DT, K, T, A0, np.random.default_rng(12), Nobs=Nobs)}
    for what, index in (("population", 0), ("observed", 1)):
        # one number per batch and population: batches are independent, so their mean has standard
        # error std/sqrt(B) (estimated from the batches; the rate's autocorrelation within a batch is
        # included in the batch-to-batch spread)
        per_batch = {name: out[index].reshape(B, net.M, -1).mean(-1) / DT for name, out in runs.items()}
        a, b = per_batch["xla"], per_batch["numpy"]
        diff = a.mean(0) - b.mean(0)
        se = np.sqrt(a.var(0, ddof=1) / B + b.var(0, ddof=1) / B)
        assert np.all(np.abs(diff) < K_SIGMA * se), (what, a.mean(0), b.mean(0), se)


# ---------------------------------------------------------------- against the microscopic network
def micro_rate(net, seconds, seed):
    res = microsim.simulate(net, int(round(seconds / microsim.H)), np.random.default_rng(seed), n_recorded=0)
    return res.pop_spike_counts.sum(1) / (net.N * seconds)


# Renewal rates of one uncoupled population of 1,000 neurons over 40 s, at the loser's and the
# winner's rate of the winner-take-all network. Measured (seeds 1 and 2; meso relative to micro):
#   rp = 6.0:  micro 6.70-6.72 Hz;  meso +2.9..3.5% at dt = 4 ms, +1.3..1.9% at 2 ms, +0.5..1.1% at 1 ms
#   rp = 8.4:  micro 19.0 Hz;       meso +6.9..7.0% at dt = 4 ms, +3.2..3.4% at 2 ms, +1.5..1.7% at 1 ms
#   (and with 400 neurons over 20 s, rp = 10.0: micro 26.2 Hz, +7.3..7.5% at 4 ms, +1.5..1.8% at 1 ms)
# The error is the model's discretisation (forward Euler with dt*amem = 0.2, one refractory bin for
# the 4.2 ms of the microscopic neuron, spikes placed at bin resolution): it halves with dt.
# Statistical noise: N*rate*40 s >= 270,000 spikes per run, relative standard error < 0.2% per
# simulator (a renewal count has variance CV^2 * n with CV < 1), < 0.3% for the difference.
@pytest.mark.slow
@pytest.mark.parametrize("rp, rate0", [
    (6.0, 6.7),
    pytest.param(8.4, 19.0, marks=pytest.mark.xfail(strict=True, reason=(
        "measured +6.9..7.0% at dt = 4 ms for the winner's rate (19 Hz): the 4 ms discretisation of "
        "model.md (forward Euler, one refractory bin) misses the 5% target; +1.5..1.7% at dt = 1 ms"))),
])
def test_single_population_rate_vs_microscopic_at_4ms(rp, rate0):
    net = uncoupled(rp=[rp], N=[1000], rates=[rate0])
    micro = micro_rate(net, 40.0, seed=1)[0]
    meso = neulvm.simulate(net, 40.0, seed=1, dt=0.004, Nobs=0)["A"][0].mean()
    # target 5% (issue 3); at the 6.7 Hz drive the margin (2.1%) is 7 standard errors of the difference
    assert abs(meso / micro - 1) < 0.05, f"micro {micro:.3f} Hz, meso (dt = 4 ms) {meso:.3f} Hz"


@pytest.mark.slow
@pytest.mark.parametrize("rp, rate0", [(6.0, 6.7), (8.4, 19.0)])
def test_single_population_rate_error_shrinks_at_1ms(rp, rate0):
    net = uncoupled(rp=[rp], N=[1000], rates=[rate0])
    micro = micro_rate(net, 40.0, seed=2)[0]
    meso = {dt: neulvm.simulate(net, 40.0, seed=2, dt=dt, Nobs=0)["A"][0].mean() for dt in (0.004, 0.001)}
    err = {dt: meso[dt] / micro - 1 for dt in meso}
    # an O(dt) error of 2.9-7.0% at 4 ms predicts 0.7-1.8% at 1 ms (measured 0.5-1.7%): 2.5% leaves
    # 0.8% (> 2.5 standard errors of the difference) above the largest measurement
    assert abs(err[0.001]) < 0.025, f"micro {micro:.3f} Hz, meso {meso}, relative errors {err}"
    assert abs(err[0.001]) < abs(err[0.004]), err


def dominance_rates(counts, N, h):
    """Rates (Hz) of the winning E population, the losing one and I, averaged over all steps, and the
    number of switches of the winner (src/microsim.dominance)."""
    winner, switches = microsim.dominance(counts, N, h=h)
    A = counts / (np.asarray(N)[:, None] * h)
    win = np.where(winner == 0, A[0], A[1]).mean()
    lose = np.where(winner == 0, A[1], A[0]).mean()
    return np.array([win, lose, A[2].mean()]), len(switches)


@pytest.fixture(scope="module")
def micro_wta():
    net = winner_take_all()
    res = microsim.simulate(net, int(round(200.0 / microsim.H)), np.random.default_rng(1), n_recorded=0)
    return dominance_rates(res.pop_spike_counts, net.N, microsim.H)


def meso_wta(dt):
    net = winner_take_all()
    Z = neulvm.simulate(net, 200.0, seed=1, dt=dt, Nobs=0)["Z"]
    return dominance_rates(Z * net.N[:, None], net.N, dt)


# Measured over 200 s (microscopic: seeds 1-3; mesoscopic: seeds 1-4, and 4 batches of the numpy
# reference, which agree): rates winner / loser / I in Hz, switches of the winner
#   microscopic, 0.2 ms:   18.6-18.8 / 6.0-6.2 / 24.5,  17-24 switches
#   mesoscopic, dt = 4 ms: 21.5-21.6 / 3.6 / 25.3,       0 switches (the first winner keeps winning)
#   mesoscopic, dt = 2 ms: 20.4 / 4.6 / 24.9,            1 switch (seed 1)
#   mesoscopic, dt = 1 ms: 19.1-19.2 / 5.7 / 24.7,       9-17 switches
# Cause (measured with a modified copy of src/fast_np.py, 100 s, README "The 4 ms bins"): model.md's
# forward Euler step of the cohort potentials (dt*amem = 0.2); with the leak integrated exactly the
# 4 ms model gives 17.8 / 7.2 / 24.7 Hz and 0.33 switches per s, and one population's rate within 0.1%.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured at dt = 4 ms over 200 s: no switch (0 in 4 x 200 s of fast_np as well), winner +15% "
    "(21.6 vs 18.8 Hz), loser -41% (3.6 vs 6.0 Hz); the model of model.md at 4 ms is too deep in its "
    "attractors; at dt = 1 ms it switches and its rates are within 7% (next test)"))
def test_winner_take_all_switches_with_microscopic_rates_at_4ms(micro_wta):
    check_wta(micro_wta, meso_wta(0.004))


@pytest.mark.slow
def test_winner_take_all_switches_with_microscopic_rates_at_1ms(micro_wta):
    check_wta(micro_wta, meso_wta(0.001))


def check_wta(micro, meso):
    (rates_micro, switches_micro), (rates_meso, switches_meso) = micro, meso
    assert switches_meso >= 2, (switches_meso, switches_micro)
    # 10% (issue 3) on rates that are averages over 200 s of 400-1000 neurons (statistical error
    # < 1%; the loser's rate also depends on how the dwell times fall, measured spread +-2%)
    np.testing.assert_allclose(rates_meso, rates_micro, rtol=0.10,
                               err_msg="winner / loser / I rates (Hz), meso vs micro")
