"""Tests of src/microsim.py: exact limits, renewal theory, the winner-take-all network.

Every sampling test uses a fixed seed, so it is deterministic; the tolerances are still chosen
as if the seed were random, and each says how it follows from the sample size and the
false-failure probability accepted.
"""
import numpy as np
import pytest
from scipy import stats

from src.microsim import (MICRO_DT, State, dominance, main, ou_input, pulse_input, simulate, simulate_recording,
                          stationary_state)
from src.network import Network, winner_take_all

REF_STEPS = 20  # ref_t / h of model.md section 1


def single_population(N=2000, rp=7.0, ft=3.7, amem=50.0, rate=20.0):
    """One uncoupled population: its neurons are independent renewal processes of constant drive rp."""
    return Network(N=[N], amem=[amem], rp=[rp], ft=[ft], J=[0.0], conmat=[[0.0]], asyn=[1000 / 3],
                   ref_t=REF_STEPS * MICRO_DT, eps=1.0, init_rates=[rate])


def isi_pmf(amem, rp, ft, n_max, u=0.0, h=MICRO_DT, ref_steps=REF_STEPS):
    """Oracle, independent of the simulator: ISI distribution in steps of a neuron under constant input.

    Spike in step 0; steps 1..ref_steps held at 0; in free step j = 1, 2, ... (ISI n = ref_steps + j)
    V_j = rp + (V_{j-1} - rp) exp(-h amem) + h u from V_0 = 0, and the neuron fires with
    p_j = 1 - exp(-exp(V_j - ft) h). Returns f[n] for n = 0..n_max and the mass beyond n_max.
    """
    f = np.zeros(n_max + 1)
    V, survival = 0.0, 1.0
    for n in range(ref_steps + 1, n_max + 1):
        V = rp + (V - rp) * np.exp(-h * amem) + h * u
        p = -np.expm1(-np.exp(V - ft) * h)
        f[n] = survival * p
        survival *= 1 - p
    return f, survival


def renewal_rate_and_cv(f):
    n = np.arange(len(f))
    mean = (n * f).sum()
    var = (n**2 * f).sum() - mean**2
    return 1 / (mean * MICRO_DT), np.sqrt(var) / mean


def isis(spikes):
    """Inter-spike intervals (steps) of each row of a (R, n_steps) 0/1 array, with their start steps."""
    out, starts = [], []
    for row in spikes:
        times = np.flatnonzero(row)
        out.append(np.diff(times))
        starts.append(times[:-1])
    return np.concatenate(out), np.concatenate(starts)


@pytest.mark.parametrize("rp", [7.0, 10.0])  # ~12 Hz, ISIs mostly long; ~26 Hz, where the shape of the
# ISI density right after the refractory period matters (one held step more is rejected at p ~ 1e-5)
def test_renewal_rate_and_isi_density(rp):
    f, tail = isi_pmf(50.0, rp, 3.7, n_max=20_000)
    assert tail < 1e-12
    rate, cv = renewal_rate_and_cv(f)
    net = single_population(rp=rp, rate=rate)
    T = 50_000  # 10 s
    result = simulate(net, T, np.random.default_rng(11), n_recorded=500)
    counts = result.pop_spike_counts[0]

    # Rate: a stationary renewal process has count variance ~ CV^2 * rate * T per neuron, so the
    # population rate has standard error sqrt(CV^2 * rate / (N T h)); 3 SE: false failure 0.3%.
    measured = counts.sum() / (net.N[0] * T * MICRO_DT)
    se = np.sqrt(cv**2 * rate / (net.N[0] * T * MICRO_DT))
    assert abs(measured - rate) < 3 * se, f"rate {measured:.4f} Hz, renewal theory {rate:.4f} +- {se:.4f} Hz"

    # Stationary start: no transient. The first 100 steps hold ~N*rate*100h = 400 spikes, roughly
    # Poisson (SD 20, and less for a regular process); 4 SD: false failure 6e-5.
    first = counts[:100].sum()
    expected = net.N[0] * rate * 100 * MICRO_DT
    assert abs(first - expected) < 4 * np.sqrt(expected), f"first 20 ms: {first} spikes, expected {expected:.1f}"

    # ISI histogram against f. Only intervals starting before T - L (L = 4000 steps, beyond which f has
    # mass ~1e-9) are used, so the end of the recording does not censor long intervals.
    L = 4000
    intervals, starts = isis(result.spikes[0])
    intervals = intervals[starts < T - L]
    # 40 bins [e_i, e_i+1) of about equal probability under f (whole steps)
    inner = np.unique(np.searchsorted(np.cumsum(f), np.linspace(0, 1, 41)[1:-1]) + 1)
    edges = np.concatenate([[REF_STEPS + 1], inner, [L + 1]])
    observed = np.histogram(intervals, bins=edges)[0]
    expected = np.array([f[lo:hi].sum() for lo, hi in zip(edges[:-1], edges[1:])]) * len(intervals)
    assert np.all(expected > 5), "chi-square needs >= 5 expected per bin"
    assert observed.sum() == len(intervals), f"an ISI fell outside [21, {L}] steps"
    # expected is rescaled to the observed total (the mass beyond L, ~1e-9, is negligible);
    # p > 1e-3: false failure 1e-3
    p = stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue
    assert p > 1e-3, f"ISI histogram vs renewal density: chi-square p = {p:.2e}"


