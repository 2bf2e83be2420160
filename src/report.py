"""The replication report: each claim of the paper measured on a fit, against the ground truth
and against GPFA (issue 5). Writes report.md, report_*.png and the numbers
in report.json into the result folder.

    python -m src.report                                          # result/3pop example/data11
    python -m src.report --result_dir "/tmp/res/data3" --quick    # a short look (numbers not meaningful)
    python -m src.report --seed 31                                # other evaluation simulations

What it measures (the best run is the one with the lowest final loss, src/runs.py):
  1. Latent inference: Pearson r and RMSE (Hz) between the true population activity of the fitted
     window and (a) the data-driven initialisation, (b) neuLVM's inferred activity, (c) GPFA with
     3 latents fitted to the same observed spike trains (history included, `gpfa_restarts` fits from
     different initialisations) and mapped to each population by the best linear map over the
     evaluated bins, best restart per population (an upper bound for GPFA); all
     smoothed with a Gaussian of LATENT_SMOOTH s.d. Also neuLVM's r for every run.
  2. Parameters: true, initial, fitted and relative error of the 12 parameters, every run.
  3. Metastable dynamics: `duration` s of the microscopic network (seed `--seed`, which must not be
     the training data's seed), and `duration` s of free simulation of the fitted and of the
     true-parameter mesoscopic model, run as duration/segment independent batches of `segment` s
     (batches run in parallel in numpy; the microscopic run is cut into pieces of the same length,
     so all three are censored alike). Dominance periods: src.microsim.dominance (smoothed E1 vs
     E2 activity, flickers under 0.3 s merged) on the activity binned at dt; only periods that begin
     and end inside a piece count. Mean, CV, two-sample KS statistic against the network.
  4. Stimulation: a STIM_LENGTH s step into E2 at STIM_ONSET s of a TRIAL_LENGTH s trial that
     starts from the stationary state of E1 winning (rates STIM_START_RATES). A trial counts if E1
     wins (higher mean rate) over PRE_WINDOW; it "switches" if E2 has the higher mean rate over
     POST_WINDOW. Amplitude search (microscopic network only, `search_steps` evaluations of `trials`
     trials, each with its own seed): start at AMP_START; double (fraction < 0.5) or halve
     (fraction >= 0.5) until the fraction crosses 0.5, then bisect geometrically between the
     closest amplitudes on either side; the chosen amplitude is the evaluated one whose fraction is
     closest to 0.5 (the smaller on a tie). The comparison then runs fresh trials (new seeds) at
     that amplitude in the network, the fitted model and the true-parameter model.
  5. Versions, seeds (every one derived from --seed by name, evaluation_seeds), the command and the
     time each part took.
The runs reported are the folder's SMC runs if it has any (the default E-step of train_meso.py), its
MAP runs otherwise; --estep chooses. For the SMC runs (fitted with the posterior E-step, report in
result_dir/report_smc/) it also
measures the posterior of the latent at the best run's theta (section 1b): the coverage of the true
activity (smoothed LATENT_SMOOTH) by the 90% band of `sweeps` particle Gibbs draws, each smoothed alike;
log p_hat(y | theta) at that fit, at the best MAP run of the folder (if any) and at the truth, each from
`repeats` independent filter passes (mean and Monte Carlo standard error); and it puts its numbers next
to those of the MAP report of the same folder (result_dir/report.json), if that exists.
Nothing is cached: every number comes from the simulations of this call.

The code follows that order: the measures (measure_latent, measure_parameters,
measure_metastability, measure_stimulation: plain functions of arrays, networks and run summaries,
each returning a dict), the simulations they are measured on, render_markdown (the text of
report.md) and report_numbers (report.json), then main. The figures are src/plots.py's.
"""
import dataclasses
import os
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np

from .cli import NoResult, UsageError, check, option, parse, run, software_versions
from .gpfa import X_DIM
from .helper import smooth
from .results import load_json, save_figure, save_json, save_text

PROG = "python -m src.report"
DEFAULT_RESULT_DIR = "result/3pop example/data11"
LATENT_SMOOTH = 0.02          # s, s.d. of the Gaussian smoothing of every activity compared
STIM_TARGET = 1               # E2 (0-based population index)
STIM_ONSET = 1.0              # s into the trial
STIM_LENGTH = 0.5             # s
TRIAL_LENGTH = 2.5            # s
STIM_START_RATES = (20.0, 5.0, 25.0)  # Hz, stationary start with E1 winning (model.md's rates mirrored)
PRE_WINDOW = (0.5, 1.0)       # s, E1 must win here for the trial to count
POST_WINDOW = (2.0, 2.5)      # s, 0.5-1.0 s after the step: which E population wins
AMP_START = 4.0               # potential units per s (2.5 mV/s); 50 raises V by 1 unit at steady state
AMP_MIN, AMP_MAX = 0.125, 2048.0  # the search stays in this range
TARGET_DOMINANCE_FACTOR = 1.5
TARGET_SWITCH_DIFF = 0.2
TARGET_COVERAGE = (0.80, 0.95)   # of the E populations' bins by the posterior's 90% band (issue 13)
POSTERIOR_BURN_IN = 2            # particle Gibbs sweeps discarded before the draws of the band
N_SHIFTS = 200               # circular shifts for GPFA's chance level
GPFA = "GPFA, best linear map"   # the name of GPFA's estimate in the latent measures
NETWORK, FITTED, TRUE_MODEL = "microscopic network", "fitted model", "true-parameter model"
NEEDS_TRUTH = {          # the sections that a recording without ground truth (src.dataset) cannot have
    "1. Latent inference": "the true population activity of the fitted window",
    "3. Metastable dynamics": "the true parameters, to simulate the microscopic network",
    "4. Generalisation to stimulation": "the true parameters, to simulate the microscopic network"}
FIGURES = {"latent": "report_latent.png", "dominance": "report_dominance.png", "traces": "report_traces.png",
           "stimulation": "report_stimulation.png"}


# ------------------------------------------------------------------ options

QUICK = {"duration": 60.0, "segment": 20.0, "trials": 8, "search_steps": 2, "gpfa_iters": 50,
         "gpfa_restarts": 1, "particles": 30, "sweeps": 4, "repeats": 2}      # --quick: a short look and the tests (numbers not meaningful)


@dataclass
class ReportOptions:
    result_dir: str = option(DEFAULT_RESULT_DIR, "folder with the runs (train0, train1, ...)")
    dataset: str = option("", "recording the runs were fitted to (default: from the best run's summary.json)")
    seed: int = option(2022, "seed of the evaluation simulations (the others are derived from it, "
                             "evaluation_seeds); must differ from the training data's seed")
    duration: float = option(1000.0, "s of each metastable-dynamics simulation")
    segment: float = option(100.0, "s per independent piece of those simulations")
    trials: int = option(20, "stimulation trials per evaluation")
    search_steps: int = option(6, "amplitude evaluations of the search")
    gpfa_iters: int = option(500, "GPFA EM iterations at most")
    estep: str = option("", "which runs: those fitted with --estep smc (report in result_dir/report_smc/) or map "
                            "(report in result_dir); the best is the lowest final loss among them (default: "
                            "smc if the folder holds SMC runs, map otherwise)")
    gpfa_restarts: int = option(3, "GPFA fits from different initialisations (seeds 0, 1, ...); the best per "
                                   "population is reported")
    particles: int = option(500, "--estep smc: particles of the filter passes of section 1b")
    sweeps: int = option(20, f"--estep smc: particle Gibbs draws for the 90% band (after {POSTERIOR_BURN_IN} "
                             "discarded)")
    repeats: int = option(3, "--estep smc: filter passes per theta for log p_hat(y | theta)")
    quick: bool = option(False, f"small settings ({', '.join(f'{k}={v:g}' for k, v in QUICK.items())}) for a "
                                "quick look and the tests; numbers not meaningful")
    debug: bool = option(False, "show tracebacks on errors")


