"""Our simulators against the field's: NEST (gif_psc_exp, gif_pop_psc_exp) and Brian2 (src/peers.py, issue 7).

The NEST tests skip unless `pip install -r requirements-peers.txt` has installed NEST; the Brian2
tests skip unless Brian2 imports next to this numpy (Brian2 2.9, the last release for Python 3.11,
fails with numpy >= 2.4; README says how to run them in a separate environment). The mapping tests
need neither.

Sampled comparisons use standard errors from batch means (the run cut into batches much longer
than the correlation time of the population activity, SE = std of the batch values / sqrt(number
of batches)); next to each assert is the false-failure probability of the tolerance.
"""
import os

import numpy as np
import pytest

from src import neulvm, peers
from src.microsim import MICRO_DT, simulate
from src.network import Network, winner_take_all

DT = 0.004  # s, the mesoscopic bin of neuLVM (model.md)
BURN_IN = 1.0  # s discarded at the start of every run (NEST cannot start from our stationary state)


@pytest.fixture(scope="module")
def nest():
    os.environ.setdefault("PYNEST_QUIET", "1")
    return pytest.importorskip("nest", reason="NEST is not installed (pip install -r requirements-peers.txt)")


@pytest.fixture(scope="module")
def brian2():
    try:
        import brian2
    except Exception as error:  # noqa: BLE001 (Brian2 2.9 raises AttributeError on import with numpy >= 2.4)
        pytest.skip(f"Brian2 does not import here ({type(error).__name__}: {error}); Brian2 2.9 needs numpy < 2.4 "
                    f"and 2.10+ needs Python >= 3.12: run these tests in the environment of README")
    return brian2


def _run(simulator, network, duration, seed, I_ext=None, step=None):
    """Spike counts per population and step (M, n) and the step (s) of one simulator.

    ours_meso(_euler) gives Z * N per bin of `step` (default DT); the others run at `step` (default MICRO_DT)."""
    if simulator == "ours_micro":
        return simulate(network, int(round(duration / MICRO_DT)), np.random.default_rng(seed), I_ext=I_ext,
                        n_recorded=0).pop_spike_counts, MICRO_DT
    if simulator.startswith("ours_meso"):  # ours_meso: the default scheme (exact), ours_meso_euler: euler
        step, scheme = step or DT, "euler" if simulator == "ours_meso_euler" else "exact"
        Z = neulvm.simulate(network, duration, seed, I_ext=I_ext, dt=step, scheme=scheme)["Z"]
        return Z * network.N[:, None], step
    if simulator == "brian2":
        return peers.brian2_micro(network, duration, seed, I_ext, target="cython").pop_spike_counts, MICRO_DT
    step = step or MICRO_DT
    return peers.run(simulator, network, duration, seed, I_ext, h=step).pop_spike_counts, step


def _needs(simulator, request):
    if simulator.startswith("nest"):
        request.getfixturevalue("nest")
    if simulator == "brian2":
        request.getfixturevalue("brian2")


def _batch_means(values, step, batch):
    """Mean of each whole batch of `batch` seconds along the last axis."""
    per = int(round(batch / step))
    n = values.shape[-1] // per
    return values[..., :n * per].reshape(values.shape[:-1] + (n, per)).mean(-1)


# ---------------------------------------------------------------- the mapping (no simulator needed)

def test_nest_weights_give_each_spike_the_area_W_over_N():
    """A spike's current w decays with tau_syn: its area on V is w tau_syn / C_m = W[b, a] / N_b."""
    net = winner_take_all()
    w = peers.nest_weights(net)
    area = w * (1000.0 / net.asyn)[:, None] / peers.C_M
    np.testing.assert_allclose(area * net.N[:, None], net.W, rtol=1e-14, err_msg=f"w = {w}")


def test_synaptic_taus_of_the_winner_take_all_network():
    tau_ex, tau_in = peers.synaptic_taus(winner_take_all())
    np.testing.assert_allclose(tau_ex, [3.0, 3.0, 3.0], rtol=1e-14)
    np.testing.assert_allclose(tau_in, [6.0, 6.0, 6.0], rtol=1e-14)


