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
  5. Versions, seeds, the command and the time each part took.
Nothing is cached: every number comes from the simulations of this call.
"""
import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np

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
FIGURE_DPI = 90
N_SHIFTS = 200               # circular shifts for GPFA's chance level


@dataclass
class ReportOptions:
    result_dir: str = DEFAULT_RESULT_DIR  # folder holding the runs train0..train4
    dataset: str = ""           # recording the runs were fitted to (default: the path in the best run's summary)
    seed: int = 2022            # seed of the evaluation simulations (the others are derived from it)
    duration: float = 1000.0    # s of each metastable-dynamics simulation
    segment: float = 100.0      # s per independent piece of those simulations
    trials: int = 20            # stimulation trials per evaluation
    search_steps: int = 6       # amplitude evaluations of the search
    gpfa_iters: int = 500       # GPFA EM iterations at most
    gpfa_restarts: int = 3      # GPFA fits from different initialisations (seeds 0, 1, ...)
    quick: bool = False         # small settings for a quick look and the tests
    debug: bool = False         # show tracebacks


QUICK = {"duration": 60.0, "segment": 20.0, "trials": 8, "search_steps": 2, "gpfa_iters": 50, "gpfa_restarts": 1}
HELP = {
    "result_dir": "folder with the runs (train0, train1, ...)",
    "dataset": "recording the runs were fitted to (default: from the best run's summary.json)",
    "seed": "seed of the evaluation simulations; must differ from the training data's seed",
    "duration": "s of each metastable-dynamics simulation", "segment": "s per independent piece",
    "trials": "stimulation trials per evaluation", "search_steps": "amplitude evaluations of the search",
    "gpfa_iters": "GPFA EM iterations at most",
    "gpfa_restarts": "GPFA fits from different initialisations; the best per population is reported",
    "quick": f"small settings ({', '.join(f'{k}={v:g}' for k, v in QUICK.items())}); numbers not meaningful",
    "debug": "show tracebacks on errors",
}


class ReportError(ValueError):
    """Bad options or inputs: one line, exit status 2."""


class NoResult(ReportError):
    """No trained run: exit status 1."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_options(argv=None):
    parser = _OneLineParser(prog="python -m src.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(ReportOptions):
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action="store_true", help=HELP[f.name])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(f"--{f.name}", type=kind, default=None,
                                help=f"{HELP[f.name]} [default: {f.default!r}; --quick: {QUICK.get(f.name, f.default)!r}]")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    opt = ReportOptions(**{**(QUICK if given.get("quick") else {}), **given})
    n_pieces = opt.duration / opt.segment if opt.segment > 0 else 0
    for ok, message in [
            (opt.duration > 0, f"--duration must be > 0 s, got {opt.duration!r}"),
            (opt.segment > 0 and abs(n_pieces - round(n_pieces)) < 1e-9,
             f"--segment must divide --duration ({opt.duration:g} s), got {opt.segment!r}"),
            (opt.trials >= 1, f"--trials must be >= 1, got {opt.trials!r}"),
            (opt.search_steps >= 1, f"--search_steps must be >= 1, got {opt.search_steps!r}"),
            (opt.gpfa_iters >= 1, f"--gpfa_iters must be >= 1, got {opt.gpfa_iters!r}"),
            (opt.gpfa_restarts >= 1, f"--gpfa_restarts must be >= 1, got {opt.gpfa_restarts!r}")]:
        if not ok:
            raise ReportError(message)
    return opt


# ------------------------------------------------------------------ measures

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


def bin_counts(counts, steps):
    """Sum counts (M, n_steps) over consecutive groups of `steps` steps: (M, n_steps // steps)."""
    M, n = counts.shape
    n_bins = n // steps
    return counts[:, :n_bins * steps].reshape(M, n_bins, steps).sum(-1)


def bin_mean(x, steps):
    M, n = x.shape
    n_bins = n // steps
    return x[:, :n_bins * steps].reshape(M, n_bins, steps).mean(-1)


# ------------------------------------------------------------------ simulations

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
    from .microsim import H, simulate
    net = dataclasses.replace(net, init_rates=np.asarray(STIM_START_RATES))
    I_ext = stimulus(net.M, amplitude, H)
    steps = int(round(dt / H))
    rng = np.random.default_rng(seed)
    A = []
    for _ in range(trials):
        result = simulate(net, I_ext.shape[1], rng, I_ext=I_ext, n_recorded=0)
        A.append(bin_counts(result.pop_spike_counts, steps) / (net.N[:, None] * dt))
    return np.stack(A)