def parse_options(argv):
    opt = parse(ReportOptions, argv, PROG, __doc__, presets={"quick": QUICK})
    n_pieces = opt.duration / opt.segment if opt.segment > 0 else 0
    check([(opt.duration > 0, f"--duration must be > 0 s, got {opt.duration!r}"),
           (opt.segment > 0 and abs(n_pieces - round(n_pieces)) < 1e-9,
            f"--segment must divide --duration ({opt.duration:g} s), got {opt.segment!r}"),
           (opt.trials >= 1, f"--trials must be >= 1, got {opt.trials!r}"),
           (opt.search_steps >= 1, f"--search_steps must be >= 1, got {opt.search_steps!r}"),
           (opt.estep in ("", "map", "smc"), f"--estep must be map or smc, got {opt.estep!r}"),
           (opt.gpfa_iters >= 1, f"--gpfa_iters must be >= 1, got {opt.gpfa_iters!r}"),
           (opt.gpfa_restarts >= 1, f"--gpfa_restarts must be >= 1, got {opt.gpfa_restarts!r}"),
           (opt.particles >= 2, f"--particles must be >= 2, got {opt.particles!r}"),
           (opt.sweeps >= 2, f"--sweeps must be >= 2 (a band needs draws), got {opt.sweeps!r}"),
           (opt.repeats >= 2, f"--repeats must be >= 2 (for a standard error), got {opt.repeats!r}")])
    return opt


def evaluation_seeds(seed, search_steps):
    """Every seed of the evaluation simulations, by name, derived from --seed. The search's
    evaluation k runs its trials from the generator seeded by the pair (seed + 3, k)."""
    return {f"metastable: {NETWORK}": seed, f"metastable: {FITTED}": seed + 1,
            f"metastable: {TRUE_MODEL}": seed + 2,
            **{search_seed_name(k): (seed + 3, k) for k in range(search_steps)},
            f"stimulation: {NETWORK}": seed + 4, f"stimulation: {FITTED}": seed + 5,
            f"stimulation: {TRUE_MODEL}": seed + 6}


def search_seed_name(k):
    return f"stimulation search, evaluation {k}"


def posterior_seeds(seed, repeats):
    """The seeds of section 1b (--estep smc): the particle Gibbs chain of the band, and pass r of the
    log p_hat estimates at every theta (the same seeds at each, so the differences are paired)."""
    return {"posterior band: particle Gibbs chain": seed + 7,
            **{f"log p_hat: pass {r}": (seed + 8, r) for r in range(repeats)}}


# ------------------------------------------------------------------ measures

def measure_latent(Z_true, Z_init, Z_runs, y_obs, dt, K, gpfa_iters, gpfa_restarts, log=lambda msg: None):
    """Claim 1: how well the fit's latent follows the true population activity of its window.

    Z_true: (B, M, T) the true activity of the window (fraction of each population per bin);
    Z_init: the best run's data-driven initial latent; Z_runs: {run: its final latent}, best run
    first, all (B, M, T) like Z_true; y_obs: (M * Nobs, K + B*T) the observed spike trains of the
    window and its K bins of history, which GPFA is fitted to (seeds 0 .. gpfa_restarts - 1).
    Returns truth and estimates ((M, B*T) Hz, smoothed LATENT_SMOOTH), scores {estimate: [(r, RMSE)
    per population]}, run_r {run: [r]}, the GPFA restarts (gpfa_fits, with their latents X and
    mapped activity), gpfa_null (chance level of its r), gpfa_note (why GPFA did not run, or "")
    and the targets beats_init and beats_gpfa (None if GPFA did not run)."""
    from .gpfa import best_linear_map, gpfa_latents, shift_null_r
    sd = LATENT_SMOOTH
    best = next(iter(Z_runs))
    truth = smooth(_flat(Z_true), sd, dt) / dt                              # (M, B*T) Hz
    M = truth.shape[0]
    estimates = {"data-driven init": smooth(_flat(Z_init), sd, dt) / dt,
                 "neuLVM": smooth(_flat(Z_runs[best]), sd, dt) / dt}
    gpfa_note, gpfa_null, gpfa_fits = "", None, []
    try:
        for seed in range(gpfa_restarts):                         # restarts differ in elephant's FA init
            X, info = gpfa_latents(y_obs, dt, em_max_iters=gpfa_iters, seed=seed)
            X = X[:, K:]                                                    # (X_DIM, B*T) the evaluated bins
            mapped = best_linear_map(X, truth)[0]                           # (M, B*T) Hz
            gpfa_fits.append({**info, "X": X, "mapped": mapped,
                              "r": [pearson_rmse(mapped[a], truth[a])[0] for a in range(M)]})
        # upper bound: per population the restart whose mapped latents correlate best with the truth
        pick = [max(range(len(gpfa_fits)), key=lambda i: np.nan_to_num(gpfa_fits[i]["r"][a], nan=-2))
                for a in range(M)]
        estimates[GPFA] = np.stack([gpfa_fits[pick[a]]["mapped"][a] for a in range(M)])
        gpfa_null = [np.quantile(shift_null_r(gpfa_fits[pick[a]]["X"], truth[a], N_SHIFTS), 0.95)
                     for a in range(M)]
    except (ImportError, RuntimeError, ValueError, np.linalg.LinAlgError) as err:
        gpfa_note = f"GPFA was not run: {err}"
        log(gpfa_note)
    scores = {k: [pearson_rmse(v[a], truth[a]) for a in range(M)] for k, v in estimates.items()}
    run_r = {name: [pearson_rmse(smooth(_flat(Z)[a], sd, dt) / dt, truth[a])[0] for a in range(M)]
             for name, Z in Z_runs.items()}
    r_neulvm = [x[0] for x in scores["neuLVM"]]
    return {"truth": truth, "estimates": estimates, "scores": scores, "run_r": run_r, "gpfa_fits": gpfa_fits,
            "gpfa_null": gpfa_null, "gpfa_note": gpfa_note,
            "beats_init": all(r_neulvm[a] > scores["data-driven init"][a][0] for a in range(M)),
            "beats_gpfa": (None if GPFA not in scores else
                           all(r_neulvm[a] > scores[GPFA][a][0] for a in range(M)))}


def measure_parameters(runs, A_mean=None):
    """Claim 2: {run: final_loss, em_steps (how many complete), train_Noinit, finished, and
    parameters: [{name, true, initial, fitted, rel_error = (fitted - true) / true}]} of each
    src.results.RunSummary in runs {name: summary}, in the order given; true and rel_error are None
    for a recording without ground truth.

    With A_mean (Hz, (M,): the true mean activity of the window) and ground truth, each run also gets
    drive: [{name, true, fitted, difference = fitted - true}] of h0_a - ft_a, the free potential at
    A_mean minus the threshold (Network.distance_to_threshold). The spikes of a few neurons pin this
    combination where they do not pin J_3 and rp apart (README, "Where the SMC fits stop")."""
    from .plots import population_names

    def rows(s):
        truth = s.theta_true if s.theta_true is not None else [None] * len(s.theta_names)
        return [{"name": n, "true": t, "initial": i, "fitted": f, "rel_error": None if t is None else (f - t) / t}
                for n, t, i, f in zip(s.theta_names, truth, s.theta_init, s.theta_final)]

    def drive(s):
        true, fitted = (net.distance_to_threshold(A_mean) for net in (s.true_network(), s.fitted_network()))
        return [{"name": n, "true": float(t), "fitted": float(f), "difference": float(f - t)}
                for n, t, f in zip(population_names(len(true)), true, fitted)]

    out = {name: {"final_loss": s.final_loss, "em_steps": len(s.em_steps), "train_Noinit": s.seed,
                  "finished": bool(s.finished), "parameters": rows(s)}
           for name, s in runs.items()}
    if A_mean is not None:
        for name, s in runs.items():
            if s.theta_true is not None:
                out[name]["drive"] = drive(s)
    return out