def test_synaptic_taus_reject_two_excitatory_time_constants():
    net = Network(N=[10, 10], amem=[50, 50], rp=[1, 1], ft=[3, 3], J=[1, 1], conmat=[[1, 1], [1, 1]],
                  asyn=[300.0, 100.0])
    with pytest.raises(ValueError, match="one excitatory synaptic time constant"):
        peers.synaptic_taus(net)


def test_nest_coupling_factor_is_the_exact_first_step_effect():
    """Oracle: the continuous model's V after one step of an exponential current started by a spike,
    int_0^h exp(-amem (h - s)) asyn exp(-asyn s) ds (per unit W / N, by quadrature), over our step's
    1 - exp(-h asyn)."""
    from scipy.integrate import quad
    net = winner_take_all()
    amem = net.amem[0]
    exact = np.array([quad(lambda s, a=a: np.exp(-amem * (MICRO_DT - s)) * a * np.exp(-a * s), 0, MICRO_DT, epsabs=0,
                           epsrel=1e-13)[0] for a in net.asyn])
    np.testing.assert_allclose(peers.nest_coupling_factor(net), exact / -np.expm1(-MICRO_DT * net.asyn), rtol=1e-11)


def test_current_schedule_stamps_changes_one_step_early():
    """NEST applies a current from the step after its stamp; the first step's value goes into I_e."""
    I = np.zeros(100)
    I[:10] = 5.0
    I[40:60] = 200.0
    I_e, times, values = peers.current_schedule(I, eps=2.0)
    assert I_e == pytest.approx(peers.C_M * 2.0 * 5.0 / 1000.0)
    np.testing.assert_allclose(times, np.array([9, 39, 59]) * MICRO_DT * 1000.0, rtol=1e-12)
    np.testing.assert_allclose(values, peers.C_M * 2.0 / 1000.0 * np.array([-5.0, 195.0, -5.0]), rtol=1e-12)


# ---------------------------------------------------------------- exact limits

def _single(ft, rp=1.0, N=50):
    return Network(N=[N], amem=[50.0], rp=[rp], ft=[ft], J=[0.0], conmat=[[1.0]], asyn=[1000 / 3],
                   init_rates=[10.0])


@pytest.mark.parametrize("simulator", ["ours_micro", "nest_micro", "nest_meso", "brian2"])
def test_exact_limits(simulator, request):
    """Threshold very high: no spike. Very low: every neuron fires in the first step after its
    refractory period, so each fires every ref_t / h + 1 = 21 steps (4.2 ms) and the population
    count is periodic with period 21 once every neuron has fired (21 steps; the mesoscopic model's
    start is its own, so 100 steps are left out)."""
    _needs(simulator, request)
    silent, _ = _run(simulator, _single(ft=1000.0), 0.1, seed=3)
    assert silent.sum() == 0, f"{simulator}: {silent.sum()} spikes with ft = 1000"
    counts, _ = _run(simulator, _single(ft=-50.0), 0.2, seed=3)
    c = counts[0, 100:]
    np.testing.assert_array_equal(c[21:], c[:-21], err_msg=f"{simulator}: count not periodic with 21 steps")
    assert c[:21].sum() == 50, f"{simulator}: {c[:21].sum()} spikes in 21 steps, expected one per neuron (50)"


@pytest.mark.parametrize("simulator", ["ours_micro", "nest_micro", "nest_meso", "brian2"])
def test_input_onset_is_exact(simulator, request):
    """A silent population (hazard exp(-20) per s) gets an input of 1e6 /s from step 100 on: V jumps by
    h * 1e6 = 200 in that step, so every neuron fires exactly in step 100 and every 21 steps after
    (before step 100 the chance of any spike is 50 * 100 * h * exp(-20) = 2e-9)."""
    _needs(simulator, request)
    net = Network(N=[50], amem=[50.0], rp=[0.0], ft=[20.0], J=[0.0], conmat=[[1.0]], asyn=[1000 / 3],
                  init_rates=[0.0])
    I_ext = np.zeros((1, 300))
    I_ext[0, 100:] = 1e6
    counts, _ = _run(simulator, net, 300 * MICRO_DT, seed=5, I_ext=I_ext)
    expected = np.zeros(300, dtype=int)
    expected[100::21] = 50
    np.testing.assert_array_equal(counts[0], expected, err_msg=f"{simulator}: spikes at {np.flatnonzero(counts[0])}")