def test_no_isi_shorter_than_refractory_period():
    net = winner_take_all()
    result = simulate(net, 20_000, np.random.default_rng(2), n_recorded=200)
    for a in range(net.M):
        intervals, _ = isis(result.spikes[a])
        assert len(intervals) > 1000
        assert intervals.min() >= REF_STEPS + 1, f"population {a}: shortest ISI {intervals.min()} steps"


def test_very_low_threshold_fires_every_21_steps():
    net = single_population(N=210, ft=-60.0, rate=1 / (21 * MICRO_DT))
    result = simulate(net, 2_000, np.random.default_rng(3), n_recorded=210)
    for row in result.spikes[0]:
        times = np.flatnonzero(row)
        assert times[0] <= REF_STEPS, "a free neuron fires in the first step it can"
        np.testing.assert_array_equal(np.diff(times), REF_STEPS + 1)
    # every neuron fires once in any 21 consecutive steps
    window = np.convolve(result.pop_spike_counts[0], np.ones(21, int), mode="valid")
    np.testing.assert_array_equal(window, 210)


def test_very_high_threshold_never_fires():
    net = single_population(N=100, ft=1000.0, rate=0.0)
    result = simulate(net, 5_000, np.random.default_rng(4))
    assert result.pop_spike_counts.sum() == 0


@pytest.mark.slow  # 12 s alone on 2 cores, 40 s when they are shared
def test_winner_take_all_200s():
    """Rates while dominant and switching of the paper's network (model.md section 1 reference:
    winner 18.5-20 Hz, loser 5.5-6.5 Hz, I 24.6 Hz, ~27 switches in 200 s). The bands are wider
    than the reference by about 3 standard errors of a 200 s run (the dominance periods are
    few, ~20, and their rates scatter by ~1 Hz)."""
    net = winner_take_all()
    result = simulate(net, 1_000_000, np.random.default_rng(5), n_recorded=0)
    counts = result.pop_spike_counts[:, 5000:]  # drop the first second
    winner, switches = dominance(counts, net.N)
    A = counts / (net.N[:, None] * MICRO_DT)
    winning = np.where(winner == 0, A[0], A[1]).mean()
    losing = np.where(winner == 0, A[1], A[0]).mean()
    assert 17 <= winning <= 21, f"winner {winning:.2f} Hz"
    assert 4.5 <= losing <= 7.5, f"loser {losing:.2f} Hz"
    np.testing.assert_allclose(A[2].mean(), 24.6, rtol=0.02, err_msg="inhibitory population rate")
    assert len(switches) >= 10, f"{len(switches)} switches in 199 s"