def measure_metastability(pieces, N, dt):
    """Claim 3: the dominance periods of each simulation against the microscopic network's.

    pieces: {NETWORK: [...], FITTED: [...], TRUE_MODEL: [...]}, each a list of independent
    (M, n_bins) spike counts per bin of dt s. Returns dwell {simulation: dwell_times(...)},
    summary {simulation: (periods, mean, median, CV) of the durations}, ks {simulation other than
    the network: (KS statistic, p) of its durations against the network's, None if either has
    none}, the fitted model's mean_fit, the network's mean_micro, their ratio and the target
    dominance_ok (None if the network had no complete period)."""
    from scipy.stats import ks_2samp
    dwell = {k: dwell_times(v, N, dt) for k, v in pieces.items()}
    ks = {}
    for k in dwell:
        if k != NETWORK:
            a, b = dwell[k]["durations"], dwell[NETWORK]["durations"]
            test = ks_2samp(a, b) if len(a) and len(b) else None
            ks[k] = None if test is None else (float(test.statistic), float(test.pvalue))
    mean_micro = dwell_summary(dwell[NETWORK]["durations"])[1]
    mean_fit = dwell_summary(dwell[FITTED]["durations"])[1]
    ratio = mean_fit / mean_micro if np.isfinite(mean_fit) and np.isfinite(mean_micro) else float("nan")
    if not np.isfinite(mean_micro):
        dominance_ok = None          # the network had no complete period: nothing to compare with
    else:
        dominance_ok = bool(np.isfinite(ratio)
                            and 1 / TARGET_DOMINANCE_FACTOR <= ratio <= TARGET_DOMINANCE_FACTOR)
    return {"dwell": dwell, "summary": {k: dwell_summary(d["durations"]) for k, d in dwell.items()}, "ks": ks,
            "mean_micro": mean_micro, "mean_fit": mean_fit, "ratio": ratio, "dominance_ok": dominance_ok}


def measure_stimulation(amplitude, search, trials, dt):
    """Claim 4: the switch fraction under the chosen stimulation, against the network's.

    amplitude, search: the amplitude search's choice and history (search_amplitude), passed on;
    trials: {NETWORK: A, FITTED: A, TRUE_MODEL: A}, A (trials, M, n_bins) in Hz, the fresh trials
    at that amplitude (empty if none was found). Returns amplitude, search, fractions {simulation:
    (switch fraction, trials counted)}, averages {simulation: (M, n_bins) Hz, the mean over the
    counted trials smoothed LATENT_SMOOTH, None if none counts}, response {model: [(r, RMSE) per
    population] of its average against the network's from PRE_WINDOW[0] on} and the target
    switch_ok (None if nothing was simulated)."""
    valid = {k: classify_trials(A, dt) for k, A in trials.items()}
    fractions = {k: switch_fraction(*v) for k, v in valid.items()}
    averages = {k: smooth(A[valid[k][0]].mean(axis=0), LATENT_SMOOTH, dt) if valid[k][0].any() else None
                for k, A in trials.items()}                                 # (M, n_bins) Hz
    skip = int(round(PRE_WINDOW[0] / dt))                                   # compare from the pre window on
    response = {}
    for k in (FITTED, TRUE_MODEL):
        if averages.get(k) is not None and averages.get(NETWORK) is not None:
            response[k] = [pearson_rmse(averages[k][a, skip:], averages[NETWORK][a, skip:])
                           for a in range(averages[k].shape[0])]
    switch_ok = None
    if FITTED in fractions:
        diff = abs(fractions[FITTED][0] - fractions[NETWORK][0])
        switch_ok = bool(diff <= TARGET_SWITCH_DIFF) if np.isfinite(diff) else False
    return {"amplitude": amplitude, "search": list(search), "fractions": fractions, "averages": averages,
            "response": response, "switch_ok": switch_ok}


def measure_posterior(draws, Z_true, dt, log_p):
    """Claim 1 for the posterior E-step: how well the posterior of the latent covers the truth.

    draws: (S, B, M, T) trajectories drawn from p(Z | y, theta) at the fit; Z_true (B, M, T); log_p
    {theta's name: [log p_hat of each filter pass]}. Every trajectory and the truth are smoothed
    LATENT_SMOOTH (in Hz); the band is the 5-95% quantiles of the smoothed draws in each bin. Returns
    coverage (per population, the fraction of bins whose true activity lies inside the band), the
    band's mean width (Hz), log_p {name: (mean, Monte Carlo standard error, passes)} and the target
    coverage_ok (E1 and E2 within TARGET_COVERAGE)."""
    draws = np.asarray(draws, float)
    smoothed = np.stack([smooth(_flat(Z), LATENT_SMOOTH, dt) / dt for Z in draws])      # (S, M, B*T) Hz
    lo, hi = np.quantile(smoothed, [0.05, 0.95], axis=0)
    truth = smooth(_flat(Z_true), LATENT_SMOOTH, dt) / dt
    coverage = ((truth >= lo) & (truth <= hi)).mean(-1)
    estimates = {k: (float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v))), len(v))
                 for k, v in log_p.items()}
    a, b = TARGET_COVERAGE
    return {"coverage": [float(c) for c in coverage], "band_width_Hz": [float(w) for w in (hi - lo).mean(-1)],
            "sweeps": len(draws), "log_p": estimates, "coverage_ok": bool(all(a <= c <= b for c in coverage[:2]))}


def pearson_rmse(estimate, truth):
    """(Pearson r, RMSE) of two equally shaped 1-d signals; r is nan if either is constant."""
    estimate, truth = np.asarray(estimate, float), np.asarray(truth, float)
    if estimate.shape != truth.shape:
        raise ValueError(f"shapes differ: {estimate.shape} vs {truth.shape}")
    rmse = float(np.sqrt(np.mean((estimate - truth) ** 2)))
    if np.std(estimate) == 0 or np.std(truth) == 0:
        return float("nan"), rmse
    return float(np.corrcoef(estimate, truth)[0, 1]), rmse


def dwell_times(pieces, N, dt, e_pops=(0, 1)):
    """Dominance periods of the E populations in independent pieces of activity.

    pieces: iterable of (M, n_bins) spike counts per bin of dt seconds. In each piece the winner is
    src.microsim.dominance's; a period counts only if both its switches lie inside the piece (the
    first and the last period of a piece are cut by its edges). Returns a dict: durations (s),
    switch_times (list per piece, s), switches, seconds, rates (Hz) of the winning and the losing E
    population and of each other population, averaged over time.
    """
    from .microsim import dominance
    N = np.asarray(N)
    durations, switch_times = [], []
    win_sum, lose_sum, other_sum, n_total = 0.0, 0.0, 0.0, 0
    others = [a for a in range(len(N)) if a not in e_pops]
    for counts in pieces:
        counts = np.asarray(counts, float)
        winner, switches = dominance(counts, N, dt, e_pops=e_pops)
        switch_times.append(switches)
        durations.extend(np.diff(switches))
        A = counts / (N[:, None] * dt)                                     # (M, n_bins) Hz
        A_e = A[list(e_pops)]                                              # (2, n_bins)
        idx = np.arange(A.shape[1])
        win_sum += A_e[winner, idx].sum()
        lose_sum += A_e[1 - winner, idx].sum()
        other_sum = other_sum + A[others].sum(axis=1)
        n_total += A.shape[1]
    durations = np.asarray(durations)
    n_switches = sum(len(s) for s in switch_times)
    return {"durations": durations, "switch_times": switch_times, "switches": n_switches,
            "seconds": n_total * dt, "rate_winner": win_sum / n_total, "rate_loser": lose_sum / n_total,
            "rate_others": np.asarray(other_sum) / n_total}


def dwell_summary(durations):
    """(count, mean, median, CV) of dominance durations; nan where undefined."""
    d = np.asarray(durations, float)
    if len(d) == 0:
        return 0, float("nan"), float("nan"), float("nan")
    cv = float(np.std(d) / np.mean(d)) if len(d) > 1 else float("nan")
    return len(d), float(np.mean(d)), float(np.median(d)), cv