# ---------------------------------------------------------------- one population, constant drive

RENEWAL_RP = 8.0  # constant drive through the resting potential (no input current: the same for every scheme)


def _mean_isi_steps(P, ref_steps, P_tail):
    """Mean inter-spike interval in steps of a renewal process held for ref_steps steps after its
    spike step, then firing in free step j = 1..L with probability P[j-1], and later with P_tail."""
    S = np.concatenate([[1.0], np.cumprod(1 - P)])  # survival after j = 0..L free steps
    return ref_steps + S.sum() + S[-1] * (1 - P_tail) / P_tail


def renewal_rate(scheme, amem, rp, ft, ref_t, h):
    """Stationary rate (Hz) of one uncoupled neuron with potential rp(1 - e^(-amem s)) since its reset,
    in each simulator's discretisation (the schemes differ by O(h)):
    micro      our simulator, NEST gif_psc_exp, Brian2: exact leak, escape 1 - exp(-lambda h) from the
               potential at the end of the step;
    nest_meso  gif_pop_psc_exp: escape 1 - exp(-h (lambda_old + lambda_new) / 2), linearised below 0.01,
               lambda_old = 0 in the first free step; after len_kernel = 5 tau_m / h steps a neuron joins
               the free pool at the converged potential rp;
    ours_meso_exact, ours_meso_euler  model.md section 3 at bin h, one refractory bin (ref_t = h), from
               V = 0 with the exact leak step (V = rp (1 - e^(-k h amem)) after k free bins) or forward
               Euler (V = rp (1 - (1 - h amem)^k))."""
    ref_steps = int(round(ref_t / h))  # micro, nest_meso: held ref_t / h steps after the spike step
    lam_inf = np.exp(rp - ft)
    if scheme == "micro":
        j = np.arange(1, int(200 / (amem * h)) + 1)  # 200 membrane time constants: converged
        P = -np.expm1(-np.exp(rp * -np.expm1(-j * h * amem) - ft) * h)
        return 1 / (h * _mean_isi_steps(P, ref_steps, -np.expm1(-lam_inf * h)))
    if scheme == "nest_meso":
        len_kernel = int(round(5 / (amem * h)))
        j = np.arange(len_kernel - ref_steps + 1)
        lam = np.exp(rp * -np.expm1(-j * h * amem) - ft)
        lam[0] = 0.0
        x = 0.5 * (lam[1:] + lam[:-1]) * h
        P = np.where(x > 0.01, -np.expm1(-x), x)
        return 1 / (h * _mean_isi_steps(P, ref_steps, -np.expm1(-lam_inf * h)))
    if scheme in ("ours_meso_exact", "ours_meso_euler"):
        refractory_bins = int(np.ceil(ref_t / h - 1e-9))  # cohorts k < this are held (src/fast_np.py)
        k = np.arange(1, int(200 / (amem * h)) + 1)  # free bins since the first free one
        decay = np.exp(-k * h * amem) if scheme == "ours_meso_exact" else (1 - h * amem) ** k
        P = -np.expm1(-np.exp(rp * (1 - decay) - ft) * h)
        return 1 / (h * _mean_isi_steps(P, refractory_bins, -np.expm1(-lam_inf * h)))
    raise ValueError(f"unknown scheme {scheme!r}")


def test_renewal_rate_of_the_micro_scheme_against_a_direct_sum():
    """The closed form above against a direct sum over the ISI distribution, P(ISI = 20 + j) = S_{j-1} P_j."""
    h, amem, rp, ft = MICRO_DT, 50.0, RENEWAL_RP, 3.7
    j = np.arange(1, 100_001)
    P = -np.expm1(-np.exp(rp * -np.expm1(-j * h * amem) - ft) * h)
    S = np.concatenate([[1.0], np.cumprod(1 - P)[:-1]])
    mean_isi = ((20 + j) * S * P).sum() * h
    assert renewal_rate("micro", amem, rp, ft, 0.004, h) == pytest.approx(1 / mean_isi, rel=1e-12)


