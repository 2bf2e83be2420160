"""Tests of the replication report (src/report.py) and of the GPFA baseline (src/gpfa.py).

The end-to-end test trains neuLVM for one short EM step on a 3 s recording made here, then runs
the report with tiny simulations: it checks that every section and figure is written, not what
the numbers are.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from src import report
from src.dataset import save_recording
from src.helper import smooth
from src.microsim import H, pulse_input, simulate, simulate_recording
from src.network import winner_take_all
from src.results import load_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DT = 0.004


# ------------------------------------------------------------------ dominance durations

def constructed_counts(switches, duration, N, dt=DT, rates=(20.0, 5.0, 25.0)):
    """Spike counts per bin that are exactly the expected counts of a network whose winner starts
    as E1 and swaps at `switches` (s): winner at rates[0], loser at rates[1], I constant."""
    n = int(round(duration / dt))
    t = (np.arange(n) + 0.5) * dt
    e2_wins = (np.searchsorted(switches, t) % 2).astype(bool)
    A = np.empty((3, n))
    A[0] = np.where(e2_wins, rates[1], rates[0])
    A[1] = np.where(e2_wins, rates[0], rates[1])
    A[2] = rates[2]
    return A * np.asarray(N)[:, None] * dt


def test_dwell_times_finds_exactly_the_switches_of_a_constructed_signal():
    N = winner_take_all().N
    # piece 1: switches at 2, 5, 5.8, 9 s, plus a 0.25 s flicker of E2 at 7 s (shorter than the
    # 0.3 s minimum dwell: not a switch); piece 2: one switch, so no complete period
    piece1 = constructed_counts([2.0, 5.0, 5.8, 7.0, 7.25, 9.0], 12.0, N)
    piece2 = constructed_counts([4.0], 8.0, N)
    d = report.dwell_times([piece1, piece2], N, DT)
    # symmetric steps smoothed by a symmetric kernel cross half-way at the step itself: exact to a bin
    np.testing.assert_allclose(d["switch_times"][0], [2.0, 5.0, 5.8, 9.0], atol=DT, err_msg="switches of piece 1")
    np.testing.assert_allclose(d["switch_times"][1], [4.0], atol=DT, err_msg="switch of piece 2")
    np.testing.assert_allclose(d["durations"], [3.0, 0.8, 3.2], atol=2 * DT, err_msg="complete periods only")
    assert d["switches"] == 5 and d["seconds"] == pytest.approx(20.0)
    # the flicker (0.25 s of 20 s) is counted with the winner it interrupts: rates off by at most 15 * 1.25%
    assert d["rate_winner"] == pytest.approx(20.0, abs=0.25) and d["rate_loser"] == pytest.approx(5.0, abs=0.25)
    assert d["rate_others"] == pytest.approx([25.0])
    assert report.dwell_summary(d["durations"])[:2] == (3, pytest.approx(7.0 / 3, abs=2 * DT))


def test_dwell_summary_of_no_period_is_undefined_not_zero():
    n, mean, median, cv = report.dwell_summary([])
    assert n == 0 and np.isnan(mean) and np.isnan(median) and np.isnan(cv)


def test_classify_trials_uses_the_pre_and_post_windows():
    n = int(round(report.TRIAL_LENGTH / DT))
    A = np.zeros((3, 3, n))
    pre = slice(int(report.PRE_WINDOW[0] / DT), int(report.PRE_WINDOW[1] / DT))
    post = slice(int(report.POST_WINDOW[0] / DT), int(report.POST_WINDOW[1] / DT))
    A[:, 0, pre], A[:, 1, pre] = 20, 5          # E1 wins before the step in all trials ...
    A[2, 1, pre] = 30                           # ... but trial 2, which does not count
    A[0, 1, post], A[0, 0, post] = 20, 5        # trial 0 switches, trial 1 does not
    A[1, 0, post] = 20
    valid, switched = report.classify_trials(A, DT)
    assert valid.tolist() == [True, True, False] and switched[:2].tolist() == [True, False]
    assert report.switch_fraction(valid, switched) == (0.5, 2)


def test_amplitude_search_brackets_then_bisects_and_picks_the_closest_to_half():
    threshold = 11.0                            # a noiseless network: fraction = logistic in log amplitude
    calls = []

    def fraction(amp):
        return 1 / (1 + (threshold / amp) ** 4)

    def evaluate(amp, k):
        calls.append(amp)
        return fraction(amp), 20

    chosen, history = report.search_amplitude(evaluate, 6)
    start = report.AMP_START
    assert calls[:3] == [start, 2 * start, 4 * start]        # doubles until the fraction reaches 0.5
    assert calls[3] == pytest.approx(np.sqrt(2 * start * 4 * start))   # then geometric bisection
    assert len(history) == 6
    assert chosen == min(calls, key=lambda a: abs(fraction(a) - 0.5))
    assert abs(np.log(chosen / threshold)) < np.log(2) / 4   # 3 bisections: within 2^(1/4) of the threshold


# ------------------------------------------------------------------ GPFA baseline

def test_gpfa_on_nine_spike_trains_beats_a_shuffled_control():
    pytest.importorskip("elephant")
    from src.gpfa import best_linear_map, gpfa_latents, shift_null_r
    net = winner_take_all()
    duration, steps = 14.0, int(round(DT / H))
    n_steps = int(round(duration / H))
    # E2 wins from the start; steps of 50 units/s force switches at about 2, 5, 8 and 11 s
    I_ext = (pulse_input(3, n_steps, 50.0, [2.0, 8.0], 0.5, 0) + pulse_input(3, n_steps, 50.0, [5.0, 11.0], 0.5, 1))
    sim = simulate(net, n_steps, np.random.default_rng(11), I_ext=I_ext, n_recorded=3)
    n_bins = n_steps // steps
    y = sim.spikes.reshape(3, 3, n_bins, steps).max(-1).reshape(9, n_bins)          # (9 neurons, bins)
    A = sim.pop_spike_counts.reshape(3, n_bins, steps).sum(-1) / (net.N[:, None] * DT)
    truth = smooth(A, report.LATENT_SMOOTH, DT)
    X, info = gpfa_latents(y, DT, em_max_iters=30, seed=0)
    assert info["iterations"] == 30 and np.isfinite(info["log_likelihood"])
    assert X.shape == (3, n_bins) and np.all(np.isfinite(X))
    for a in (0, 1):                            # I fires at a constant rate: nothing to find
        mapped, _ = best_linear_map(X, truth[a])
        r = np.corrcoef(mapped, truth[a])[0, 1]
        null = shift_null_r(X, truth[a], n_shifts=200, rng=np.random.default_rng(a))
        # the chance level is the null's maximum over 200 shifts (a one-sided test at p < 1/200)
        assert r > null.max(), f"population {a}: mapped r {r:.3f} vs max of shuffled {null.max():.3f}"
        assert r > 0.5, f"population {a}: mapped r {r:.3f}"


def test_gpfa_is_reproducible_from_its_seed_and_leaves_the_global_generator_alone():
    pytest.importorskip("elephant")
    from src.gpfa import gpfa_latents
    y = (np.random.default_rng(1).random((9, 1000)) < 0.05).astype(float)             # 9 trains, 4 s
    np.random.seed(123)
    X1, _ = gpfa_latents(y, DT, em_max_iters=5, seed=4)
    after = np.random.random()
    np.random.seed(99)                                                                # another global state
    X2, _ = gpfa_latents(y, DT, em_max_iters=5, seed=4)
    np.testing.assert_array_equal(X1, X2, err_msg="same seed, different latents")
    np.random.seed(123)
    assert np.random.random() == after, "gpfa_latents changed numpy's global random state"


def test_best_linear_map_recovers_an_exact_linear_relation():
    from src.gpfa import best_linear_map
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 200))
    target = np.array([[1.0, -2.0, 0.5]]) @ X + 7.0                                 # (1, 200)
    mapped, beta = best_linear_map(X, target[0])
    np.testing.assert_allclose(mapped, target[0], atol=1e-10)
    np.testing.assert_allclose(beta[:, 0], [1.0, -2.0, 0.5, 7.0], atol=1e-10)


# ------------------------------------------------------------------ free simulation, true parameters

def test_free_simulation_with_true_parameters_matches_the_network():
    """The report's simulator (src.report.free_batches, the numpy reference, exact scheme at 4 ms, 4 x 50 s)
    against model.md section 1's figures of the network (winner 18.5-20 Hz, loser 5.5-6.5 Hz, I 24.6 Hz):
    the winner switches, winner and I within 10%, the loser within 20% (issue 11; measured with 1,000 s
    runs: 17.9 / 7.2 / 24.65 Hz, the loser +18-19% above the network's 6.05-6.08 Hz)."""
    net = winner_take_all()
    pieces = report.free_batches(net, DT, 250, "exact", 4, int(round(50.0 / DT)), seed=3)   # 4 x 50 s
    d = report.dwell_times(list(pieces * net.N[None, :, None]), net.N, DT)
    assert 0.9 * 18.5 <= d["rate_winner"] <= 1.1 * 20.0, d["rate_winner"]
    assert 0.8 * 5.5 <= d["rate_loser"] <= 1.2 * 6.5, d["rate_loser"]
    assert 0.9 * 24.6 <= d["rate_others"][0] <= 1.1 * 24.6, d["rate_others"]
    assert d["switches"] >= 1, "the winner never switched in 200 s"


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2.2 s recording, one run of one short EM step on a 1 s window, and one killed run."""
    root = tmp_path_factory.mktemp("report")
    dataset = str(root / "rec.npz")
    save_recording(dataset, simulate_recording(winner_take_all(), 2.2, seed=3))
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_meso.py"), "--dataset", dataset, "--trial_length", "1",
         "--t_perbatch", "1", "--end_timepoint", "2", "--max_EMsteps", "1", "--Emaxiters", "5",
         "--Mmaxiters", "5", "--threads", "1", "--SAVE_DIR", str(root) + os.sep],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    folder = str(root / "data2")
    os.makedirs(os.path.join(folder, "train1"))              # killed before its first EM step
    return folder


TINY = ["--quick", "--duration", "10", "--segment", "5", "--trials", "3", "--search_steps", "1",
        "--gpfa_iters", "10", "--gpfa_restarts", "2"]


@pytest.mark.slow
def test_report_runs_end_to_end_and_writes_every_section(trained):
    with pytest.warns(UserWarning, match="train1"):
        status = report.main(["--result_dir", trained, *TINY])
    assert status == 0
    with open(os.path.join(trained, "report.md")) as f:
        text = f.read()
    for heading in ("## Targets", "## 1. Latent inference", "## 2. Parameters", "## 3. Metastable dynamics",
                    "## 4. Generalisation to stimulation", "## 5. Reproducibility"):
        assert heading in text, heading
    for needle in ("data-driven init", "neuLVM", "upper bound", "amem_1", "J_3", "ft_3", "KS",
                   "Chosen amplitude", "switch fraction", "numpy", "seed", "python -m src.report", "QUICK MODE"):
        assert needle in text, needle
    targets = text.split("## Targets")[1].split("## 1.")[0]
    assert targets.count("met**") + targets.count("not evaluated") == 4, targets
    numbers = load_json(os.path.join(trained, "report.json"))      # the same numbers, machine-readable
    assert set(numbers["targets"]) == {"neulvm_beats_init", "neulvm_beats_gpfa", "mean_dominance_within_factor",
                                       "switch_fraction_within"}
    assert numbers["seeds"]["metastable: microscopic network"] == 2022
    for figure in ("report_latent.png", "report_dominance.png", "report_traces.png", "report_stimulation.png"):
        assert f"({figure})" in text and os.path.getsize(os.path.join(trained, figure)) > 0, figure


def test_report_refuses_the_training_seed_and_reports_missing_results(trained, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert report.main(["--result_dir", trained, "--seed", "3", *TINY]) == 2
    assert "seed of the training data" in capsys.readouterr().err
    assert report.main(["--result_dir", str(tmp_path)]) == 1
    assert "run bash 3pop_neuLVM.sh first" in capsys.readouterr().err
    assert report.main(["--result_dir", str(tmp_path), "--segment", "7"]) == 2      # 7 does not divide 1000