def classify_trials(A, dt):
    """Which stimulation trials count and which switch. A: (trials, M, n_bins) Hz.
    Returns (valid, switched), boolean (trials,): E1 wins over PRE_WINDOW; E2 wins over POST_WINDOW."""
    def mean_over(window):
        a, b = (int(round(t / dt)) for t in window)
        return A[..., a:b].mean(axis=-1)                                   # (trials, M)
    pre, post = mean_over(PRE_WINDOW), mean_over(POST_WINDOW)
    return pre[:, 0] > pre[:, 1], post[:, 1] > post[:, 0]


def switch_fraction(valid, switched):
    n = int(valid.sum())
    return (float(switched[valid].sum() / n) if n else float("nan")), n


def _flat(Z):
    """(B, M, T) consecutive batches -> (M, B*T)."""
    Z = np.asarray(Z)
    return Z.transpose(1, 0, 2).reshape(Z.shape[1], -1)


# ------------------------------------------------------------------ simulations

def metastable_pieces(net_true, net_fit, scheme, dt, K, duration, segment, seeds, log=lambda msg: None):
    """The simulations of claim 3: `duration` s of the microscopic network (net_true), cut into
    pieces of `segment` s, and as many independent free simulations of `segment` s of the fitted
    (net_fit) and of the true-parameter mesoscopic model. seeds: evaluation_seeds(...). Returns
    pieces {simulation: list of (M, n_bins) spike counts per bin of dt} and the seeds used."""
    from .microsim import MICRO_DT, simulate
    n_pieces, T_piece = int(round(duration / segment)), int(round(segment / dt))
    used = {f"metastable: {k}": seeds[f"metastable: {k}"] for k in (NETWORK, FITTED, TRUE_MODEL)}
    rng = np.random.default_rng(used[f"metastable: {NETWORK}"])
    micro = simulate(net_true, int(round(duration / MICRO_DT)), rng, n_recorded=0)
    counts = bin_counts(micro.pop_spike_counts, int(round(dt / MICRO_DT)))    # (M, n_bins) per dt bin
    del micro
    log(f"microscopic network: {duration:g} s simulated")
    pieces = {NETWORK: [counts[:, i * T_piece:(i + 1) * T_piece] for i in range(n_pieces)]}
    for label, net in ((FITTED, net_fit), (TRUE_MODEL, net_true)):
        Z = free_batches(net, dt, K, scheme, n_pieces, T_piece, used[f"metastable: {label}"])  # (pieces,M,T)
        pieces[label] = list(Z * net.N[None, :, None])
        log(f"{label}: {n_pieces} x {segment:g} s simulated")
    return {"pieces": pieces, "seeds": used}


def stimulation_trials(net_true, net_fit, scheme, dt, K, trials, search_steps, seeds, log=lambda msg: None):
    """The simulations of claim 4: the amplitude search on the microscopic network (net_true), then
    `trials` fresh trials at the chosen amplitude in the network and in the fitted and the
    true-parameter mesoscopic model. seeds: evaluation_seeds(...). Returns amplitude (nan if none
    could be evaluated), search [(amplitude, fraction, trials counted)], trials {simulation: A
    (trials, M, n_bins) Hz} (empty without an amplitude) and the seeds used."""
    def evaluate(amp, k):
        A = micro_trials(net_true, amp, trials, seeds[search_seed_name(k)], dt)
        frac, n = switch_fraction(*classify_trials(A, dt))
        log(f"  search {k}: amplitude {amp:g}: {frac:.2f} of {n} trials switch")
        return frac, n

    amplitude, search = search_amplitude(evaluate, search_steps)
    used = {search_seed_name(k): seeds[search_seed_name(k)] for k in range(len(search))}
    A = {}
    if np.isfinite(amplitude):
        used.update({f"stimulation: {k}": seeds[f"stimulation: {k}"] for k in (NETWORK, FITTED, TRUE_MODEL)})
        A[NETWORK] = micro_trials(net_true, amplitude, trials, used[f"stimulation: {NETWORK}"], dt)
        for label, net in ((FITTED, net_fit), (TRUE_MODEL, net_true)):
            A[label] = meso_trials(net, amplitude, trials, used[f"stimulation: {label}"], dt, K, scheme)
    return {"amplitude": amplitude, "search": search, "trials": A, "seeds": used}


def posterior_samples(theta_fit, points, window, scheme, particles, sweeps, seeds, log=lambda msg: None):
    """The computations of section 1b: `sweeps` particle Gibbs draws at theta_fit (after POSTERIOR_BURN_IN),
    and log p_hat(y | theta) at each theta of points {name: theta}, one filter pass per seed "log p_hat:
    pass r" of seeds (posterior_seeds). float32 filters, as the fits run them. Returns draws (S, B, M, T)
    and log_p {name: [log p_hat per pass]}."""
    import tensorflow as tf

    from . import smc
    chain_seed = seeds["posterior band: particle Gibbs chain"]
    draws, _ = smc.gibbs_chain(theta_fit, window, particles, sweeps, chain_seed, scheme, burn_in=POSTERIOR_BURN_IN,
                               dtype=tf.float32)
    log(f"posterior band: {sweeps} particle Gibbs draws ({particles} particles)")
    passes = [v for k, v in seeds.items() if k.startswith("log p_hat")]
    log_p = {name: list(smc.log_likelihood_passes(theta, window, particles, passes, scheme, dtype=tf.float32))
             for name, theta in points.items()}
    log(f"log p_hat: {len(passes)} passes at each of {', '.join(points)}")
    return draws, log_p


def free_batches(net, dt, K, scheme, n_batches, T, seed, I_ext=None, A0=None):
    """n_batches independent free simulations of the mesoscopic model (model.md section 5) with the
    integrator `scheme`, all advanced together (the batch axis of src.fast_np.simulate). Returns Z
    (n_batches, M, T)."""
    from . import fast_np
    A0 = net.init_rates if A0 is None else np.asarray(A0, float)
    A0 = np.tile(A0, (n_batches, 1))                                       # (B, M)
    Z, _ = fast_np.simulate(net, dt, K, T, A0, np.random.default_rng(seed), I_ext, Nobs=1, scheme=scheme)
    return Z


def stimulus(M, amplitude, h):
    """(M, n_steps) step input of one trial at resolution h."""
    from .microsim import pulse_input
    n = int(round(TRIAL_LENGTH / h))
    return pulse_input(M, n, amplitude, [STIM_ONSET], STIM_LENGTH, STIM_TARGET, h)


def micro_trials(net, amplitude, trials, seed, dt):
    """Stimulation trials of the microscopic network from the E1-winning stationary start; one
    generator (seeded by `seed`) for all trials. Returns A (trials, M, n_bins) in Hz, binned at dt."""
    from .microsim import MICRO_DT, simulate
    net = dataclasses.replace(net, init_rates=np.asarray(STIM_START_RATES))
    I_ext = stimulus(net.M, amplitude, MICRO_DT)
    steps = int(round(dt / MICRO_DT))
    rng = np.random.default_rng(seed)
    A = []
    for _ in range(trials):
        result = simulate(net, I_ext.shape[1], rng, I_ext=I_ext, n_recorded=0)
        A.append(bin_counts(result.pop_spike_counts, steps) / (net.N[:, None] * dt))
    return np.stack(A)


def meso_trials(net, amplitude, trials, seed, dt, K, scheme):
    """The same trials in the mesoscopic model (input averaged over each bin, as the data is)."""
    from .microsim import MICRO_DT
    I_bins = bin_mean(stimulus(net.M, amplitude, MICRO_DT), int(round(dt / MICRO_DT)))   # (M, n_bins)
    I_ext = np.broadcast_to(I_bins, (trials,) + I_bins.shape)
    Z = free_batches(net, dt, K, scheme, trials, I_bins.shape[1], seed, I_ext, A0=STIM_START_RATES)
    return Z / dt