def test_same_seed_identical_different_seed_differs():
    net = winner_take_all()
    a = simulate(net, 3000, np.random.default_rng(7))
    b = simulate(net, 3000, np.random.default_rng(7))
    c = simulate(net, 3000, np.random.default_rng(8))
    np.testing.assert_array_equal(a.pop_spike_counts, b.pop_spike_counts)
    np.testing.assert_array_equal(a.spikes, b.spikes)
    assert not np.array_equal(a.pop_spike_counts, c.pop_spike_counts)


@pytest.mark.parametrize("delay_steps", [1, 3])
def test_compiled_loop_equals_numpy_reference(delay_steps):
    """The XLA loop and the plain numpy loop draw the same numbers and give the same spikes (both
    compute in float64; a difference in the last bit of a hazard flips a spike with probability
    ~1e-16)."""
    net = winner_take_all()
    I_ext = pulse_input(net.M, 6000, amplitude=300.0, onsets=[0.3], duration=0.2, target=1)
    kw = dict(I_ext=I_ext, delay_steps=delay_steps)
    fast = simulate(net, 6000, np.random.default_rng(9), method="xla", **kw)  # crosses a segment boundary
    slow = simulate(net, 6000, np.random.default_rng(9), method="numpy", **kw)
    np.testing.assert_array_equal(fast.pop_spike_counts, slow.pop_spike_counts)
    np.testing.assert_array_equal(fast.spikes, slow.spikes)


def test_zero_coupling_gives_independent_renewal_populations():
    rp = np.array([6.5, 7.0, 7.5])
    rates = []
    for a in range(3):
        f, _ = isi_pmf(50.0, rp[a], 3.7, n_max=20_000)
        rates.append(renewal_rate_and_cv(f))
    net = Network(N=[400, 400, 200], amem=[50.0] * 3, rp=rp, ft=[3.7] * 3, J=[0.0] * 3,
                  conmat=winner_take_all().conmat, asyn=winner_take_all().asyn, ref_t=REF_STEPS * MICRO_DT,
                  init_rates=[r for r, _ in rates])
    T = 100_000
    counts = simulate(net, T, np.random.default_rng(10), n_recorded=0).pop_spike_counts
    for a, (rate, cv) in enumerate(rates):
        measured = counts[a].sum() / (net.N[a] * T * MICRO_DT)
        se = np.sqrt(cv**2 * rate / (net.N[a] * T * MICRO_DT))  # as in the renewal test; 3 SE: 0.3%
        assert abs(measured - rate) < 3 * se, f"population {a}: {measured:.3f} Hz vs {rate:.3f} +- {se:.3f}"
    # E1 and E2 counts in 10 ms bins are uncorrelated: |r| < 4 / sqrt(bins), false failure 6e-5
    binned = counts[:2].reshape(2, -1, 50).sum(axis=2)
    r = np.corrcoef(binned)[0, 1]
    assert abs(r) < 4 / np.sqrt(binned.shape[1]), f"E1-E2 correlation {r:.4f} without coupling"


def test_coupling_matters():
    """With the paper's coupling the E populations compete: their 100 ms counts anticorrelate."""
    net = winner_take_all()
    counts = simulate(net, 100_000, np.random.default_rng(12), n_recorded=0).pop_spike_counts
    binned = counts[:2].reshape(2, -1, 500).sum(axis=2)
    assert np.corrcoef(binned)[0, 1] < -0.5


def test_given_initial_state():
    net = single_population(N=50, ft=-60.0)
    state = State(V=np.zeros(50), held=np.full(50, 7), Isyn=np.zeros(1), A_hist=np.zeros((1, 1)))
    counts = simulate(net, 100, np.random.default_rng(0), initial_state=state, n_recorded=0).pop_spike_counts[0]
    assert counts[:7].sum() == 0 and counts[7] == 50  # held for 7 steps, then all fire at once