@pytest.mark.parametrize("drive", ["rp", "input"])
@pytest.mark.parametrize("simulator, scheme, step", [
    ("ours_micro", "micro", MICRO_DT), ("nest_micro", "micro", MICRO_DT), ("brian2", "micro", MICRO_DT),
    ("nest_meso", "nest_meso", MICRO_DT), ("ours_meso", "ours_meso_exact", DT), ("ours_meso_euler", "ours_meso_euler", DT)])
def test_uncoupled_population_fires_at_the_renewal_rate(simulator, scheme, step, drive, request):
    """400 independent neurons with constant drive, 20 s: the mean rate agrees with renewal theory
    of the simulator's own discretisation within 3 standard errors.

    drive "rp": resting potential 8; "input": resting potential 0 and a constant input of 8 amem /s,
    which the schemes integrate differently: NEST exactly (V tends to 8), our micro step and Brian2
    (with its gain) as h * input per step (V tends to 8 h amem / (1 - exp(-h amem)) = 8.040), and
    our mesoscopic model, in both schemes, to 8.

    SE from 38 batches of 0.5 s (ISIs last 59 ms, so batches are nearly independent); the 3-SE
    tolerance with an estimated SE is a t test with 37 degrees of freedom: a correct simulator fails
    with probability 0.5%. The schemes' own rates differ by up to 6.6% (ours_meso_euler at 4 ms:
    18.14 Hz, ours_meso (exact) at 4 ms: 17.00 Hz, against 17.02 Hz at 0.2 ms)."""
    _needs(simulator, request)
    amem, duration = 50.0, 20.0
    V_limit = RENEWAL_RP
    if drive == "input" and simulator in ("ours_micro", "brian2"):
        V_limit = RENEWAL_RP * MICRO_DT * amem / -np.expm1(-MICRO_DT * amem)
    theory = renewal_rate(scheme, amem, V_limit, 3.7, 0.004, step)
    rp = RENEWAL_RP if drive == "rp" else 0.0
    net = Network(N=[400], amem=[amem], rp=[rp], ft=[3.7], J=[0.0], conmat=[[1.0]], asyn=[1000 / 3],
                  init_rates=[theory])
    I_ext = None
    if drive == "input":
        I_ext = np.full((1, int(round(duration / step))), RENEWAL_RP * amem)  # potential units per s
    counts, step = _run(simulator, net, duration, seed=1, I_ext=I_ext)
    rates = _batch_means(counts[0, int(round(BURN_IN / step)):] / (400 * step), step, 0.5)  # (38,) Hz
    rate, se = rates.mean(), rates.std(ddof=1) / np.sqrt(len(rates))
    print(f"{simulator}, drive {drive}: {rate:.4f} Hz, theory {theory:.4f} Hz, {(rate - theory) / se:+.2f} SE")  # pytest -s
    assert abs(rate - theory) <= 3 * se, (f"{simulator}, drive {drive}: {rate:.4f} Hz, renewal theory {theory:.4f} Hz, "
                                          f"difference {(rate - theory) / se:.2f} SE (SE {se:.4f} Hz)")


# ---------------------------------------------------------------- the winner-take-all network

RATE_TARGET = 0.03  # issue 7: rates while dominant agree within 3%


@pytest.mark.slow
@pytest.mark.parametrize("ours, peer, step", [
    ("ours_micro", "nest_micro", MICRO_DT), ("ours_micro", "brian2", MICRO_DT), ("ours_meso", "nest_meso", 5e-4)])