def search_amplitude(evaluate, steps):
    """The documented search (module docstring, item 4). evaluate(amplitude, k) -> (fraction, n_valid)
    for evaluation k. Returns (chosen amplitude, list of (amplitude, fraction, n_valid))."""
    history = []
    below, above = None, None        # largest amplitude with fraction < 0.5, smallest with >= 0.5
    amp = AMP_START
    for k in range(steps):
        frac, n = evaluate(amp, k)
        history.append((amp, frac, n))
        if np.isnan(frac):
            break
        if frac < 0.5:
            below = amp if below is None else max(below, amp)
        else:
            above = amp if above is None else min(above, amp)
        if below is not None and above is not None:
            amp = float(np.sqrt(below * above))
        elif above is None:
            amp = amp * 2
        else:
            amp = amp / 2
        if not AMP_MIN <= amp <= AMP_MAX:
            break
    valid = [h for h in history if not np.isnan(h[1])]
    if not valid:
        return float("nan"), history
    chosen = min(valid, key=lambda h: (abs(h[1] - 0.5), h[0]))[0]
    return chosen, history


def bin_counts(counts, steps):
    """Sum counts (M, n_steps) over consecutive groups of `steps` steps: (M, n_steps // steps)."""
    M, n = counts.shape
    n_bins = n // steps
    return counts[:, :n_bins * steps].reshape(M, n_bins, steps).sum(-1)


def bin_mean(x, steps):
    """Mean of x (M, n_steps) over consecutive groups of `steps` steps: (M, n_steps // steps)."""
    M, n = x.shape
    n_bins = n // steps
    return x[:, :n_bins * steps].reshape(M, n_bins, steps).mean(-1)


# ------------------------------------------------------------------ rendering

@dataclass
class Context:
    """What report.md and report.json say besides the measures: what was measured, and how."""
    folder: str                 # the result folder
    runs: dict                  # {name: src.results.RunSummary}, lowest final loss first (the best)
    options: ReportOptions
    dataset: str                # the recording the runs were fitted to
    recording_seed: int         # its seed
    argv: list                  # the command line, without the program
    cwd: str
    seeds: dict                 # {what: seed} of every simulation, the training's included
    versions: dict              # src.cli.software_versions of this call
    timings: dict               # {part of the report: s}
    map_numbers: dict = None    # --estep smc: the MAP report.json of the same folder, if there is one

    @property
    def best(self):
        return next(iter(self.runs))


def render_markdown(ctx, latent, parameters, metastability, stimulation, posterior=None):
    """The text of report.md: the measures (measure_latent, measure_parameters, measure_metastability,
    measure_stimulation, and for SMC runs measure_posterior) with the context ctx (Context) they were made
    in. Without ground truth (latent, metastability and stimulation None) the sections of NEEDS_TRUTH say
    what they need."""
    if latent is None:
        missing = [f"## {section}\n\nNot measured: it needs {what}, which only a simulated recording has "
                   "(`python -m src.microsim`); this one has no ground truth.\n" for section, what in NEEDS_TRUTH.items()]
        return "\n".join(_header(ctx) + missing[:1] + _parameters_section(parameters, ctx.best) + missing[1:]
                         + _reproducibility_section(ctx))
    from .plots import population_names
    opt, best, s = ctx.options, ctx.best, ctx.runs[ctx.best]
    o, dt = s.options, s.dt
    scores, truth, gpfa_note = latent["scores"], latent["truth"], latent["gpfa_note"]
    M = truth.shape[0]
    names = population_names(M)
    r_neulvm = [x[0] for x in scores["neuLVM"]]
    fractions = stimulation["fractions"]
    n_pieces = int(round(opt.duration / opt.segment))
    md = _header(ctx)
    w = md.append

    w("## Targets\n")
    w("| target | measured | result |\n|---|---|---|")
    w(f"| neuLVM's r beats the initialisation for every population | neuLVM "
      f"{', '.join(_fmt(x) for x in r_neulvm)} vs init "
      f"{', '.join(_fmt(x[0]) for x in scores['data-driven init'])} | {_met(latent['beats_init'])} |")
    if GPFA in scores:
        w(f"| neuLVM's r beats GPFA (upper bound) for every population | GPFA "
          f"{', '.join(_fmt(x[0]) for x in scores[GPFA])} | {_met(latent['beats_gpfa'])} |")
    else:
        w(f"| neuLVM's r beats GPFA for every population | {gpfa_note} | not evaluated |")
    w(f"| fitted model's mean dominance duration within x{TARGET_DOMINANCE_FACTOR:g} of the network's | "
      f"{_fmt(metastability['mean_fit'], 2)} s vs {_fmt(metastability['mean_micro'], 2)} s "
      f"(ratio {_fmt(metastability['ratio'], 2)}) | {_met(metastability['dominance_ok'])} |")
    if fractions:
        w(f"| switch probability under stimulation within {TARGET_SWITCH_DIFF:g} of the network's | "
          f"{_fmt(fractions[FITTED][0], 2)} vs {_fmt(fractions[NETWORK][0], 2)} "
          f"| {_met(stimulation['switch_ok'])} |")
    else:
        w("| switch probability under stimulation | no amplitude found | **not met** |")
    if posterior is not None:
        a, b = TARGET_COVERAGE
        w(f"| the posterior's 90% band covers the true activity in {a:.0%}-{b:.0%} of bins for {names[0]} and "
          f"{names[1]} | {', '.join(f'{c:.0%}' for c in posterior['coverage'])} | {_met(posterior['coverage_ok'])} |")
    w("")

    w("## 1. Latent inference\n")
    w(f"True population activity of the fitted window against each estimate, all smoothed with a "
      f"{LATENT_SMOOTH * 1e3:g} ms Gaussian; r = Pearson correlation, RMSE in Hz. GPFA ({X_DIM} latent "
      f"dimensions) is fitted to the same {M * o['Nsampled']} observed spike trains (window and its "
      f"{o['a_cutoff']:g} s history; {opt.gpfa_iters} EM iterations at most, {opt.gpfa_restarts} restarts "
      "from elephant's random initialisation) and its latents are mapped onto each population's true "
      "activity by least squares over the same bins; per population the restart with the highest r is "
      "shown. The map and the choice of restart see the truth, so **GPFA's numbers are an upper bound** "
      "for what GPFA can infer.\n")
    if gpfa_note:
        w(f"*{gpfa_note}*\n")
    w("| estimate | " + " | ".join(f"{n} r | {n} RMSE (Hz)" for n in names) + " |")
    w("|---|" + "---|---|" * M)
    for k, v in scores.items():
        w(f"| {k} | " + " | ".join(f"{_fmt(r)} | {_fmt(e, 2)}" for r, e in v) + " |")
    w("\nFor scale: the s.d. over time of the true smoothed activity is "
      + ", ".join(f"{n} {np.std(truth[a]):.2f} Hz" for a, n in enumerate(names))
      + "; a population that stays at one rate (as I does) has only finite-size noise to track.")
    if latent["gpfa_null"] is not None:
        w(f"\nChance level of GPFA's mapped r (95th percentile over {N_SHIFTS} circular shifts of the truth "
          "against the latents, map refitted each time): "
          + ", ".join(f"{n} {_fmt(x)}" for n, x in zip(names, latent["gpfa_null"])) + ".")
    if latent["gpfa_fits"]:
        w("\nGPFA restarts (training log-likelihood, EM iterations, mapped r per population): "
          + "; ".join(f"seed {g['seed']}: {g['log_likelihood']:.1f}, {g['iterations']}, "
                      + "/".join(_fmt(x) for x in g["r"]) for g in latent["gpfa_fits"])
          + ". The restart with the highest likelihood is not always the one with the highest r.")
    w(f"\n![latent inference]({FIGURES['latent']})\n")
    w("neuLVM's r for every run (its final latent):\n")
    w("| run | final loss | " + " | ".join(f"{n} r" for n in names) + " |")
    w("|---|---|" + "---|" * M)
    for name, r in latent["run_r"].items():
        w(f"| {name} | {ctx.runs[name].final_loss:.6f} | " + " | ".join(_fmt(x) for x in r) + " |")
    w("")

    if posterior is not None:
        md += _posterior_section(posterior, ctx, names, report_numbers(ctx, latent, parameters, metastability,
                                                                       stimulation, posterior))
    md += _parameters_section(parameters, best)

    w("## 3. Metastable dynamics\n")
    w(f"{opt.duration:g} s of each: the microscopic network (seed {opt.seed}, not the training data's "
      f"{ctx.recording_seed}), and free simulations (model.md section 5, dt = {dt * 1e3:g} ms) of the "
      f"fitted and of the true-parameter mesoscopic model as {n_pieces} independent pieces of "
      f"{opt.segment:g} s; the network's run is cut into pieces of the same length. Winner: "
      "src.microsim.dominance (E activity smoothed 150 ms, flickers under 0.3 s merged); a dominance period "
      "counts if it begins and ends inside a piece. KS: two-sample Kolmogorov-Smirnov statistic against the "
      "network's durations.\n")
    w("| | periods | mean (s) | median (s) | CV | switches per s | KS vs network (p) | winner / loser / "
      + " / ".join(names[2:]) + " rate (Hz) |")
    w("|---|---|---|---|---|---|---|---|")
    for k, d in metastability["dwell"].items():
        n, mean, median, cv = metastability["summary"][k]
        ks = metastability["ks"].get(k)
        ks_text = "" if k == NETWORK else ("n/a" if ks is None else f"{ks[0]:.3f} ({ks[1]:.2g})")
        rates = " / ".join(f"{x:.1f}" for x in [d["rate_winner"], d["rate_loser"], *d["rate_others"]])
        w(f"| {k} | {n} | {_fmt(mean, 2)} | {_fmt(median, 2)} | {_fmt(cv, 2)} | "
          f"{d['switches'] / d['seconds']:.3f} | {ks_text} | {rates} |")
    w(f"\n![dominance durations]({FIGURES['dominance']})\n")
    w(f"![activity traces]({FIGURES['traces']})\n")

    w("## 4. Generalisation to stimulation\n")
    w(f"The fit never sees input. Each trial: {TRIAL_LENGTH:g} s from the stationary state with E1 winning "
      f"(start rates {', '.join(f'{x:g}' for x in STIM_START_RATES)} Hz), a {STIM_LENGTH:g} s step into "
      f"{names[STIM_TARGET]} at {STIM_ONSET:g} s. A trial counts if E1 has the higher mean rate over "
      f"{PRE_WINDOW[0]:g}-{PRE_WINDOW[1]:g} s; it switches if {names[STIM_TARGET]} has the higher mean rate "
      f"over {POST_WINDOW[0]:g}-{POST_WINDOW[1]:g} s. Amplitude search on the microscopic network "
      f"({opt.trials} trials per evaluation, start {AMP_START:g}, doubling or halving until the fraction "
      "crosses 0.5, then geometric bisection; chosen: the amplitude with the fraction closest to 0.5). "
      "Amplitudes in potential units per s (2.5 mV/s; 50 shifts the steady potential by one unit).\n")
    w("| search step | amplitude | switch fraction | trials counted |\n|---|---|---|---|")
    for k, (amp, frac, n) in enumerate(stimulation["search"]):
        w(f"| {k} | {amp:g} | {_fmt(frac, 2)} | {n} |")
    w(f"\nChosen amplitude: **{_fmt(stimulation['amplitude'], 4)}**. Fresh trials (new seeds) at this "
      "amplitude:\n")
    if fractions:
        response = stimulation["response"]
        w("| | switch fraction | trials counted | " + " | ".join(
            f"{n} r / RMSE (Hz) vs network" for n in names) + " |")
        w("|---|---|---|" + "---|" * M)
        for k, (frac, n) in fractions.items():
            cells = (["(reference)"] * M if k == NETWORK else
                     [f"{_fmt(r)} / {_fmt(e, 2)}" for r, e in response[k]] if k in response else ["n/a"] * M)
            w(f"| {k} | {_fmt(frac, 2)} | {n} | " + " | ".join(cells) + " |")
        w(f"\nTrial-averaged responses (trials counted only), smoothed {LATENT_SMOOTH * 1e3:g} ms; r and "
          f"RMSE from {PRE_WINDOW[0]:g} s to the end of the trial.\n")
        w(f"![stimulation]({FIGURES['stimulation']})\n")
    else:
        w("No amplitude could be evaluated (no trial had E1 winning before the step).\n")

    md += _reproducibility_section(ctx)
    return "\n".join(md)