def meso_trials(net, amplitude, trials, seed, dt, K, scheme):
    """The same trials in the mesoscopic model (input averaged over each bin, as the data is)."""
    from .microsim import H
    I_bins = bin_mean(stimulus(net.M, amplitude, H), int(round(dt / H)))   # (M, n_bins)
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


# ------------------------------------------------------------------ loading

def _resolve(path, base):
    """A path from a summary: as given, else relative to the repository (training runs from there)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(base, path)
    return candidate if os.path.exists(candidate) else path


def load_run(folder, name, summary):
    """Initial and final (last complete EM step) latent and theta of one run."""
    from .results import load_arrays
    run = os.path.join(folder, name)
    last = summary.get("last_em_step", summary["em_steps"][-1]["em_step"])
    init = load_arrays(os.path.join(run, "init_param"))
    final = load_arrays(os.path.join(run, f"E{last}_est_param"))
    return {"Z_init": init["Z"], "Z": final["Z"], "theta": np.asarray(summary["theta_final"]),
            "last_em_step": last}


def _flat(Z):
    """(B, M, T) consecutive batches -> (M, B*T)."""
    Z = np.asarray(Z)
    return Z.transpose(1, 0, 2).reshape(Z.shape[1], -1)


def _fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _met(ok):
    return "not evaluated" if ok is None else ("**met**" if ok else "**not met**")


# ------------------------------------------------------------------ report

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opt = parse_options(argv)
        return make_report(opt, argv)
    except NoResult as err:
        print(f"python -m src.report: error: {err}", file=sys.stderr)
        return 1
    except (ReportError, ValueError, OSError) as err:    # ValueError: unreadable result files, bad data
        if "--debug" in argv:
            raise
        print(f"python -m src.report: error: {err}", file=sys.stderr)
        return 2


def make_report(opt, argv):
    start = time.time()
    timings = {}
    log = lambda msg: print(f"[report {time.time() - start:6.1f} s] {msg}", flush=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from . import __version__
    from .dataset import DatasetError, load_recording
    from .helper import bin_recording, make_window, smooth
    from .microsim import H, simulate, use_one_tf_thread
    from .plots import population_names
    from .runs import find_runs, fit_discretisation

    # ---------------------------------------------------------------- runs and data
    folder = opt.result_dir
    if not os.path.isabs(folder) and not os.path.isdir(folder) and os.path.isdir(os.path.join(repo, folder)):
        folder = os.path.join(repo, folder)      # the default, asked from outside the repository
    runs = find_runs(folder)
    if not runs:
        raise NoResult(f"no trained run in {folder!r}: run bash 3pop_neuLVM.sh first")
    order = sorted(runs, key=lambda n: runs[n]["final_loss"])
    best = order[0]
    s = runs[best]
    o = s["options"]
    dataset = opt.dataset or _resolve(s.get("dataset", {}).get("path", o["dataset"]), repo)
    try:
        rec = load_recording(dataset)
    except DatasetError as err:
        raise ReportError(f"cannot read the training data ({err}); pass --dataset") from None
    if opt.seed == rec.seed:
        raise ReportError(f"--seed {opt.seed} is the seed of the training data {dataset}; choose another")
    net_true = rec.network
    if not np.allclose(net_true.theta, s["theta_true"]):
        raise ReportError(f"{dataset} is not the recording {best} was fitted to (its true theta differs)")
    net_fit = net_true.with_theta(s["theta_final"])
    scheme, dt, a_cutoff = fit_discretisation(s, os.path.join(folder, best, "summary.json"))
    M, names = net_true.M, population_names(net_true.M)
    K = int(round(a_cutoff / dt))
    window = make_window(rec, dt, o["trial_length"], o["t_perbatch"], o["end_timepoint"], o["a_cutoff"],
                         o["Nsampled"], with_input=bool(o["with_input"]))
    use_one_tf_thread()
    log(f"best run {best} of {len(runs)} (final loss {s['final_loss']:.6f}); data {dataset}")

    # ---------------------------------------------------------------- 1. latent inference
    t0 = time.time()
    sd = LATENT_SMOOTH
    truth = smooth(_flat(window.Z_true), sd, dt) / dt                     # (M, T) Hz
    loaded = {name: load_run(folder, name, runs[name]) for name in order}
    estimates = {"data-driven init": smooth(_flat(loaded[best]["Z_init"]), sd, dt) / dt,
                 "neuLVM": smooth(_flat(loaded[best]["Z"]), sd, dt) / dt}
    # GPFA sees the same observed spike trains as neuLVM: the window and its history
    _, y_all, _ = bin_recording(rec, dt)
    end = int(round(o["end_timepoint"] / dt))
    n_win = truth.shape[1]
    y_gpfa = y_all[:, :o["Nsampled"], end - n_win - K:end].reshape(M * o["Nsampled"], -1)  # (M*Nobs, K+T)
    gpfa_note, gpfa_null, gpfa_fits = "", None, []
    try:
        from .gpfa import best_linear_map, gpfa_latents, shift_null_r
        for seed in range(opt.gpfa_restarts):                            # restarts differ in elephant's FA init
            X, info = gpfa_latents(y_gpfa, dt, em_max_iters=opt.gpfa_iters, seed=seed)
            X = X[:, K:]                                                  # (3, T) the evaluated bins
            mapped = best_linear_map(X, truth)[0]                         # (M, T) Hz
            gpfa_fits.append({**info, "X": X, "mapped": mapped,
                              "r": [pearson_rmse(mapped[a], truth[a])[0] for a in range(M)]})
        # upper bound: per population the restart whose mapped latents correlate best with the truth
        pick = [max(range(len(gpfa_fits)), key=lambda i: np.nan_to_num(gpfa_fits[i]["r"][a], nan=-2))
                for a in range(M)]
        estimates["GPFA, best linear map"] = np.stack([gpfa_fits[pick[a]]["mapped"][a] for a in range(M)])
        gpfa_null = [np.quantile(shift_null_r(gpfa_fits[pick[a]]["X"], truth[a], N_SHIFTS), 0.95)
                     for a in range(M)]
    except (ImportError, RuntimeError, ValueError, np.linalg.LinAlgError) as err:
        gpfa_note = f"GPFA was not run: {err}"
        log(gpfa_note)
    scores = {k: [pearson_rmse(v[a], truth[a]) for a in range(M)] for k, v in estimates.items()}
    run_r = {name: [pearson_rmse(smooth(_flat(loaded[name]["Z"])[a], sd, dt) / dt, truth[a])[0]
                    for a in range(M)] for name in order}
    r_neulvm = [x[0] for x in scores["neuLVM"]]
    beats_init = all(r_neulvm[a] > scores["data-driven init"][a][0] for a in range(M))
    beats_gpfa = (None if "GPFA, best linear map" not in scores else
                  all(r_neulvm[a] > scores["GPFA, best linear map"][a][0] for a in range(M)))
    fig_latent = _plot_latent(folder, truth, estimates, dt, names, o["end_timepoint"] - o["trial_length"])
    timings["latent inference"] = time.time() - t0
    log("latent inference done")

    # ---------------------------------------------------------------- 3. metastable dynamics
    t0 = time.time()
    n_pieces = int(round(opt.duration / opt.segment))
    T_piece = int(round(opt.segment / dt))
    steps_per_bin = int(round(dt / H))
    seeds = {"training data (microscopic network)": rec.seed,
             "initial parameters of each run (train_Noinit)": {n: runs[n]["seed"] for n in order},
             "metastable: microscopic network": opt.seed,
             "metastable: fitted model": opt.seed + 1, "metastable: true-parameter model": opt.seed + 2}
    micro = simulate(net_true, int(round(opt.duration / H)), np.random.default_rng(opt.seed), n_recorded=0)
    micro_counts = bin_counts(micro.pop_spike_counts, steps_per_bin)        # (M, n_bins) per dt bin
    del micro
    log(f"microscopic network: {opt.duration:g} s simulated")
    pieces = {"microscopic network": [micro_counts[:, i * T_piece:(i + 1) * T_piece] for i in range(n_pieces)]}
    for label, net, seed in (("fitted model", net_fit, opt.seed + 1), ("true-parameter model", net_true, opt.seed + 2)):
        Z = free_batches(net, dt, K, scheme, n_pieces, T_piece, seed)               # (pieces, M, T)
        pieces[label] = list(Z * net.N[None, :, None])
        log(f"{label}: {n_pieces} x {opt.segment:g} s simulated")
    dwell = {k: dwell_times(v, net_true.N, dt) for k, v in pieces.items()}
    from scipy.stats import ks_2samp
    ks = {}
    for k in ("fitted model", "true-parameter model"):
        a, b = dwell[k]["durations"], dwell["microscopic network"]["durations"]
        ks[k] = ks_2samp(a, b) if len(a) and len(b) else None
    mean_micro = dwell_summary(dwell["microscopic network"]["durations"])[1]
    mean_fit = dwell_summary(dwell["fitted model"]["durations"])[1]
    ratio = mean_fit / mean_micro if np.isfinite(mean_fit) and np.isfinite(mean_micro) else float("nan")
    if not np.isfinite(mean_micro):
        dominance_ok = None          # the network had no complete period: nothing to compare with
    else:
        dominance_ok = bool(np.isfinite(ratio) and 1 / TARGET_DOMINANCE_FACTOR <= ratio <= TARGET_DOMINANCE_FACTOR)
    fig_dwell = _plot_dwell(folder, dwell)
    fig_traces = _plot_traces(folder, pieces, net_true.N, dt, names)
    timings["metastable dynamics"] = time.time() - t0
    log("metastable dynamics done")

    # ---------------------------------------------------------------- 4. stimulation
    t0 = time.time()

    def evaluate(amp, k):
        A = micro_trials(net_true, amp, opt.trials, (opt.seed + 3, k), dt)
        frac, n = switch_fraction(*classify_trials(A, dt))
        log(f"  search {k}: amplitude {amp:g}: {frac:.2f} of {n} trials switch")
        return frac, n

    amplitude, search = search_amplitude(evaluate, opt.search_steps)
    seeds.update({"stimulation search, evaluation k": f"({opt.seed + 3}, k)",
                  "stimulation: microscopic network": opt.seed + 4, "stimulation: fitted model": opt.seed + 5,
                  "stimulation: true-parameter model": opt.seed + 6})
    stim = {}
    if np.isfinite(amplitude):
        stim["microscopic network"] = micro_trials(net_true, amplitude, opt.trials, opt.seed + 4, dt)
        stim["fitted model"] = meso_trials(net_fit, amplitude, opt.trials, opt.seed + 5, dt, K, scheme)
        stim["true-parameter model"] = meso_trials(net_true, amplitude, opt.trials, opt.seed + 6, dt, K, scheme)
    stim_valid = {k: classify_trials(A, dt) for k, A in stim.items()}
    fractions = {k: switch_fraction(*v) for k, v in stim_valid.items()}
    averages = {k: smooth(A[stim_valid[k][0]].mean(axis=0), sd, dt) if stim_valid[k][0].any() else None
                for k, A in stim.items()}                                # (M, n_bins) Hz
    skip = int(round(PRE_WINDOW[0] / dt))                                  # compare from the pre window on
    response = {}
    for k in ("fitted model", "true-parameter model"):
        if averages.get(k) is not None and averages.get("microscopic network") is not None:
            response[k] = [pearson_rmse(averages[k][a, skip:], averages["microscopic network"][a, skip:])
                           for a in range(M)]
    switch_ok = None
    if "fitted model" in fractions:
        diff = abs(fractions["fitted model"][0] - fractions["microscopic network"][0])
        switch_ok = bool(diff <= TARGET_SWITCH_DIFF) if np.isfinite(diff) else False
    fig_stim = _plot_stim(folder, averages, search, amplitude, dt, names) if stim else None
    timings["stimulation"] = time.time() - t0
    log("stimulation done")

    # ---------------------------------------------------------------- write
    timings["total"] = time.time() - start
    versions = _versions(__version__)
    md = []
    w = md.append
    w(f"# neuLVM replication report: {folder}\n")
    if opt.quick:
        w("**QUICK MODE** (`--quick`): short simulations and few trials; the numbers below show that the "
          "pipeline runs, they do not measure the claims.\n")
    w(f"Best run **{best}** (lowest final loss {s['final_loss']:.6f} of {len(runs)} complete runs: "
      f"{', '.join(order)}), fitted to {o['trial_length']:g} s ending at {o['end_timepoint']:g} s of "
      f"`{dataset}` (seed {rec.seed}), {o['Nsampled']} observed neurons per population, dt = {dt * 1e3:g} ms, "
      f"scheme {scheme}, age cutoff {a_cutoff:g} s (free simulations use the same). "
      f"Report made in {timings['total']:.0f} s.\n")
    w("## Targets\n")
    w("| target | measured | result |\n|---|---|---|")
    w(f"| neuLVM's r beats the initialisation for every population | neuLVM "
      f"{', '.join(_fmt(x) for x in r_neulvm)} vs init "
      f"{', '.join(_fmt(x[0]) for x in scores['data-driven init'])} | {_met(beats_init)} |")
    if "GPFA, best linear map" in scores:
        w(f"| neuLVM's r beats GPFA (upper bound) for every population | GPFA "
          f"{', '.join(_fmt(x[0]) for x in scores['GPFA, best linear map'])} | {_met(beats_gpfa)} |")
    else:
        w(f"| neuLVM's r beats GPFA for every population | {gpfa_note} | not evaluated |")
    w(f"| fitted model's mean dominance duration within x{TARGET_DOMINANCE_FACTOR:g} of the network's | "
      f"{_fmt(mean_fit, 2)} s vs {_fmt(mean_micro, 2)} s (ratio {_fmt(ratio, 2)}) | {_met(dominance_ok)} |")
    if fractions:
        w(f"| switch probability under stimulation within {TARGET_SWITCH_DIFF:g} of the network's | "
          f"{_fmt(fractions['fitted model'][0], 2)} vs {_fmt(fractions['microscopic network'][0], 2)} "
          f"| {_met(switch_ok)} |")
    else:
        w("| switch probability under stimulation | no amplitude found | **not met** |")
    w("")

    w("## 1. Latent inference\n")
    w(f"True population activity of the fitted window against each estimate, all smoothed with a "
      f"{sd * 1e3:g} ms Gaussian; r = Pearson correlation, RMSE in Hz. GPFA ({X_DIM_TEXT}) is fitted to the "
      f"same {M * o['Nsampled']} observed spike trains (window and its {o['a_cutoff']:g} s history; "
      f"{opt.gpfa_iters} EM iterations at most, {opt.gpfa_restarts} restarts from elephant's random "
      "initialisation) and its latents are mapped onto each population's true activity by least squares "
      "over the same bins; per population the restart with the highest r is shown. The map and the choice "
      "of restart see the truth, so **GPFA's numbers are an upper bound** for what GPFA can infer.\n")
    if gpfa_note:
        w(f"*{gpfa_note}*\n")
    w("| estimate | " + " | ".join(f"{n} r | {n} RMSE (Hz)" for n in names) + " |")
    w("|---|" + "---|---|" * M)
    for k, v in scores.items():
        w(f"| {k} | " + " | ".join(f"{_fmt(r)} | {_fmt(e, 2)}" for r, e in v) + " |")
    w("\nFor scale: the s.d. over time of the true smoothed activity is "
      + ", ".join(f"{n} {np.std(truth[a]):.2f} Hz" for a, n in enumerate(names))
      + "; a population that stays at one rate (as I does) has only finite-size noise to track.")
    if gpfa_null is not None:
        w(f"\nChance level of GPFA's mapped r (95th percentile over {N_SHIFTS} circular shifts of the truth "
          "against the latents, map refitted each time): "
          + ", ".join(f"{n} {_fmt(x)}" for n, x in zip(names, gpfa_null)) + ".")
    if gpfa_fits:
        w("\nGPFA restarts (training log-likelihood, EM iterations, mapped r per population): "
          + "; ".join(f"seed {g['seed']}: {g['log_likelihood']:.1f}, {g['iterations']}, "
                      + "/".join(_fmt(x) for x in g["r"]) for g in gpfa_fits)
          + ". The restart with the highest likelihood is not always the one with the highest r.")
    w(f"\n![latent inference]({os.path.basename(fig_latent)})\n")
    w("neuLVM's r for every run (its final latent):\n")
    w("| run | final loss | " + " | ".join(f"{n} r" for n in names) + " |")
    w("|---|---|" + "---|" * M)
    for name in order:
        w(f"| {name} | {runs[name]['final_loss']:.6f} | " + " | ".join(_fmt(x) for x in run_r[name]) + " |")
    w("")

    w("## 2. Parameters\n")
    w("Relative error = (fit - true) / true. Units: amem 1/s, J potential units x s, rp and ft potential "
      "units (2.5 mV).\n")
    for name in order:
        r = runs[name]
        w(f"**{name}**{' (best)' if name == best else ''}: final loss {r['final_loss']:.6f}, "
          f"{len(r['em_steps'])} EM steps, train_Noinit {r['seed']}"
          f"{'' if r.get('finished') else ', did not finish (last complete EM step)'}\n")
        w("| parameter | true | initial | fitted | rel. error |\n|---|---|---|---|---|")
        for n, t, i, f in zip(r["theta_names"], r["theta_true"], r["theta_init"], r["theta_final"]):
            w(f"| {n} | {t:.4g} | {i:.4g} | {f:.4g} | {(f - t) / t:+.3f} |")
        w("")

    w("## 3. Metastable dynamics\n")
    w(f"{opt.duration:g} s of each: the microscopic network (seed {opt.seed}, not the training data's "
      f"{rec.seed}), and free simulations (model.md section 5, dt = {dt * 1e3:g} ms) of the fitted and of the "
      f"true-parameter mesoscopic model as {n_pieces} independent pieces of {opt.segment:g} s; the network's "
      f"run is cut into pieces of the same length. Winner: src.microsim.dominance (E activity smoothed "
      f"150 ms, flickers under 0.3 s merged); a dominance period counts if it begins and ends inside a "
      f"piece. KS: two-sample Kolmogorov-Smirnov statistic against the network's durations.\n")
    w("| | periods | mean (s) | median (s) | CV | switches per s | KS vs network (p) | winner / loser / "
      + " / ".join(names[2:]) + " rate (Hz) |")
    w("|---|---|---|---|---|---|---|---|")
    for k, d in dwell.items():
        n, mean, median, cv = dwell_summary(d["durations"])
        ks_text = "" if k == "microscopic network" else (
            "n/a" if ks[k] is None else f"{ks[k].statistic:.3f} ({ks[k].pvalue:.2g})")
        rates = " / ".join(f"{x:.1f}" for x in [d["rate_winner"], d["rate_loser"], *d["rate_others"]])
        w(f"| {k} | {n} | {_fmt(mean, 2)} | {_fmt(median, 2)} | {_fmt(cv, 2)} | "
          f"{d['switches'] / d['seconds']:.3f} | {ks_text} | {rates} |")
    w(f"\n![dominance durations]({os.path.basename(fig_dwell)})\n")
    w(f"![activity traces]({os.path.basename(fig_traces)})\n")

    w("## 4. Generalisation to stimulation\n")
    w(f"The fit never sees input. Each trial: {TRIAL_LENGTH:g} s from the stationary state with E1 winning "
      f"(start rates {', '.join(f'{x:g}' for x in STIM_START_RATES)} Hz), a {STIM_LENGTH:g} s step into "
      f"{names[STIM_TARGET]} at {STIM_ONSET:g} s. A trial counts if E1 has the higher mean rate over "
      f"{PRE_WINDOW[0]:g}-{PRE_WINDOW[1]:g} s; it switches if {names[STIM_TARGET]} has the higher mean rate over "
      f"{POST_WINDOW[0]:g}-{POST_WINDOW[1]:g} s. Amplitude search on the microscopic network ({opt.trials} "
      f"trials per evaluation, start {AMP_START:g}, doubling or halving until the fraction crosses 0.5, then "
      "geometric bisection; chosen: the amplitude with the fraction closest to 0.5). Amplitudes in potential "
      "units per s (2.5 mV/s; 50 shifts the steady potential by one unit).\n")
    w("| search step | amplitude | switch fraction | trials counted |\n|---|---|---|---|")
    for k, (amp, frac, n) in enumerate(search):
        w(f"| {k} | {amp:g} | {_fmt(frac, 2)} | {n} |")
    w(f"\nChosen amplitude: **{_fmt(amplitude, 4)}**. Fresh trials (new seeds) at this amplitude:\n")
    if fractions:
        w("| | switch fraction | trials counted | " + " | ".join(
            f"{n} r / RMSE (Hz) vs network" for n in names) + " |")
        w("|---|---|---|" + "---|" * M)
        for k, (frac, n) in fractions.items():
            cells = (["(reference)"] * M if k == "microscopic network" else
                     [f"{_fmt(r)} / {_fmt(e, 2)}" for r, e in response[k]] if k in response else ["n/a"] * M)
            w(f"| {k} | {_fmt(frac, 2)} | {n} | " + " | ".join(cells) + " |")
        w(f"\nTrial-averaged responses (trials counted only), smoothed {sd * 1e3:g} ms; r and RMSE from "
          f"{PRE_WINDOW[0]:g} s to the end of the trial.\n")
        w(f"![stimulation]({os.path.basename(fig_stim)})\n")
    else:
        w("No amplitude could be evaluated (no trial had E1 winning before the step).\n")

    w("## 5. Reproducibility\n")
    w(f"Command: `python -m src.report {shlex.join(argv)}` (run from `{os.getcwd()}`)\n")
    w("Options: " + ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(opt).items()) + "\n")
    w("| seed of | value |\n|---|---|")
    for k, v in seeds.items():
        w(f"| {k} | {v} |")
    w("\n| software | version (report) | version (training of the best run) |\n|---|---|---|")
    for k, v in versions.items():
        w(f"| {k} | {v} | {s.get('versions', {}).get(k, '')} |")
    w("\n| part | seconds |\n|---|---|")
    for k, v in timings.items():
        w(f"| {k} | {v:.1f} |")
    w("")
    from .results import save_json
    save_json(os.path.join(folder, "report.json"), _no_nan({
        "best_run": best, "runs": order, "options": dataclasses.asdict(opt),
        "model": {"scheme": scheme, "dt": dt, "a_cutoff": a_cutoff}, "command": ["python", "-m", "src.report", *argv],
        "targets": {"neulvm_beats_init": beats_init, "neulvm_beats_gpfa": beats_gpfa,
                    "mean_dominance_within_factor": dominance_ok, "switch_fraction_within": switch_ok},
        "latent": {k: {"r": [x[0] for x in v], "rmse_Hz": [x[1] for x in v]} for k, v in scores.items()},
        "latent_r_per_run": run_r, "gpfa_chance_r95": gpfa_null, "gpfa_note": gpfa_note,
        "gpfa_restarts": [{k: v for k, v in g.items() if k not in ("X", "mapped")} for g in gpfa_fits],
        "dominance": {k: {"durations_s": d["durations"], "switches": d["switches"], "seconds": d["seconds"],
                          "rates_winner_loser_others_Hz": [d["rate_winner"], d["rate_loser"], *d["rate_others"]],
                          "ks_vs_network": None if ks.get(k) is None else [ks[k].statistic, ks[k].pvalue]}
                      for k, d in dwell.items()},
        "stimulation": {"amplitude": amplitude, "search": search, "switch_fraction": fractions,
                        "response_r_rmse_vs_network": response},
        "seeds": seeds, "versions": versions, "seconds": timings}))
    path = os.path.join(folder, "report.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(md))
    os.replace(tmp, path)
    log(f"wrote {path}")
    return 0


X_DIM_TEXT = "3 latent dimensions"


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


def _versions(neulvm_version):
    import matplotlib
    import scipy
    versions = {"neulvm": neulvm_version, "python": platform.python_version(), "numpy": np.__version__,
                "scipy": scipy.__version__, "matplotlib": matplotlib.__version__}
    for module in ("tensorflow", "elephant", "neo", "quantities", "sklearn"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    return versions


# ------------------------------------------------------------------ figures

def _plot_latent(folder, truth, estimates, dt, names, t_start):
    plt = _pyplot()
    M, T = truth.shape
    time_s = t_start + (np.arange(T) + 0.5) * dt
    fig, axes = plt.subplots(M, 1, figsize=(11, 2.4 * M), sharex=True)
    styles = {"data-driven init": {"color": "C1", "ls": "--"}, "neuLVM": {"color": "C0"},
              "GPFA, best linear map": {"color": "C2", "ls": ":"}}
    for a in range(M):
        ax = axes[a]
        ax.plot(time_s, truth[a], color="k", lw=1.5, label="true")
        for k, v in estimates.items():
            ax.plot(time_s, v[a], lw=1.1, label=k, **styles.get(k, {}))
        ax.set_ylabel(f"{names[a]} (Hz)")
    axes[0].legend(loc="upper right", fontsize=8, ncol=4, frameon=False)
    axes[-1].set_xlabel(f"time in the recording (s); activity smoothed {LATENT_SMOOTH * 1e3:g} ms")
    axes[0].set_title("population activity: truth vs inferred (best run)")
    return _save(fig, folder, "report_latent.png")


def _plot_dwell(folder, dwell):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    all_d = np.concatenate([d["durations"] for d in dwell.values()] + [[0.3, 10.0]])
    bins = np.geomspace(0.25, max(all_d.max() * 1.1, 1.0), 25)
    for i, (k, d) in enumerate(dwell.items()):
        dur = np.sort(d["durations"])
        label = f"{k} (n={len(dur)})"
        if len(dur):
            axes[0].hist(dur, bins=bins, histtype="step", lw=1.5, color=f"C{i}", label=label,
                         weights=np.full(len(dur), 1 / len(dur)))
            axes[1].step(dur, 1 - np.arange(len(dur)) / len(dur), where="post", color=f"C{i}", label=label)
        else:
            axes[1].plot([], [], color=f"C{i}", label=f"{k}: no complete period")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("dominance duration (s)")
    axes[0].set_ylabel("fraction of periods (log-spaced bins)")
    axes[1].set_ylabel("fraction of periods longer")
    axes[1].legend(fontsize=8, frameon=False)
    axes[0].set_title("distribution of dominance durations")
    axes[1].set_title("survival function")
    return _save(fig, folder, "report_dominance.png")


def _plot_traces(folder, pieces, N, dt, names, seconds=100.0):
    plt = _pyplot()
    from .helper import smooth
    fig, axes = plt.subplots(len(pieces), 1, figsize=(11, 2.2 * len(pieces)), sharex=True, squeeze=False)
    for ax, (k, p) in zip(axes[:, 0], pieces.items()):
        counts = np.concatenate(p, axis=1)[:, :int(round(seconds / dt))]
        A = smooth(counts / (np.asarray(N)[:, None] * dt), 0.15, dt)
        t = (np.arange(A.shape[1]) + 0.5) * dt
        for a in range(min(2, A.shape[0])):
            ax.plot(t, A[a], lw=0.8, color=f"C{a}", label=names[a])
        for b in range(1, len(p)):
            if b * p[0].shape[1] * dt < t[-1]:
                ax.axvline(b * p[0].shape[1] * dt, color="0.7", lw=0.8, ls="--")
        ax.set_ylabel("Hz")
        ax.set_title(k, fontsize=9, loc="left")
    axes[0, 0].legend(loc="upper right", fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("time (s); E activity smoothed 150 ms; dashed: start of a new independent piece")
    return _save(fig, folder, "report_traces.png")


def _plot_stim(folder, averages, search, amplitude, dt, names):
    plt = _pyplot()
    M = next(v for v in averages.values() if v is not None).shape[0]
    fig, axes = plt.subplots(M + 1, 1, figsize=(10, 2.2 * (M + 1)))
    for a in range(1, M):
        axes[a].sharex(axes[0])
    for i, (k, A) in enumerate(averages.items()):
        if A is None:
            continue
        t = (np.arange(A.shape[1]) + 0.5) * dt
        for a in range(M):
            axes[a].plot(t, A[a], color=f"C{i}", lw=1.2, label=k)
    for a in range(M):
        axes[a].axvspan(STIM_ONSET, STIM_ONSET + STIM_LENGTH, color="0.9")
        axes[a].set_ylabel(f"{names[a]} (Hz)")
    axes[M - 1].set_xlabel(f"time in trial (s); grey: step into {names[STIM_TARGET]}; smoothed "
                           f"{LATENT_SMOOTH * 1e3:g} ms")
    axes[0].legend(fontsize=8, frameon=False, loc="upper right")
    axes[0].set_title(f"trial-averaged response to a step of amplitude {amplitude:.3g} into {names[STIM_TARGET]}")
    amps = [h[0] for h in search]
    fracs = [h[1] for h in search]
    order = np.argsort(amps)
    axes[M].plot(np.asarray(amps)[order], np.asarray(fracs)[order], "o-", color="0.3")
    for k, (a, f) in enumerate(zip(amps, fracs)):
        axes[M].annotate(str(k), (a, f), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[M].axhline(0.5, color="0.7", ls="--")
    axes[M].set_xscale("log")
    axes[M].set_ylim(-0.05, 1.05)
    axes[M].set_xlabel("amplitude (potential units / s), search order annotated")
    axes[M].set_ylabel("switch fraction\n(network)")
    fig.tight_layout()
    return _save(fig, folder, "report_stimulation.png")


def _pyplot():
    """pyplot on the file-only Agg backend (as src/plots.py)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, folder, name):
    plt = _pyplot()
    path = os.path.join(folder, name)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