def test_stationary_state_ages():
    """Held neurons are those that fired within the last 20 steps: a fraction rate * 20 h."""
    net = single_population(N=20_000, rate=20.0)
    state = stationary_state(net, np.random.default_rng(1))
    f, _ = isi_pmf(50.0, 7.0, 3.7, n_max=20_000)
    rate, _ = renewal_rate_and_cv(f)
    fraction = np.mean(state.held > 0)
    p = rate * REF_STEPS * MICRO_DT  # not the init rate: the age law follows the hazard under the init input
    # binomial SE sqrt(p(1-p)/N); 4 SE: false failure 6e-5
    assert abs(fraction - p) < 4 * np.sqrt(p * (1 - p) / 20_000), f"held fraction {fraction:.4f}, expected {p:.4f}"
    assert set(np.unique(state.held)) <= set(range(REF_STEPS + 1))


def test_inputs():
    I = pulse_input(3, 1000, amplitude=5.0, onsets=[0.01, 0.1], duration=0.002, target=2)
    assert I[2].sum() == 5.0 * 20 and I[:2].sum() == 0 and I[2, 50] == 5.0 and I[2, 60] == 0
    ou = ou_input(2, 500_000, np.random.default_rng(0), mean=1.0, sigma=2.0, mod_depth=0.0)
    # stationary mean and SD; the OU has ~ T / (2 tau) = 8,000 independent samples, so the mean has
    # SE 2 / sqrt(8000) = 0.022 and the SD ~0.016; 5 SE
    np.testing.assert_allclose(ou.mean(axis=1), 1.0, atol=0.11)
    np.testing.assert_allclose(ou.std(axis=1), 2.0, atol=0.08)
    lag = int(0.003 / MICRO_DT)  # autocorrelation at one tau is exp(-1)
    r = np.corrcoef(ou[0, :-lag], ou[0, lag:])[0, 1]
    assert abs(r - np.exp(-1)) < 0.03


@pytest.mark.parametrize("bad, message", [
    (dict(n_steps=0), "n_steps"), (dict(delay_steps=0), "delay_steps"), (dict(n_recorded=500), "n_recorded"),
    (dict(I_ext=np.zeros((2, 10))), "I_ext"), (dict(method="gpu"), "method")])
def test_simulate_rejects_bad_arguments(bad, message):
    kw = dict(n_steps=10) | bad
    with pytest.raises(ValueError, match=message):
        simulate(winner_take_all(), rng=np.random.default_rng(0), **kw)


def test_command_line(tmp_path, capsys):
    from src.dataset import load_recording

    out = tmp_path / "rec.npz"
    assert main(["--out", str(out), "--duration", "0.2", "--seed", "3", "--input", "ou"]) == 0
    rec = load_recording(out)
    assert rec.seed == 3 and rec.input_kind == "ou" and rec.spikes.shape == (3, 30, 1000)
    # the file holds the run of the API with the same options (the OU input's defaults: mean 0, sigma 100)
    direct = simulate_recording(winner_take_all(), 0.2, 3, input_kind="ou", ou=dict(mean=0.0, sigma=100.0))
    for name in ("I_ext", "pop_spike_counts", "spikes"):
        np.testing.assert_array_equal(getattr(rec, name), getattr(direct, name), err_msg=name)
    assert np.std(rec.I_ext) > 10.0, np.std(rec.I_ext)     # the input is there: sigma 100 / s


@pytest.mark.parametrize("argv", [["--out", "x.npz", "--seed", "1", "--bogus", "2"],
                                  ["--out", "x.npz"],
                                  ["--out", "x.npz", "--seed", "1", "--n_recorded", "3"],
                                  ["--out", "{a_file}/dir/x.npz", "--seed", "1", "--duration", "0.01"]])
def test_command_line_errors_are_one_line(argv, capsys, tmp_path):
    """As `python -m src.microsim` runs main: through src.cli.run, which gives the exit status.
    The last --out lies under a regular file: no user, root included, can make its folder."""
    from src.cli import run
    from src.microsim import PROG

    (tmp_path / "a_file").write_text("")
    argv = [a.format(a_file=tmp_path / "a_file") for a in argv]
    status = run(PROG, main, argv)
    assert status == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and "Traceback" not in err, err
    assert out == "", out                  # refused before simulating, nothing written