def _header(ctx):
    """The first lines of report.md: what was fitted to what."""
    opt, best, s = ctx.options, ctx.best, ctx.runs[ctx.best]
    o, dt = s.options, s.dt
    md = []
    w = md.append
    w(f"# neuLVM replication report: {ctx.folder}\n")
    if opt.quick:
        w("**QUICK MODE** (`--quick`): short simulations and few trials; the numbers below show that the "
          "pipeline runs, they do not measure the claims.\n")
    seed = "no ground truth" if ctx.recording_seed is None else f"seed {ctx.recording_seed}"
    w(f"Best run **{best}** (lowest final loss {s.final_loss:.6f} of {len(ctx.runs)} complete runs: "
      f"{', '.join(ctx.runs)}), fitted to {o['trial_length']:g} s ending at {o['end_timepoint']:g} s of "
      f"`{ctx.dataset}` ({seed}), {o['Nsampled']} observed neurons per population, "
      f"dt = {dt * 1e3:g} ms, scheme {s.scheme}, age cutoff {s.a_cutoff:g} s (free simulations use the "
      f"same). Report made in {ctx.timings['total']:.0f} s.\n")
    return md


def _posterior_section(posterior, ctx, names, numbers):
    """Section 1b of report.md (--estep smc): the band's coverage and log p_hat (measure_posterior), and
    the numbers of this report (report_numbers) next to the MAP report's."""
    opt, md = ctx.options, []
    w = md.append
    w("## 1b. Posterior of the latent (posterior E-step)\n")
    w(f"At the best run's theta: {posterior['sweeps']} draws of particle Gibbs with ancestor sampling "
      f"({opt.particles} particles, {POSTERIOR_BURN_IN} sweeps discarded first), each smoothed "
      f"{LATENT_SMOOTH * 1e3:g} ms like the truth; the band is their 5-95% quantiles per bin. neuLVM's row "
      "in section 1 is the posterior mean that the fit saved.\n")
    w("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    w("| bins covered by the 90% band | " + " | ".join(f"{c:.1%}" for c in posterior["coverage"]) + " |")
    w("| mean width of the band (Hz) | " + " | ".join(f"{x:.2f}" for x in posterior["band_width_Hz"]) + " |")
    w(f"\nlog p_hat(y | theta) of the observed spikes, mean and Monte Carlo standard error over "
      f"{opt.repeats} filter passes ({opt.particles} particles, float32, the same seeds at every theta):\n")
    w("| theta | log p_hat(y \\| theta) |\n|---|---|")
    for name, (mean, se, n) in posterior["log_p"].items():
        w(f"| {name} | {mean:.1f} +- {se:.1f} |")
    w("")
    if ctx.map_numbers is not None:
        rows = [("MAP (report.json of this folder)", side_by_side(ctx.map_numbers)),
                ("SMC (this report)", side_by_side(numbers))]
        w("The best MAP run (from the MAP report of the same folder, its own simulations and seeds) next "
          "to the best SMC run:\n")
        w("| E-step | best run | J errors | r of the latent | mean dominance (s) | switch fraction under "
          "stimulation |\n|---|---|---|---|---|---|")
        for label, row in rows:
            w(f"| {label} | {row['run']} | {' / '.join(_pct(e) for e in row['J_errors']) or 'n/a'} | "
              f"{' / '.join(_fmt(x) for x in row['r']) or 'n/a'} | {_fmt(row['mean_dominance'], 2)} | "
              f"{_fmt(row['switch_fraction'], 2)} |")
        w("")
    else:
        w("No MAP report in this folder (`python -m src.report --estep map` writes it) to compare with.\n")
    return md


def side_by_side(numbers):
    """The headline numbers of one report.json (report_numbers): best run, J errors, r of the latent,
    the fitted model's mean dominance duration and its switch fraction under stimulation (None or empty
    where not measured, or not in a report.json written by an earlier version)."""
    best = numbers.get("best_run")
    params = (((numbers.get("parameters") or {}).get(best) or {}).get("parameters")) or []
    durations = ((numbers.get("dominance") or {}).get(FITTED) or {}).get("durations_s") or []
    fraction = ((numbers.get("stimulation") or {}).get("switch_fraction") or {}).get(FITTED)
    return {"run": best, "J_errors": [q.get("rel_error") for q in params if str(q.get("name")).startswith("J_")],
            "r": ((numbers.get("latent") or {}).get("neuLVM") or {}).get("r") or [],
            "mean_dominance": float(np.mean(durations)) if durations else None,
            "switch_fraction": None if fraction is None else fraction[0]}


def _parameters_section(parameters, best):
    """Section 2 of report.md: the parameters of every run (measure_parameters)."""
    md = []
    w = md.append
    w("## 2. Parameters\n")
    w("Relative error = (fit - true) / true. Units: amem 1/s, J potential units x s, rp and ft potential "
      "units (2.5 mV).\n")
    for name, p in parameters.items():
        w(f"**{name}**{' (best)' if name == best else ''}: final loss {p['final_loss']:.6f}, "
          f"{p['em_steps']} EM steps, train_Noinit {p['train_Noinit']}"
          f"{'' if p['finished'] else ', did not finish (last complete EM step)'}\n")
        w("| parameter | true | initial | fitted | rel. error |\n|---|---|---|---|---|")
        for q in p["parameters"]:
            true, error = ("n/a", "n/a") if q["true"] is None else (f"{q['true']:.4g}", f"{q['rel_error']:+.3f}")
            w(f"| {q['name']} | {true} | {q['initial']:.4g} | {q['fitted']:.4g} | {error} |")
        w("")
    with_drive = {name: p["drive"] for name, p in parameters.items() if "drive" in p}
    if with_drive:
        names = [q["name"] for q in next(iter(with_drive.values()))]
        w("**Distance to threshold at the window's mean activity**, h0 - ft with h0 = rp + (W^T A)/amem at "
          "the true mean activity A of the window (potential units; the escape rate there is exp(h0 - ft)). "
          "A few neurons' spikes pin it where they do not pin J and rp apart: in the winner-take-all "
          "network, log p(y | theta) of a 10 s window is flat along J_3 with rp moved to keep it (README, "
          "\"Where the SMC fits stop\").\n")
        w("| run | " + " | ".join(f"{n}: fitted - true" for n in names) + " |\n|---|" + "---|" * len(names))
        truth = next(iter(with_drive.values()))
        w("| truth (h0 - ft) | " + " | ".join(f"{q['true']:.3f}" for q in truth) + " |")
        for name, rows in with_drive.items():
            w(f"| {name}{' (best)' if name == best else ''} | "
              + " | ".join(f"{q['difference']:+.3f}" for q in rows) + " |")
        w("")
    return md


def _reproducibility_section(ctx):
    """Section 5 of report.md: command, options, seeds, versions and timings."""
    s = ctx.runs[ctx.best]
    md = []
    w = md.append
    w("## 5. Reproducibility\n")
    w(f"Command: `{PROG} {shlex.join(ctx.argv)}` (run from `{ctx.cwd}`)\n")
    w("Options: " + ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(ctx.options).items()) + "\n")
    w("| seed of | value |\n|---|---|")
    for k, v in ctx.seeds.items():
        w(f"| {k} | {v} |")
    w("\n| software | version (report) | version (training of the best run) |\n|---|---|---|")
    for k, v in ctx.versions.items():
        w(f"| {k} | {v} | {s.versions.get(k, '')} |")
    w("\n| part | seconds |\n|---|---|")
    for k, v in ctx.timings.items():
        w(f"| {k} | {v:.1f} |")
    w("")
    return md