def test_rates_while_dominant_agree(ours, peer, step, request):
    """20 s of the winner-take-all network: rates of the winner, the loser and I (Hz, after 1 s).

    Tolerance: the issue's 3% plus 3 standard errors of the difference, SE from 19 batches of 1 s in
    each run. A pair whose true rates differ by at most 3% fails with probability <= 0.4% per rate
    (one-sided t, 18 degrees of freedom); the noise is what 20 s allows: 0.7% (winner), 2-4% (loser),
    0.05% (I) of the rate per run, so the loser is checked loosely here and tightly by bench/peers.py.
    The mesoscopic pair runs at 0.5 ms (ours: dt = 0.5 ms, a_cutoff 1 s): at neuLVM's 4 ms bins our
    mesoscopic model is a different discretisation (exact scheme: winner 17.9, loser 7.2 Hz; euler: 21.7
    and 3.5 Hz; against 18.2-18.5 and 6.5-6.7 Hz for NEST at 0.2 ms), and NEST's own scheme moves as
    much between 0.2 and 1 ms.
    """
    _needs(peer, request)
    net = winner_take_all()
    runs = {}
    for name in (ours, peer):
        counts, h = _run(name, net, 20.0, seed=2, step=step)
        activity, _ = peers.dominant_activity(counts, net.N, h, skip=BURN_IN)  # (3, n) winner, loser, I
        batches = _batch_means(activity, h, 1.0)  # (3, 19)
        runs[name] = (activity.mean(1), batches.std(1, ddof=1) / np.sqrt(batches.shape[1]))
    (r1, se1), (r2, se2) = runs[ours], runs[peer]
    tolerance = RATE_TARGET * r2 + 3 * np.hypot(se1, se2)
    print(f"{ours} {np.round(r1, 3)} (SE {np.round(se1, 3)}) Hz, {peer} {np.round(r2, 3)} (SE {np.round(se2, 3)}) Hz, "
          f"relative difference {np.round((r1 - r2) / r2, 4)}")  # pytest -s
    assert np.all(np.abs(r1 - r2) <= tolerance), (
        f"rates while dominant (winner, loser, I): {ours} {np.round(r1, 3)} Hz, {peer} {np.round(r2, 3)} Hz, "
        f"relative difference {np.round((r1 - r2) / r2, 4)}, tolerance {np.round(tolerance, 3)} Hz")


@pytest.mark.slow
def test_step_response_of_the_mesoscopic_models(nest):
    """A 0.5 s step of 30 /s into E1 (from 1 s on, after a 0.2 s cue of 100 /s into E2 that makes E2
    the winner in both models), 20 trials of 2 s: the trial-averaged activity of E1 and of E2 in 4 ms
    bins from 0.5 s on, ours (the model, dt = 4 ms) against NEST gif_pop_psc_exp (0.2 ms), r >= 0.9.

    The noise of a 20-trial average caps r below 1: with signal variance s and noise variances n1, n2
    (the across-trial variance per bin / 20), two curves of the same mean correlate at
    s / sqrt((s + n1)(s + n2)). That ceiling is printed with r (0.97 for E1, 0.98 for E2 here); r >= 0.9
    leaves room for the models' systematic difference (ours runs at 4 ms), not for a wrong response. I is not checked: it
    changes little with the step (E1 and E2 trade activity), so its ceiling is near 0.
    """
    net = winner_take_all()
    on, off, amplitude, trials, duration = 1.0, 1.5, 30.0, 20, 2.0

    def step_input(step):
        I_ext = np.zeros((net.M, int(round(duration / step))))
        I_ext[0, int(round(on / step)):int(round(off / step))] = amplitude
        I_ext[1, :int(round(0.2 / step))] = 100.0
        return I_ext

    ours = np.stack([_run("ours_meso", net, duration, s, step_input(DT))[0] for s in range(trials)])
    nest_trials = np.stack([_run("nest_meso", net, duration, s, step_input(MICRO_DT))[0] for s in range(trials)])
    nest_trials = nest_trials.reshape(trials, net.M, -1, int(round(DT / MICRO_DT))).sum(-1)  # (trials, M, bins of 4 ms)
    window = slice(int(round(0.5 / DT)), None)
    for a in (0, 1):
        x, y = ours[:, a, window] / (net.N[a] * DT), nest_trials[:, a, window] / (net.N[a] * DT)  # (trials, T) Hz
        n1, n2 = x.var(0, ddof=1).mean() / trials, y.var(0, ddof=1).mean() / trials
        s = np.cov(x.mean(0), y.mean(0))[0, 1]
        ceiling = s / np.sqrt((s + n1) * (s + n2))
        r = np.corrcoef(x.mean(0), y.mean(0))[0, 1]
        print(f"population {a}: r = {r:.3f}, noise ceiling {ceiling:.3f}")  # pytest -s
        assert r >= 0.9, f"population {a}: r = {r:.3f} (noise ceiling {ceiling:.3f})"
