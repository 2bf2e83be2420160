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


@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_large_N_follows_the_reference_trajectory(scheme):
    """With N = 1e15 the noise of Z (sd sqrt(Zbar/N) ~ 1e-9) vanishes: both simulators run the same
    deterministic equations (coupled network, external input), whatever their random numbers."""
    net = winner_take_all()
    net = Network(**{**net.to_dict(), "N": [10**15] * 3})
    T = 500
    I_ext = np.random.default_rng(0).normal(0, 20, (1, 3, T))
    A0 = net.init_rates[None]
    Z_xla, _ = simulate(net, DT, K, T, A0, np.random.default_rng(1), I_ext, scheme=scheme)
    Z_np, _ = fast_np.simulate(net, DT, K, T, A0, np.random.default_rng(2), I_ext, Nobs=1, scheme=scheme)
    # the noise (1e-9) against rates of 5-25 Hz (Z ~ 0.02-0.1): relative differences ~1e-7
    np.testing.assert_allclose(Z_xla, Z_np, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dt", [0.004, 0.002])
@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_same_random_numbers_same_trajectory(scheme, dt):
    """Without observed neurons both simulators draw exactly the same normals from the generator (one
    (B, M) draw per bin, in order), so the noisy trajectories of the coupled network agree bin for bin,
    to rounding (the runs are 2 s, too short for rounding to grow through the dynamics)."""
    net = winner_take_all()
    T, K_dt = int(round(2.0 / dt)), int(round(1.0 / dt))
    A0 = np.repeat(net.init_rates[None], 2, 0)
    I_ext = np.random.default_rng(0).normal(0, 20, (2, 3, T))
    Z_xla, _ = simulate(net, dt, K_dt, T, A0, np.random.default_rng(5), I_ext, scheme=scheme)
    Z_np, _ = fast_np.simulate(net, dt, K_dt, T, A0, np.random.default_rng(5), I_ext, scheme=scheme)
    assert np.std(Z_np) > 1e-3                     # the noise is there (N = 200-400)
    np.testing.assert_allclose(Z_xla, Z_np, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_rates_match_the_reference_statistically(scheme):
    """Two uncoupled populations (6.7 and 19 Hz), B = 16 independent batches of 5 s in each simulator:
    mean population rates and observed-neuron rates agree within K_SIGMA standard errors."""
    net = uncoupled(rp=[6.0, 8.4], N=[400, 200], rates=[6.7, 19.0])
    B, T, Nobs = 16, 1250, 2
    A0 = np.repeat(net.init_rates[None], B, 0)
    runs = {"xla": simulate(net, DT, K, T, A0, np.random.default_rng(11), Nobs=Nobs, scheme=scheme),
            "numpy": fast_np.simulate(net, DT, K, T, A0, np.random.default_rng(12), Nobs=Nobs, scheme=scheme)}
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
    res = microsim.simulate(net, int(round(seconds / microsim.MICRO_DT)), np.random.default_rng(seed), n_recorded=0)
    return res.pop_spike_counts.sum(1) / (net.N * seconds)


# Renewal rates of one uncoupled population of 1,000 neurons over 40 s, at the loser's and the
# winner's rate of the winner-take-all network. Measured (seeds 1 and 2; meso relative to micro):
#   rp = 6.0 (micro 6.70-6.72 Hz):  exact -0.2..+0.4% at 4, 2 and 1 ms;  euler +2.9..3.5% at 4 ms,
#                                   +1.3..1.9% at 2 ms, +0.5..1.1% at 1 ms
#   rp = 8.4 (micro 19.0 Hz):       exact -0.1..+0.1% at 4, 2 and 1 ms;  euler +6.9..7.0% at 4 ms,
#                                   +3.2..3.4% at 2 ms, +1.5..1.7% at 1 ms
# Forward Euler's error (dt*amem = 0.2 at 4 ms) halves with dt; the exact leak step has none left that
# these runs resolve. Statistical noise: N*rate*40 s >= 270,000 spikes per run, relative standard error
# < 0.2% per simulator (a renewal count has variance CV^2 * n with CV < 1), < 0.3% for the difference.
@pytest.mark.slow
@pytest.mark.parametrize("rp, rate0", [(6.0, 6.7), (8.4, 19.0)])
def test_single_population_rate_vs_microscopic(rp, rate0):
    net = uncoupled(rp=[rp], N=[1000], rates=[rate0])
    micro = micro_rate(net, 40.0, seed=1)[0]
    err = {(scheme, dt): neulvm.simulate(net, 40.0, seed=1, dt=dt, Nobs=0, scheme=scheme)["A"][0].mean() / micro - 1
           for scheme in fast_np.SCHEMES for dt in (0.004, 0.002, 0.001)}
    # the exact scheme at every bin within 2% (issue 11): 7 standard errors of the difference
    assert all(abs(err["exact", dt]) < 0.02 for dt in (0.004, 0.002, 0.001)), err
    # forward Euler converges to the microscopic rate as the bin shrinks: an O(dt) error of 2.9-7.0%
    # at 4 ms predicts 0.7-1.8% at 1 ms; 2.5% leaves > 2.5 standard errors above the largest measured
    assert err["euler", 0.004] > err["euler", 0.002] > err["euler", 0.001] > -0.01, err
    assert abs(err["euler", 0.001]) < 0.025, err


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
    res = microsim.simulate(net, int(round(200.0 / microsim.MICRO_DT)), np.random.default_rng(1), n_recorded=0)
    return dominance_rates(res.pop_spike_counts, net.N, microsim.MICRO_DT)


# Measured, true parameters, winner / loser / I rates (Hz) while dominant, switches of the winner:
#   microscopic, 0.2 ms, seed 1:    200 s: 18.75 / 6.05 / 24.49, 18 switches;  1,000 s: 18.73 / 6.08 / 24.49, 98
#   exact scheme, 1,000 s, seeds 1, 2:   4 ms: 17.82-17.90 / 7.14-7.23 / 24.65, 253-301 switches
#                                        2 ms: 18.31-18.33 / 6.61-6.64 / 24.58, 184-199 switches
#   euler scheme, 4 ms: 21.6 / 3.6 / 25.3, no switch in 1,000 s (the default before issue 11)
# The exact 4 ms model switches 2.5-3 times as often as the network and its loser fires 18-19% too
# fast (README "The bins"); the targets of issue 11 are 10% (winner, I) and 20% (loser). Two runs of
# 1,000 s are pooled: the loser's rate then varies by about +-0.6% from seed to seed, and the margin
# to 20% is about 1.3%.
@pytest.mark.slow
def test_winner_take_all_switches_with_microscopic_rates_at_4ms(micro_wta):
    net = winner_take_all()
    runs = [dominance_rates(neulvm.simulate(net, 1000.0, seed=seed, dt=DT, Nobs=0, scheme="exact")["Z"]
                            * net.N[:, None], net.N, DT) for seed in (1, 2)]
    rates, switches = np.mean([r for r, _ in runs], axis=0), [n for _, n in runs]
    (rates_micro, switches_micro) = micro_wta
    assert min(switches) >= 2, (switches, switches_micro)
    relative = rates / rates_micro - 1
    assert abs(relative[0]) < 0.10 and abs(relative[2]) < 0.10 and abs(relative[1]) < 0.20, (
        f"winner / loser / I: meso {rates.round(2)} vs micro {rates_micro.round(2)} Hz ({relative.round(3)})")