def report_numbers(ctx, latent, parameters, metastability, stimulation, posterior=None):
    """The content of report.json: the numbers of report.md, machine-readable (NaN as null). Without
    ground truth (latent None) the parameters, and what was not measured (NEEDS_TRUTH)."""
    s = ctx.runs[ctx.best]
    common = {"best_run": ctx.best, "runs": list(ctx.runs), "options": dataclasses.asdict(ctx.options),
              "model": {"scheme": s.scheme, "dt": s.dt, "a_cutoff": s.a_cutoff},
              "command": [*PROG.split(), *ctx.argv]}
    if latent is None:
        return _no_nan({**common, "not_measured_without_ground_truth": NEEDS_TRUTH, "parameters": parameters,
                        "seeds": ctx.seeds, "versions": ctx.versions, "seconds": ctx.timings})
    scores, gpfa_fits = latent["scores"], latent["gpfa_fits"]
    dwell, ks = metastability["dwell"], metastability["ks"]
    return _no_nan({
        **common,
        "targets": {"neulvm_beats_init": latent["beats_init"], "neulvm_beats_gpfa": latent["beats_gpfa"],
                    "mean_dominance_within_factor": metastability["dominance_ok"],
                    "switch_fraction_within": stimulation["switch_ok"],
                    **({} if posterior is None else {"posterior_band_coverage": posterior["coverage_ok"]})},
        "latent": {k: {"r": [x[0] for x in v], "rmse_Hz": [x[1] for x in v]} for k, v in scores.items()},
        "latent_r_per_run": latent["run_r"], "gpfa_chance_r95": latent["gpfa_null"],
        "gpfa_note": latent["gpfa_note"],
        "gpfa_restarts": [{k: v for k, v in g.items() if k not in ("X", "mapped")} for g in gpfa_fits],
        "parameters": parameters,
        "dominance": {k: {"durations_s": d["durations"], "switches": d["switches"], "seconds": d["seconds"],
                          "rates_winner_loser_others_Hz": [d["rate_winner"], d["rate_loser"],
                                                           *d["rate_others"]],
                          "ks_vs_network": ks.get(k)}
                      for k, d in dwell.items()},
        "stimulation": {"amplitude": stimulation["amplitude"], "search": stimulation["search"],
                        "switch_fraction": stimulation["fractions"],
                        "response_r_rmse_vs_network": stimulation["response"]},
        **({} if posterior is None else {"posterior": {
            "coverage_90": posterior["coverage"], "band_width_Hz": posterior["band_width_Hz"],
            "sweeps": posterior["sweeps"], "log_p_hat_mean_se_passes": posterior["log_p"],
            "coverage_within_target": posterior["coverage_ok"]}}),
        "seeds": ctx.seeds, "versions": ctx.versions, "seconds": ctx.timings})


def _pct(x):
    return "n/a" if x is None else f"{100 * x:+.0f}%"


def _fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _met(ok):
    return "not evaluated" if ok is None else ("**met**" if ok else "**not met**")


def _no_nan(obj):
    """obj for JSON: arrays as lists, NaN and infinities as null (undefined, e.g. no dominance period)."""
    if isinstance(obj, dict):
        return {str(k): _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ------------------------------------------------------------------ main

def _resolve(path, base):
    """A path from a summary: as given, else relative to the repository (training runs from there)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(base, path)
    return candidate if os.path.exists(candidate) else path


def load_latents(folder, name, summary):
    """(initial latent, latent of the last complete EM step) of one run, each (B, M, T)."""
    from .results import load_arrays
    run_folder = os.path.join(folder, name)
    last = summary.last_em_step if summary.last_em_step is not None else summary.em_steps[-1]["em_step"]
    return (load_arrays(os.path.join(run_folder, "init_param"))["Z"],
            load_arrays(os.path.join(run_folder, f"E{last}_est_param"))["Z"])


def observed_trains(rec, summary, n_bins):
    """(M * Nobs, K + n_bins) the observed spike trains of the fitted window (its last n_bins bins)
    and of its history of K = a_cutoff / dt bins: what neuLVM saw, for GPFA."""
    from .helper import bin_recording
    o, dt = summary.options, summary.dt
    K = int(round(summary.a_cutoff / dt))
    _, y_all, _ = bin_recording(rec, dt)
    end = int(round(o["end_timepoint"] / dt))
    return y_all[:, :o["Nsampled"], end - n_bins - K:end].reshape(rec.network.M * o["Nsampled"], -1)


def make_report(opt, argv):
    """Measure, plot and write the report of the runs in opt.result_dir; returns 0."""
    from . import plots
    from .dataset import DatasetError, load_recording
    from .helper import run_window
    from .microsim import use_one_tf_thread
    from .runs import SMC_REPORT_DIR, default_estep, find_runs, ranked
    start = time.time()
    timings = {}
    log = lambda msg: print(f"[report {time.time() - start:6.1f} s] {msg}", flush=True)   # noqa: E731
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    # ---------------------------------------------------------------- runs and data
    folder = opt.result_dir
    if not os.path.isabs(folder) and not os.path.isdir(folder) and os.path.isdir(os.path.join(repo, folder)):
        folder = os.path.join(repo, folder)      # the default, asked from outside the repository
    every_run = find_runs(folder)
    opt = dataclasses.replace(opt, estep=opt.estep or default_estep(every_run))
    runs = ranked(every_run, opt.estep, folder)                              # the best first
    if not runs:
        raise NoResult(f"no run fitted with --estep {opt.estep} in {folder!r}: run bash 3pop_neuLVM.sh first"
                       + (" -- --estep map --train_folderbase map" if opt.estep == "map" and every_run else ""))
    out = folder if opt.estep == "map" else os.path.join(folder, SMC_REPORT_DIR)    # where the report goes
    os.makedirs(out, exist_ok=True)
    best = next(iter(runs))
    s = runs[best]
    o = s.options
    dataset = opt.dataset or _resolve(s.dataset.get("path", o["dataset"]), repo)
    try:
        rec = load_recording(dataset)
    except DatasetError as err:
        raise UsageError(f"cannot read the training data ({err}); pass --dataset") from None
    if opt.seed == rec.seed:
        raise UsageError(f"--seed {opt.seed} is the seed of the training data {dataset}; choose another")
    net_true = rec.network
    if (s.theta_true is None) == rec.has_truth or (rec.has_truth and not np.allclose(net_true.theta, s.theta_true)):
        raise UsageError(f"{dataset} is not the recording {best} was fitted to (its true theta differs)")
    net_fit = s.fitted_network()
    scheme, dt = s.scheme, s.dt
    K = int(round(s.a_cutoff / dt))
    names = plots.population_names(net_true.M)
    window = run_window(rec, s)
    seeds = evaluation_seeds(opt.seed, opt.search_steps)
    use_one_tf_thread()
    log(f"best run {best} of {len(runs)} (final loss {s.final_loss:.6f}); data {dataset}")

    def finish(measures, seeds_used):
        """Write report.json and report.md of measures (latent, parameters, metastability, stimulation,
        and posterior or None)."""
        timings["total"] = time.time() - start
        versions = software_versions("matplotlib", "tensorflow", "elephant", "neo", "quantities", "sklearn")
        map_report = os.path.join(folder, "report.json")
        map_numbers = load_json(map_report) if opt.estep == "smc" and os.path.exists(map_report) else None
        ctx = Context(folder=folder, runs=runs, options=opt, dataset=dataset, recording_seed=rec.seed,
                      argv=list(argv), cwd=os.getcwd(), seeds=seeds_used, versions=versions, timings=timings,
                      map_numbers=map_numbers)
        save_json(os.path.join(out, "report.json"), report_numbers(ctx, *measures))
        path = os.path.join(out, "report.md")
        save_text(path, render_markdown(ctx, *measures))
        log(f"wrote {path}")
        return 0

    if not rec.has_truth:          # an imported recording (src.dataset): only what needs no truth
        log(f"{dataset} has no ground truth: {'; '.join(NEEDS_TRUTH)} need a simulated recording, not measured")
        return finish((None, measure_parameters(runs), None, None, None),
                      {"initial parameters of each run (train_Noinit)": {n: r.seed for n, r in runs.items()}})

    # ---------------------------------------------------------------- 1. latent inference, 2. parameters
    t0 = time.time()
    latents = {name: load_latents(folder, name, runs[name]) for name in runs}      # (Z_init, Z) per run
    latent = measure_latent(window.Z_true, latents[best][0], {name: Z for name, (_, Z) in latents.items()},
                            observed_trains(rec, s, window.B * window.T), dt, K, opt.gpfa_iters,
                            opt.gpfa_restarts, log)
    save_figure(os.path.join(out, FIGURES["latent"]), plots.plot_latent, latent["truth"],
                latent["estimates"], dt, names, o["end_timepoint"] - o["trial_length"], LATENT_SMOOTH)
    parameters = measure_parameters(runs, window.A_true_mean)
    timings["latent inference"] = time.time() - t0
    log("latent inference done")
    posterior, posterior_seed_list = None, {}
    if opt.estep == "smc":                        # 1b. the posterior of the latent at the fit
        t0 = time.time()
        points = {f"SMC fit ({best})": np.asarray(s.theta_final)}
        map_runs = {n: r for n, r in every_run.items() if r.estep == "map"
                    and r.scheme == scheme and r.dt == dt}
        if map_runs:
            map_best = min(map_runs, key=lambda n: map_runs[n].final_loss)
            points[f"MAP fit ({map_best})"] = np.asarray(map_runs[map_best].theta_final)
        points["truth"] = net_true.theta
        posterior_seed_list = posterior_seeds(opt.seed, opt.repeats)
        draws, log_p = posterior_samples(points[f"SMC fit ({best})"], points, window, scheme, opt.particles,
                                         opt.sweeps, posterior_seed_list, log)
        posterior = measure_posterior(draws, window.Z_true, dt, log_p)
        timings["posterior of the latent"] = time.time() - t0
        log("posterior of the latent done")

    # ---------------------------------------------------------------- 3. metastable dynamics
    t0 = time.time()
    simulated = metastable_pieces(net_true, net_fit, scheme, dt, K, opt.duration, opt.segment, seeds, log)
    metastability = measure_metastability(simulated["pieces"], net_true.N, dt)
    save_figure(os.path.join(out, FIGURES["dominance"]), plots.plot_dominance, metastability["dwell"])
    save_figure(os.path.join(out, FIGURES["traces"]), plots.plot_traces, simulated["pieces"], net_true.N,
                dt, names)
    seeds_used = {"training data (microscopic network)": rec.seed,
                  "initial parameters of each run (train_Noinit)": {n: r.seed for n, r in runs.items()},
                  **posterior_seed_list, **simulated["seeds"]}
    timings["metastable dynamics"] = time.time() - t0
    log("metastable dynamics done")

    # ---------------------------------------------------------------- 4. stimulation
    t0 = time.time()
    simulated = stimulation_trials(net_true, net_fit, scheme, dt, K, opt.trials, opt.search_steps, seeds, log)
    stimulation = measure_stimulation(simulated["amplitude"], simulated["search"], simulated["trials"], dt)
    seeds_used.update(simulated["seeds"])
    if simulated["trials"]:
        save_figure(os.path.join(out, FIGURES["stimulation"]), plots.plot_stimulation,
                    stimulation["averages"], stimulation["search"], stimulation["amplitude"], dt, names,
                    STIM_ONSET, STIM_LENGTH, STIM_TARGET, LATENT_SMOOTH)
    timings["stimulation"] = time.time() - t0
    log("stimulation done")

    # ---------------------------------------------------------------- write
    return finish((latent, parameters, metastability, stimulation, posterior), seeds_used)


def main(argv=None):
    return run(PROG, lambda args: make_report(parse_options(args), args), argv)


if __name__ == "__main__":
    sys.exit(main())
